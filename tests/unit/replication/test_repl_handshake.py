"""Admission rules: each refusal has its code and a message naming what is wrong."""

import uuid

import pytest

from appliance.replication.handshake import (
    HandshakeError,
    Hello,
    Refused,
    VolumeBinding,
    VolumeSpec,
    Welcome,
    admit,
)

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-000000000001")
SPEC = VolumeSpec(VOL, size_bytes=1 << 20, block_size=512)
NEW = VolumeBinding(primary=None, generation=0, last_seq=None, applied_seq=0)


def hello(**kw) -> Hello:
    base = dict(identity="site-a", volume_uuid=VOL, size_bytes=1 << 20, block_size=512,
                generation=1, first_seq=1, compression=("zstd",))
    base.update(kw)
    return Hello(**base)


def run(h: Hello, *, cert=frozenset({"site-a"}), spec=SPEC, binding=NEW) -> Welcome:
    return admit(h, cert_names=set(cert) if cert is not None else None, spec=spec,
                 binding=binding, receiver_identity="site-b", heartbeat_s=1.0)


def test_first_contact_is_welcomed_from_zero():
    w = run(hello())
    assert (w.last_seq, w.applied_seq, w.compression, w.identity) == (0, 0, "zstd", "site-b")


def test_resume_reports_what_the_receiver_holds():
    b = VolumeBinding(primary="site-a", generation=1, last_seq=90, applied_seq=80)
    w = run(hello(first_seq=50, compression=()), binding=b)
    assert (w.last_seq, w.applied_seq, w.compression) == (90, 80, None)


def test_first_contact_after_the_journal_reclaimed_history_asks_for_a_full_copy():
    w = run(hello(first_seq=3))
    assert (w.last_seq, w.applied_seq, w.full_copy, w.inconsistent) == (2, 2, True, True)
    assert Welcome.from_dict(w.to_dict()) == w
    # ... and keeps asking at every contact until the copy has begun.
    pending = VolumeBinding("site-a", 1, 2, 2, inconsistent=True, full_copy=True)
    assert run(hello(first_seq=3), binding=pending).full_copy
    begun = VolumeBinding("site-a", 1, 2, 2, inconsistent=True)
    w = run(hello(first_seq=3), binding=begun)
    assert w.inconsistent and not w.full_copy
    w = run(hello(first_seq=1))
    assert (w.last_seq, w.full_copy, w.inconsistent) == (0, False, False)


def test_the_bound_primary_may_resize_the_volume_online():
    bound = VolumeBinding("site-a", 1, 5, 5)
    assert run(hello(size_bytes=2 << 20), binding=bound).last_seq == 5
    assert run(hello(size_bytes=1 << 19), binding=bound).last_seq == 5
    resyncing = VolumeBinding("site-a", 1, 5, 5, inconsistent=True)
    assert run(hello(size_bytes=2 << 20), binding=resyncing).inconsistent
    with pytest.raises(Refused, match="cannot shrink until the resync ends") as exc:
        run(hello(size_bytes=1 << 19), binding=resyncing)
    assert exc.value.code == "geometry"
    for size in (2 << 20, 1 << 19):          # unbound: the configuration decides
        with pytest.raises(Refused, match="fix size_bytes"):
            run(hello(size_bytes=size))


@pytest.mark.parametrize("h, kw, code, words", [
    (hello(protocol=2), {}, "version", "protocol 2"),
    (hello(identity="mallory"), {}, "identity", "certificate names"),
    (hello(volume_uuid=uuid.uuid4()), {}, "unknown-volume", "not configured"),
    (hello(size_bytes=2 << 20), {}, "geometry", "2097152 bytes"),
    (hello(block_size=4096), {}, "geometry", "4096-byte"),
    (hello(), {"binding": VolumeBinding("site-c", 1, 5, 5)}, "bound-to-other", "site-c"),
    (hello(generation=1), {"binding": VolumeBinding("site-a", 2, 5, 5)}, "stale-generation",
     "older"),
    (hello(first_seq=7), {"binding": VolumeBinding("site-a", 1, 5, 5)}, "resync-needed",
     "gone"),
    (hello(identity="site-c"), {"cert": {"site-c"},
                                "spec": VolumeSpec(VOL, 1 << 20, 512, frozenset({"site-a"}))},
     "identity", "not allowed"),
])
def test_refusals(h, kw, code, words):
    with pytest.raises(Refused) as exc:
        run(h, **kw)
    assert exc.value.code == code
    assert words in exc.value.reason


def test_hello_dict_round_trip_and_validation():
    h = hello()
    assert Hello.from_dict(h.to_dict()) == h
    d = h.to_dict()
    del d["generation"]
    with pytest.raises(HandshakeError, match="generation"):
        Hello.from_dict(d)
    with pytest.raises(HandshakeError, match="wrong type"):
        Hello.from_dict({**h.to_dict(), "size_bytes": "big"})
    with pytest.raises(HandshakeError, match="uuid"):
        Hello.from_dict({**h.to_dict(), "volume_uuid": "nope"})
    with pytest.raises(HandshakeError, match="impossible"):
        Hello.from_dict({**h.to_dict(), "first_seq": 0})
    w = run(h)
    assert Welcome.from_dict(w.to_dict()) == w
    with pytest.raises(HandshakeError, match="compression"):
        Welcome.from_dict({**w.to_dict(), "compression": "lz4"})


BASE = {"lineage": str(uuid.UUID(int=9)), "seq": 200, "generation": 2, "promoted_ns": 1}


def test_a_journal_that_starts_from_a_promoted_image_needs_a_replica_that_proves_it():
    # Records from seq 1 alone would miss the promoted image: without proof, a full copy.
    w = admit(hello(base=BASE), cert_names={"site-a"}, spec=SPEC, binding=NEW,
              receiver_identity="site-b", heartbeat_s=1.0)
    assert (w.full_copy, w.inconsistent, w.failback_extents) == (True, True, None)
    # The old primary proved it holds the base plus two extents: it gets only those.
    w = admit(hello(base=BASE), cert_names={"site-a"}, spec=SPEC, binding=NEW,
              receiver_identity="site-b", heartbeat_s=1.0, base_extents=[(8, 2), (64, 16)])
    assert (w.full_copy, w.inconsistent, w.failback_extents) == (False, True, [(8, 2), (64, 16)])
    assert Welcome.from_dict(w.to_dict()) == w
    # ... repeated at every contact until RESYNC_BEGIN (the replica keeps them).
    pending = VolumeBinding("site-a", 1, 0, 0, inconsistent=True, failback_extents=[(8, 2)])
    assert run(hello(base=BASE), binding=pending).failback_extents == [(8, 2)]
    # A primary without a base is today's journal replay; a later contact ignores the base.
    assert run(hello()).failback_extents is None and not run(hello()).full_copy
    bound = VolumeBinding("site-a", 1, 5, 5)
    w = run(hello(base=BASE, first_seq=3), binding=bound)
    assert (w.full_copy, w.failback_extents) == (False, None)


def test_hello_carries_the_base_and_a_welcome_refuses_malformed_extents():
    h = hello(base=BASE, changed={"head_seq": 20, "dirty_bytes": 0})
    assert Hello.from_dict(h.to_dict()) == h
    with pytest.raises(HandshakeError, match="failback_extents"):
        Welcome.from_dict({**run(hello()).to_dict(), "failback_extents": [[1, -2]]})
