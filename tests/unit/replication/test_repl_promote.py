"""Failover promotion of a DR replica (real journal and mirror files): refused while the image
is inconsistent, redoes the journal first, survives a crash at every step, and fences off the
old primary at admission; demote makes it a DR replica again that refuses the old epoch."""

import json
import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr import promotion
from appliance.replication.dr.promotion import demote, promote
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.handshake import Hello, Refused, VolumeBinding, VolumeSpec, admit
from appliance.replication.wire import WireRecord
from tests.support.replica_crash import crash

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000bb")
BLOCKS = 256
SIZE = BLOCKS * 512
OLD = Hello("site-a", VOL, SIZE, 512, 1, 1)
SPEC = VolumeSpec(VOL, SIZE, 512)


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(SPEC, replica_paths(tmp_path, VOL), journal_size=1 << 20,
                         mirror_sync_interval_s=3600)


def rec(seq: int, lba: int, fill: int, nblocks: int = 2) -> WireRecord:
    return WireRecord(seq, seq * 10, 1, lba, nblocks, bytes([fill]) * (nblocks * 512))


RECORDS = [rec(1, 0, 1), rec(2, 8, 2, 4), rec(3, 1, 3), rec(4, 100, 4, 8)]


def expected_image(records) -> bytes:
    img = bytearray(SIZE)
    for r in records:
        img[r.lba * 512 : r.lba * 512 + len(r.data)] = r.data
    return bytes(img)


def durable_unapplied_replica(c: ReplicaConfig) -> None:
    """A replica whose records are durable in its journal but never reached the mirror (the
    receiver died between commit and apply), like a DR at the moment of a disaster."""
    r = Replica(c)
    r.bind(OLD, 0)
    r.commit(RECORDS)
    crash(r)


def admit_old_primary(c: ReplicaConfig, hello: Hello = OLD):
    r = Replica(c)
    try:
        return admit(hello, cert_names=None, spec=r.current_spec(), binding=r.binding(),
                     receiver_identity="dr-site", heartbeat_s=1.0)
    finally:
        r.close()


def test_promote_redoes_the_journal_then_marks_promoted_and_sets_the_journal_aside(tmp_path):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)
    assert c.paths.mirror.read_bytes() == bytes(SIZE), "the test needs unapplied records"
    p = promote(c)
    assert (p.at_seq, p.generation, p.former_primary, p.mirror) == (4, 2, "site-a", c.paths.mirror)
    assert c.paths.mirror.read_bytes() == expected_image(RECORDS)
    assert not c.paths.journal.exists()
    assert c.paths.journal.with_name("journal.promoted-4").exists()
    st = json.loads(c.paths.state.read_text())
    assert st["promoted"]["at_seq"] == 4 and st["generation"] == 2
    # Promoting again (an admin retrying) changes nothing and says the same.
    assert promote(c) == p


def test_promote_is_refused_on_an_inconsistent_replica_and_changes_nothing(tmp_path):
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(OLD, 0)
    r.commit(RECORDS[:2])
    r.apply_pending()
    r.begin_resync()                       # a resync the disaster interrupted
    r.write_region(4096, b"\x07" * 4096)
    r.close()
    state_before = c.paths.state.read_text()
    mirror_before = c.paths.mirror.read_bytes()
    with pytest.raises(ReplicaError, match="inconsistent.*rollback"):
        promote(c)
    assert c.paths.state.read_text() == state_before
    assert c.paths.mirror.read_bytes() == mirror_before
    assert c.paths.journal.exists()


def test_promote_is_refused_on_a_replica_that_was_never_paired(tmp_path):
    with pytest.raises(ReplicaError, match="never paired"):
        promote(cfg(tmp_path))


def test_a_rolled_back_replica_is_promoted_at_its_restored_image(tmp_path):
    from appliance.replication.dr.replica_offline import roll_back_to_consistent

    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(OLD, 0)
    r.commit(RECORDS[:1])
    r.apply_pending()
    r.begin_resync()
    r.write_region(4096, b"\x07" * 512)
    r.close()
    assert roll_back_to_consistent(c) == 1
    p = promote(c)
    assert p.at_seq == 1
    assert c.paths.mirror.read_bytes() == expected_image(RECORDS[:1])


def _lose_unsynced_mirror_writes(c: ReplicaConfig) -> None:
    """What a power cut may leave of mirror writes that were never synced: garbage."""
    with open(c.paths.mirror, "r+b") as f:
        for r in RECORDS:
            f.seek(r.lba * 512)
            f.write(b"\xee" * len(r.data))


