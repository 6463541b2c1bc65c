"""The DR replica (real journal and mirror files): durable before applied, applied strictly in
order even when a session dies between commit and apply, redo after a crash."""

import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.wire import WireRecord
from tests.support.replica_crash import crash

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
    crash(r)        # durable in the journal, never applied
    r2 = Replica(cfg(tmp_path))
    assert r2.primary == "site-a" and r2.durable_seq == 2 and r2.applied_seq == 2
    assert r2.read_mirror(4 * 512, 2048) == b"\x07" * 1024 + b"\x08" * 1024
    assert r2.mirror_durable_seq == 2
    r2.close()


def test_the_replica_journal_keeps_the_primarys_timestamps_for_a_promotion_after_a_restart(
        tmp_path):
    """The replica journal's records carry the primary's stamps, not the DR's clock: after a
    restart only the journal knows them, and the promotion's consistent point is named by the
    stamp of its last write (two primary records here: 1-2 together, then 3)."""
    t0 = 1_700_000_000_000_000_000
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    run = [WireRecord(1, t0, 1, 0, 2, b"\x01" * 1024), WireRecord(2, t0, 1, 2, 2, b"\x02" * 1024),
           WireRecord(3, t0 + 5_000, 1, 4, 2, b"\x03" * 1024)]
    assert r.commit(run) == 3
    crash(r)                                    # the next open redoes the journal
    r2 = Replica(cfg(tmp_path))
    assert [(x.seq, x.timestamp_ns) for x in r2.journal.records(1)] == [
        (1, t0), (2, t0), (3, t0 + 5_000)]
    promoted = r2.mark_promoted(now=123.0)
    assert (promoted["at_seq"], promoted["at_time"]) == (3, (t0 + 5_000) / 1e9)
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


def test_first_contact_without_history_waits_for_a_full_copy_durably(tmp_path):
    """A new DR met by a primary whose journal starts at seq 41: inconsistent and waiting for
    the full copy from the start, across restarts; no undo (nothing to keep); REGION refused
    before RESYNC_BEGIN; records before the copy are taken; consistent after it."""
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    b = r.binding()
    assert (b.last_seq, b.inconsistent, b.full_copy) == (40, True, True)
    assert r.commit([rec(41, 0, 1)]) == 41      # drained before the copy begins
    with pytest.raises(ReplicaError, match="outside a resync"):
        r.write_region(0, b"\x09" * 512)
    crash(r)
    r = Replica(cfg(tmp_path))
    b = r.binding()
    assert (b.last_seq, b.inconsistent, b.full_copy) == (41, True, True)
    r.begin_resync()
    assert not r.binding().full_copy and r.binding().inconsistent
    r.write_region(4096, b"\x05" * 8192)
    assert not r.cfg.paths.undo.exists(), "a new mirror has no image worth an undo log"
    r.end_resync(42)
    r.commit([rec(42, 0, 2)])
    r.apply_pending()
    r.sync_mirror()
    assert r.binding().inconsistent is False
    assert r.read_mirror(0, 1024) == b"\x02" * 1024
    assert r.read_mirror(4096, 8192) == b"\x05" * 8192
    r.close()


def test_full_copy_pending_is_saved_before_the_journal_exists(tmp_path, monkeypatch):
    """A crash while the journal is being created leaves a replica that still says it needs
    a full copy, never one that looks complete from seq 41 on."""
    r = Replica(cfg(tmp_path))

    def die(*args, **kwargs):
        raise OSError("power cut")
    monkeypatch.setattr("appliance.replication.dr.replica.Journal.create", die)
    with pytest.raises(OSError):
        r.bind(HELLO, 40, full_copy=True)
    crash(r)
    monkeypatch.undo()
    r = Replica(cfg(tmp_path))
    assert r.binding().last_seq is None and r.binding().inconsistent
    r.bind(HELLO, 40, full_copy=True)            # the next contact: the same first contact
    assert r.binding().full_copy and r.binding().last_seq == 40
    r.close()


