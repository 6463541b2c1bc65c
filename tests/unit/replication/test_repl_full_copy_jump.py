"""The one jump in sequence a receiver accepts: the RESYNC_BEGIN of a full copy names the last
seq the copy supersedes (``superseded_to_seq``) and the replica's journal continues after it.
Refused everywhere else (a consistent replica, a resync resumed after the copy began, going
back); crash-safe on both sides of the journal swap (real journal and mirror files)."""

import asyncio
import uuid

import pytest

from appliance.replication import wire
from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr.apply import SeqOrderer
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.session import Session, SessionError
from appliance.replication.handshake import (
    Hello,
    JumpRefused,
    VolumeSpec,
    Welcome,
    admit,
    check_supersede,
)
from appliance.replication.wire import WireRecord
from tests.support.replica_crash import crash

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000bb")
BLOCKS = 256
HELLO = Hello("site-a", VOL, BLOCKS * 512, 512, 1, 41)


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, BLOCKS * 512, 512), replica_paths(tmp_path, VOL),
                         journal_size=1 << 20, mirror_sync_interval_s=3600)


def rec(seq: int, lba: int, fill: int) -> WireRecord:
    return WireRecord(seq, seq * 10, 1, lba, 2, bytes([fill]) * 1024)


# --- the rule (pure) ---------------------------------------------------------------------


def test_the_rule_takes_a_jump_only_while_a_full_copy_is_pending_and_never_back():
    check_supersede(full_copy_pending=True, durable_seq=40, to_seq=1500)
    check_supersede(full_copy_pending=True, durable_seq=40, to_seq=40)    # repeated: no-op
    with pytest.raises(JumpRefused, match="only accepted at the start of a full copy"):
        check_supersede(full_copy_pending=False, durable_seq=40, to_seq=1500)
    with pytest.raises(JumpRefused, match="never goes back"):
        check_supersede(full_copy_pending=True, durable_seq=40, to_seq=39)
    for bad in (True, "1500", 1500.0, None):
        with pytest.raises(JumpRefused):
            check_supersede(full_copy_pending=True, durable_seq=40, to_seq=bad)


def test_a_receiver_says_it_takes_the_jump_and_an_older_one_is_understood_not_to():
    w = admit(HELLO, cert_names=None, spec=VolumeSpec(VOL, BLOCKS * 512, 512), binding=None,
              receiver_identity="dr-site", heartbeat_s=1.0)
    assert w.full_copy and w.supersede
    assert Welcome.from_dict(w.to_dict()).supersede
    older = {k: v for k, v in w.to_dict().items() if k != "supersede"}
    assert not Welcome.from_dict(older).supersede


# --- the replica ---------------------------------------------------------------------------


