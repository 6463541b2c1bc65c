"""The DR replica (real journal and mirror files): durable before applied, applied strictly in
order even when a session dies between commit and apply, redo after a crash."""

import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.replica import Replica, ReplicaError
from appliance.replication.wire import WireRecord

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000aa")
BLOCKS = 256


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, BLOCKS * 512, 512), replica_paths(tmp_path, VOL),
                         journal_size=1 << 20, mirror_sync_interval_s=3600)


def rec(seq: int, lba: int, fill: int) -> WireRecord:
    return WireRecord(seq, seq * 10, 1, lba, 2, bytes([fill]) * 1024)


HELLO = Hello("site-a", VOL, BLOCKS * 512, 512, 1, 1)


def test_commit_then_apply_in_order_across_a_dead_session(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    assert r.commit([rec(1, 0, 1), rec(2, 2, 2)]) == 2
    # The session died before applying; the next one commits more and applies everything.
    assert r.commit([rec(3, 0, 3)]) == 3
    assert r.applied_seq == 0
    r.apply_pending()
    assert r.applied_seq == 3
    assert r.read_mirror(0, 2048) == b"\x03" * 1024 + b"\x02" * 1024
    with pytest.raises(ReplicaError, match="expects 4"):
        r.commit([rec(5, 0, 5)])
    r.close()


def test_redo_after_crash_restores_durable_records(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.commit([rec(1, 4, 7), rec(2, 6, 8)])
    # Crash: durable in the journal, never applied; drop the objects without closing.
    r.journal._io.close()
    r._acker.close()
    r._mirror.close()
    r2 = Replica(cfg(tmp_path))
    assert r2.primary == "site-a" and r2.durable_seq == 2 and r2.applied_seq == 2
    assert r2.read_mirror(4 * 512, 2048) == b"\x07" * 1024 + b"\x08" * 1024
    assert r2.mirror_durable_seq == 2
    r2.close()


def test_out_of_range_record_is_refused_before_anything_is_written(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    with pytest.raises(ValueError, match="outside"):
        r.commit([rec(1, 0, 1), rec(2, BLOCKS - 1, 2)])
    assert r.durable_seq == 0 and r.journal.next_seq == 1
    r.close()


def test_a_run_larger_than_the_journal_is_committed_in_pieces_and_applied_in_order(tmp_path):
    """A group commit bigger than the DR journal (1 MiB here): the appended part is made
    durable and applied so the journal can reclaim it; the whole run ends durable, in order."""
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    big = [WireRecord(i + 1, 0, 1, (i * 64) % BLOCKS, 64, bytes([i % 251]) * 32768)
           for i in range(100)]                         # 3.2 MiB of data
    assert r.commit(big) == 100
    assert r.durable_seq == 100 and r.counters.durable_seq == 100
    r.apply_pending()
    assert r.applied_seq == 100
    expect = bytearray(BLOCKS * 512)
    for w in big:
        expect[w.lba * 512 : w.lba * 512 + len(w.data)] = w.data
    assert r.read_mirror(0, BLOCKS * 512) == bytes(expect)
    r.close()


def test_new_mirror_and_journal_are_preallocated_and_an_existing_mirror_is_kept(tmp_path):
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 0)
    for path, size in ((c.paths.mirror, BLOCKS * 512), (c.paths.journal, c.journal_size)):
        st = path.stat()
        assert st.st_size == size and st.st_blocks * 512 >= size, (path, st)
    r.commit([rec(1, 0, 9)])
    r.close()
    again = Replica(c)            # reopening keeps the contents
    assert again.read_mirror(0, 1024) == b"\x09" * 1024
    again.close()