def test_a_rolled_back_image_stays_recoverable_through_the_full_copy(tmp_path):
    """After a failover roll back, the DR's mirror holds a consistent image; re-pairing needs a
    full copy, and the undo log keeps that image recoverable, records included."""
    from appliance.replication.dr.replica_offline import roll_back_to_consistent

    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 0)
    r.commit([rec(1, 0, 1)])
    r.begin_resync()                     # a resync that the failover interrupts
    r.write_region(2048, b"\x07" * 512)
    r.close()
    assert roll_back_to_consistent(c) == 1
    r = Replica(c)
    assert r.binding().last_seq is None      # the old journal was set aside
    r.bind(HELLO, 30, full_copy=True)
    r.commit([rec(31, 0, 3)])
    r.apply_pending()
    r.begin_resync()
    r.write_region(2048, b"\x08" * 512)
    r.close()
    assert roll_back_to_consistent(c) == 1   # again back to the image at seq 1
    r = Replica(c)
    assert r.read_mirror(0, 1024) == b"\x01" * 1024
    assert r.read_mirror(2048, 512) == bytes(512)
    r.close()


def test_roll_back_is_refused_while_no_consistent_image_exists(tmp_path):
    from appliance.replication.dr.replica_offline import roll_back_to_consistent

    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 40, full_copy=True)
    r.close()
    with pytest.raises(ReplicaError, match="never held a consistent image"):
        roll_back_to_consistent(c)


def test_invalidate_redoes_sets_the_journal_aside_and_keeps_the_image(tmp_path):
    from appliance.replication.dr.replica_offline import invalidate

    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 0)
    r.commit([rec(1, 0, 1), rec(2, 8, 2)])
    crash(r)                                 # durable, maybe not on the mirror yet
    assert invalidate(c) == 2
    assert c.paths.journal.with_name("journal.invalidated-2").exists()
    assert not c.paths.journal.exists()
    r = Replica(c)
    assert r.binding().last_seq is None and not r.binding().inconsistent
    assert r.read_mirror(0, 1024) == b"\x01" * 1024      # redone before it was set aside
    r.bind(HELLO, 70, full_copy=True)
    assert r.binding().full_copy and r.consistent_seq == 2 and c.paths.undo.exists()
    r.close()
    with pytest.raises(ReplicaError, match="inconsistent"):
        invalidate(c)


def test_the_replica_grows_with_its_primary_and_keeps_the_size_across_a_restart(tmp_path):
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 0)
    big = Hello("site-a", VOL, 2 * BLOCKS * 512, 512, 1, 1)
    far = WireRecord(1, 10, 1, 2 * BLOCKS - 2, 2, b"\x06" * 1024)
    with pytest.raises(ValueError, match="outside the volume"):
        r.commit([far])                          # beyond the end before the grow
    r.bind(big, 0)
    assert r.size_bytes == 2 * BLOCKS * 512 and r.current_spec().size_bytes == r.size_bytes
    assert r.commit([far]) == 1
    r.apply_pending()
    crash(r)
    r = Replica(c)
    assert r.size_bytes == 2 * BLOCKS * 512
    assert r.read_mirror((2 * BLOCKS - 2) * 512, 1024) == b"\x06" * 1024
    assert c.paths.mirror.stat().st_size == 2 * BLOCKS * 512
    r.close()


def test_the_replica_shrinks_with_its_primary_after_applying_what_it_holds(tmp_path):
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(HELLO, 0)
    r.commit([rec(1, BLOCKS - 2, 1), rec(2, 0, 2)])     # durable, not applied yet
    small = Hello("site-a", VOL, BLOCKS * 256, 512, 1, 1)
    r.bind(small, 2)
    assert r.applied_seq == 2 and r.size_bytes == BLOCKS * 256
    assert c.paths.mirror.stat().st_size == BLOCKS * 256
    assert r.read_mirror(0, 1024) == b"\x02" * 1024
    with pytest.raises(ValueError, match="outside the volume"):
        r.commit([rec(3, BLOCKS // 2, 3)])
    r.close()
    r = Replica(c)
    assert r.size_bytes == BLOCKS * 256
    r.close()


def test_reaching_the_resync_consistent_point_is_declared_without_waiting_for_more_records(
        tmp_path):
    """The records up to RESYNC_END's seq arrive after it and the link then goes idle: the
    apply that reaches that seq declares the image consistent (the periodic mirror sync is an
    hour away here and no further batch comes)."""
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 40, full_copy=True)
    r.begin_resync()
    r.write_region(4096, b"\x05" * 512)
    r.end_resync(42)
    r.commit([rec(41, 0, 1)])
    r.apply_pending()
    assert r.binding().inconsistent, "seq 42 is not applied yet"
    r.commit([rec(42, 0, 2)])
    r.apply_pending()
    assert r.binding().inconsistent is False
    r.close()