def test_a_full_copy_jumps_the_journal_and_records_continue_after_it(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    r.begin_resync(superseded_to_seq=1500)
    b = r.binding()
    assert (b.last_seq, b.inconsistent, b.full_copy) == (1500, True, False)
    assert r.durable_seq == r.applied_seq == r.counters.durable_seq == 1500
    with pytest.raises(ReplicaError, match="expects 1501"):
        r.commit([rec(41, 0, 1)])                 # the superseded seqs are gone for good
    r.write_region(0, b"\x05" * 4096)             # the copy
    r.end_resync(1501)
    assert r.commit([rec(1501, 2, 6)]) == 1501
    r.apply_pending()
    r.sync_mirror()
    assert not r.binding().inconsistent
    assert r.read_mirror(0, 2048) == b"\x05" * 1024 + b"\x06" * 1024
    r.close()
    r = Replica(cfg(tmp_path))                     # and across a restart
    assert r.binding().last_seq == 1501 and r.mirror_durable_seq == 1501
    assert not (tmp_path / str(VOL) / "journal.superseding").exists()
    r.close()


def test_records_held_before_the_jump_are_applied_then_superseded(tmp_path):
    """A DR that already took some records (an older transmitter shipped them while the
    copy waited) applies them, then jumps; the undo of a new mirror stays off."""
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    r.commit([rec(41, 0, 1), rec(42, 4, 2)])
    r.begin_resync(superseded_to_seq=60)
    assert r.durable_seq == r.applied_seq == 60 and r.unapplied_bytes == 0
    assert r.read_mirror(4 * 512, 1024) == b"\x02" * 1024
    assert not r.cfg.paths.undo.exists()
    r.close()


def test_a_jump_is_refused_outside_a_full_copy_and_changes_nothing(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(Hello("site-a", VOL, BLOCKS * 512, 512, 1, 1), 0)
    r.commit([rec(1, 0, 1), rec(2, 2, 2), rec(3, 4, 3)])
    with pytest.raises(JumpRefused, match="no full copy is pending"):
        r.begin_resync(superseded_to_seq=10)       # a consistent replica: that is a gap
    assert r.durable_seq == 3 and not r.binding().inconsistent
    r.begin_resync()                               # an overflow resync: no jump
    with pytest.raises(JumpRefused, match="no full copy is pending"):
        r.begin_resync(superseded_to_seq=10)       # resumed: still none
    assert r.durable_seq == 3 and r.commit([rec(4, 0, 4)]) == 4
    r.close()


def test_a_jump_backwards_is_refused(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    r.commit([rec(41, 0, 1), rec(42, 2, 2)])
    with pytest.raises(JumpRefused, match="never goes back"):
        r.begin_resync(superseded_to_seq=41)
    assert r.durable_seq == 42 and r.binding().full_copy
    r.close()


def test_a_crash_before_the_journal_swap_leaves_the_copy_pending(tmp_path, monkeypatch):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)

    def power_cut(*args):
        raise OSError("power cut")
    monkeypatch.setattr("appliance.replication.dr.replica.os.replace", power_cut)
    with pytest.raises(OSError):
        r.begin_resync(superseded_to_seq=1500)
    crash(r)
    monkeypatch.undo()
    r = Replica(cfg(tmp_path))
    b = r.binding()
    assert (b.last_seq, b.full_copy, b.inconsistent) == (40, True, True)
    r.begin_resync(superseded_to_seq=1500)         # the primary asks again
    assert r.binding().last_seq == 1500 and not r.binding().full_copy
    r.close()


def test_a_crash_after_the_swap_repeats_the_jump_as_a_no_op(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    r.supersede(1500)                              # the swap, then the crash before the state
    crash(r)
    r = Replica(cfg(tmp_path))
    b = r.binding()
    assert (b.last_seq, b.full_copy, b.inconsistent) == (1500, True, True)
    r.bind(HELLO, b.last_seq, full_copy=b.full_copy)     # the next contact
    r.begin_resync(superseded_to_seq=1500)
    assert r.durable_seq == 1500 and not r.binding().full_copy
    assert r.commit([rec(1501, 0, 7)]) == 1501
    r.close()


# --- the receiving session -----------------------------------------------------------------


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[wire.FrameType, bytes]] = []

    async def send(self, ftype, payload=b""):
        self.sent.append((ftype, bytes(payload)))


def session_for(replica: Replica) -> tuple[Session, FakeLink]:
    link = FakeLink()
    return Session(replica, link, HELLO, heartbeat_s=1.0, dead_after_s=5.0,
                   on_report=lambda report: None), link


def test_the_session_acks_the_jump_and_expects_the_next_seq(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    s, link = session_for(r)
    asyncio.run(s._begin_resync({"since": 1.0, "overflow_seq": 1500,
                                 "superseded_to_seq": 1500}))
    assert link.sent == [(wire.FrameType.ACK, wire.encode_ack(1500, 1500))]
    assert s.orderer.next_seq == 1501
    assert s.orderer.offer([rec(41, 0, 1)]).duplicates == 1   # superseded: dropped
    r.close()


def test_the_session_refuses_a_jump_outside_a_full_copy(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(Hello("site-a", VOL, BLOCKS * 512, 512, 1, 1), 0)
    r.commit([rec(1, 0, 1)])
    s, link = session_for(r)
    with pytest.raises(SessionError, match="only accepted at the start of a full copy"):
        asyncio.run(s._begin_resync({"since": 1.0, "superseded_to_seq": 99}))
    assert link.sent == [] and s.orderer == SeqOrderer(next_seq=2)
    assert r.durable_seq == 1 and not r.binding().inconsistent
    r.close()


def test_a_new_journal_that_does_not_open_stops_the_replica_cleanly(tmp_path, monkeypatch):
    """Nothing is appended to the replaced journal file, and a restart finds the jump done
    with the copy still pending."""
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)

    def bad_disk(*args, **kwargs):
        raise OSError("EIO")
    monkeypatch.setattr("appliance.replication.dr.replica.Journal.open", bad_disk)
    with pytest.raises(ReplicaError, match="restart the receiver"):
        r.begin_resync(superseded_to_seq=1500)
    assert r.journal is None
    monkeypatch.undo()
    r.close()
    r = Replica(cfg(tmp_path))
    b = r.binding()
    assert (b.last_seq, b.full_copy, b.inconsistent) == (1500, True, True)
    r.close()