def test_a_power_cut_before_the_redone_mirror_is_synced_is_redone_by_the_next_promote(
        tmp_path, monkeypatch):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)

    def power_cut(self):
        raise OSError("power cut before the mirror sync")
    with monkeypatch.context() as m:
        m.setattr(Replica, "sync_mirror", power_cut)
        with pytest.raises(OSError, match="power cut"):
            promote(c)
    _lose_unsynced_mirror_writes(c)
    assert json.loads(c.paths.state.read_text()).get("promoted") is None
    p = promote(c)
    assert p.at_seq == 4
    assert c.paths.mirror.read_bytes() == expected_image(RECORDS)


def test_a_crash_while_the_promotion_is_being_recorded_leaves_a_replica_to_promote_again(
        tmp_path, monkeypatch):
    """The state file is replaced atomically: the crash leaves the old one (not promoted)."""
    c = cfg(tmp_path)
    durable_unapplied_replica(c)

    def torn_replace(src, dst):
        raise OSError("power cut before the rename")
    with monkeypatch.context() as m:
        m.setattr("appliance.replication.dr.replica_files.os.replace", torn_replace)
        with pytest.raises(OSError, match="power cut"):
            promote(c)
    assert json.loads(c.paths.state.read_text()).get("promoted") is None
    assert admit_old_primary(c).last_seq == 4          # still an ordinary replica
    p = promote(c)
    assert p.at_seq == 4 and p.generation == 2        # raised once, not twice
    assert c.paths.mirror.read_bytes() == expected_image(RECORDS)


def test_a_crash_after_the_promotion_was_recorded_never_redoes_onto_the_served_mirror(
        tmp_path, monkeypatch):
    """Promoted but the journal not yet set aside: the new primary may already write the
    mirror. Neither a receiver start nor the retried promote may redo the journal over it."""
    c = cfg(tmp_path)
    durable_unapplied_replica(c)

    def power_cut(cfg, at_seq):
        raise OSError("power cut before the journal was set aside")
    with monkeypatch.context() as m:
        m.setattr(promotion, "_set_journal_aside", power_cut)
        with pytest.raises(OSError, match="power cut"):
            promote(c)
    assert c.paths.journal.exists()
    with open(c.paths.mirror, "r+b") as f:           # the new primary writes over record 1
        f.write(b"\x55" * 1024)
    served = c.paths.mirror.read_bytes()
    with pytest.raises(Refused) as refused:
        admit_old_primary(c)                          # a receiver started now: fenced, no redo
    assert refused.value.code == "promoted"
    assert c.paths.mirror.read_bytes() == served
    p = promote(c)
    assert (p.at_seq, p.generation) == (4, 2)
    assert not c.paths.journal.exists()
    assert c.paths.mirror.read_bytes() == served


def test_a_promoted_replica_refuses_its_old_primary_and_every_other(tmp_path):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)
    promote(c)
    image = c.paths.mirror.read_bytes()
    for hello in (OLD, Hello("site-a", VOL, SIZE, 512, 7, 5), Hello("site-c", VOL, SIZE, 512, 2, 1)):
        with pytest.raises(Refused) as refused:
            admit_old_primary(c, hello)
        assert refused.value.code == "promoted", refused.value
        assert "promoted on receiver 'dr-site' at seq 4 (generation 2)" in refused.value.reason
    r = Replica(c)
    assert r.status()["state"] == "promoted"
    with pytest.raises(ReplicaError, match="promoted"):   # even past admission: never bound
        r.bind(OLD, 4)
    r.close()
    assert c.paths.mirror.read_bytes() == image


def test_admission_refuses_a_promoted_volume_before_any_binding_rule():
    binding = VolumeBinding("site-a", 2, None, 0, promoted_at_seq=9)
    with pytest.raises(Refused) as refused:
        admit(OLD, cert_names={"site-a"}, spec=SPEC, binding=binding,
              receiver_identity="dr-site", heartbeat_s=1.0)
    assert refused.value.code == "promoted" and "docs/failover.md" in refused.value.reason


def test_demote_makes_a_dr_replica_that_refuses_the_old_epoch_and_admits_the_new(tmp_path):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)
    promote(c)
    with pytest.raises(ReplicaError, match="not promoted"):
        demote(cfg(tmp_path / "other"))
    assert demote(c) == 2
    with pytest.raises(Refused) as refused:
        admit_old_primary(c)                           # generation 1: the fenced epoch
    assert refused.value.code == "stale-generation"
    welcome = admit_old_primary(c, Hello("site-a", VOL, SIZE, 512, 2, 1))
    assert welcome.last_seq == 0 and not welcome.full_copy      # a first contact
    r = Replica(c)
    r.bind(Hello("site-a", VOL, SIZE, 512, 2, 1), 0)
    assert r.read_mirror(0, SIZE) == expected_image(RECORDS)     # the image stays as it was
    r.close()
