"""The ordinary path on real files, group-commit I/O counts, and the targeted cases the
random programs reach only by luck."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
from volume_harness import BS, Model, Peer, Rig, block_data, read_all

from appliance.journal import OpKind, WriteOp
from appliance.volume import LOGGING_TO_BITMAP, FlushPolicy, ResyncSource, Volume, VolumeConfig


def write(lba: int, n: int, wid: int) -> WriteOp:
    return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))


def real_config(tmp_path, **kw) -> VolumeConfig:
    args = dict(uuid=uuid.UUID(int=5), num_blocks=4096, journal_size=1 << 20,
                max_transfer_bytes=64 * 1024, chunk_size=16384, mirror_path=tmp_path / "mirror",
                journal_path=tmp_path / "journal", bitmap_path=tmp_path / "bitmap") | kw
    return VolumeConfig(**args)


@pytest.mark.parametrize("policy", list(FlushPolicy))
def test_real_files_write_read_reopen(tmp_path, policy):
    cfg = real_config(tmp_path, flush_policy=policy)
    with Volume.open(cfg) as vol:
        vol.submit([write(0, 8, 1), WriteOp(OpKind.WRITE_SAME, 100, 50, block_data(2, 0)),
                    WriteOp(OpKind.UNMAP, 4, 2)])
        vol.flush()
        buf = bytearray(200 * BS)
        vol.read_into(0, 100, [memoryview(buf)[:1000], memoryview(buf)[1000:100 * BS]])
        vol.read_into(100, 100, [memoryview(buf)[100 * BS:]])
        assert vol.status()["state"] == "journaling"
    expect = bytearray(200 * BS)
    expect[0:8 * BS] = write(0, 8, 1).data
    expect[4 * BS:6 * BS] = bytes(2 * BS)
    expect[100 * BS:150 * BS] = block_data(2, 0) * 50
    assert buf == expect
    assert (tmp_path / "mirror").read_bytes()[:200 * BS] == expect
    with Volume.open(cfg) as vol:             # reopen: same content, journal continues
        got = bytearray(200 * BS)
        vol.read_into(0, 100, [memoryview(got)[:100 * BS]])
        vol.read_into(100, 100, [memoryview(got)[100 * BS:]])
        assert got == expect
        assert vol.status()["journal"]["next_seq"] == 4


def test_one_journal_sync_per_batch_and_none_for_cached_writes():
    rig = Rig(policy=FlushPolicy.PER_BATCH)
    vol = rig.open()
    m = rig.m
    before = dict(m.syncs)
    vol.submit([write(i * 4, 4, i) for i in range(10)])
    assert m.syncs["journal"] - before.get("journal", 0) == 1
    assert m.syncs["mirror"] == before.get("mirror", 0)        # mirror sync only at checkpoints
    assert m.unsynced_bytes("mirror") == 10 * 4 * BS            # ...but written

    vol.write_cache_enabled = True
    before = dict(m.syncs)
    vol.submit([write(100, 4, 50)])
    assert dict(m.syncs) == before and m.unsynced_bytes("mirror") == 10 * 4 * BS  # deferred
    vol.submit([write(110, 1, 51)], fua=True)                  # FUA: one sync covers both
    assert m.syncs["journal"] - before.get("journal", 0) == 1
    assert m.unsynced_bytes("mirror") == (40 + 5) * BS


def test_on_flush_reads_come_from_the_overlay_until_the_sync():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    vol = rig.open()
    vol.submit([write(10, 3, 1), WriteOp(OpKind.WRITE_SAME, 11, 4, block_data(2, 0)),
                WriteOp(OpKind.UNMAP, 14, 1)])
    assert rig.raw("mirror")[10 * BS:15 * BS] == bytes(5 * BS)   # write-ahead: not yet
    buf = bytearray(6 * BS)
    vol.read_into(9, 6, [memoryview(buf)[:700], memoryview(buf)[700:]])
    assert buf == bytes(BS) + block_data(1, 0) + block_data(2, 0) * 3 + bytes(BS)
    vol.flush()
    assert rig.raw("mirror")[9 * BS:15 * BS] == buf


def test_redo_puts_a_durable_record_the_mirror_missed_back():
    rig = Rig()
    vol = rig.open()
    rig.m.inject_fault("mirror", "write")
    with pytest.raises(Exception, match="injected"):
        vol.submit([write(7, 2, 9)])                 # journal durable, mirror write failed
    assert rig.raw("mirror")[7 * BS:9 * BS] == bytes(2 * BS)
    rig.crash(random.Random(1), tear=True)
    vol = rig.open()
    assert rig.raw("mirror")[7 * BS:9 * BS] == write(7, 2, 9).data
    assert vol.status()["mirror_durable_seq"] == 1


def test_compare_and_write_is_atomic_against_concurrent_writers():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    vol = rig.open()
    counter = bytearray(BS)
    wins = []

    def increment(worker: int) -> None:
        for _ in range(25):
            while True:
                cur = bytearray(BS)
                vol.read_into(0, 1, [memoryview(cur)])
                new = (int.from_bytes(cur[:8], "little") + 1).to_bytes(8, "little") + cur[8:]
                if vol.compare_and_write(0, memoryview(cur), memoryview(new)) is None:
                    wins.append(worker)
                    break

    threads = [threading.Thread(target=increment, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "compare_and_write worker hung"
    vol.read_into(0, 1, [memoryview(counter)])
    assert int.from_bytes(counter[:8], "little") == len(wins) == 100


def test_compare_and_write_reports_the_first_mismatching_byte_and_writes_nothing():
    rig = Rig()
    vol = rig.open()
    vol.submit([write(20, 2, 1)])
    verify = bytearray(write(20, 2, 1).data)
    verify[BS + 17] ^= 1
    writes = dict(rig.m.writes)
    assert vol.compare_and_write(20, memoryview(verify), memoryview(bytes(2 * BS))) == BS + 17
    assert dict(rig.m.writes) == writes


def test_a_clear_never_outlives_mirror_data_a_crash_could_take():
    """logging-to-bitmap with the write cache on: the resync reads a write from the page
    cache and ships it; the clear must not become durable before that data is."""
    rig = Rig(num_blocks=512, policy=FlushPolicy.ON_FLUSH, max_transfer=32 * 1024)
    vol = rig.open()
    peer = Peer(rig)
    i = 0
    while vol.state != LOGGING_TO_BITMAP:
        vol.submit([write((i * 64) % 448, 64, 100 + i)])
        i += 1
    vol.submit([write(300, 4, 999)])                       # not flushed, mirror not synced
    assert peer.resync(vol) > 0
    vol.service()
    assert vol.state == "journaling"
    vol.flush()
    rig.crash(random.Random(2), tear=False)
    vol = rig.open()
    assert rig.raw("mirror") == peer.expected_mirror(vol), "peer holds what the mirror lost"


def test_full_resync_marks_everything_and_returns_to_journaling():
    rig = Rig()
    vol = rig.open()
    peer = Peer(rig)
    vol.submit([write(0, 8, 1)])
    vol.start_full_resync()
    assert vol.state == LOGGING_TO_BITMAP
    assert vol.status()["dirty_chunks"] == rig.num_chunks
    vol.submit([write(50, 8, 2)])
    rig.crash(random.Random(4), tear=True)
    vol = rig.open()
    assert vol.state == LOGGING_TO_BITMAP and vol.status()["dirty_chunks"] == rig.num_chunks
    assert peer.resync(vol) == rig.num_chunks
    vol.service()
    assert vol.state == "journaling"
    assert bytes(peer.image) == b"".join(read_all(vol))


def test_a_new_peer_gets_a_full_copy_through_a_mark_request_across_a_writer_restart():
    """Re-pairing with an empty DR after the journal reclaimed what the old peer acked: the
    resync process asks the writer (another process) to mark every chunk; a writer that
    restarts before handling it finds it in the slot, and the new peer ends with the image.
    (After a power cut the request may be gone: the transmitter asks again, since the peer
    keeps saying it needs a full copy until the copy begins.)"""
    rig = Rig()
    vol = rig.open()
    old_peer = Peer(rig)
    for wid in range(1, 30):
        vol.submit([write(wid * 7 % 240, 8, wid)])
    vol.flush()
    old_peer.ship()
    new_peer = Peer(rig)
    new_peer.acked = old_peer.acked         # the journal no longer holds seq 1..acked
    src = ResyncSource(rig.m.open("bitmap"))
    rid = src.request_mark_all()
    vol.close()                             # the writer restarts before it saw the request
    vol = rig.open()
    assert vol.state == "journaling"
    src.wait_processed(rid, timeout=5, poll=vol.service)
    assert vol.state == LOGGING_TO_BITMAP
    assert vol.status()["dirty_chunks"] == rig.num_chunks
    vol.submit([write(3, 4, 99)])           # host writes go on during the copy
    while new_peer.resync(vol):
        pass
    vol.service()
    assert vol.state == "journaling"
    new_peer.ship()
    assert bytes(new_peer.image) == b"".join(read_all(vol))


def test_resync_from_a_writer_that_restarted_reships_instead_of_clearing():
    rig = Rig()
    vol = rig.open()
    vol.start_full_resync()
    src = ResyncSource(rig.m.open("bitmap"))
    snap = src.snapshot()
    vol.close()
    vol = rig.open()
    src.clear_shipped(snap, snap.runs, timeout=5, poll=vol.service)
    assert vol.status()["dirty_chunks"] == rig.num_chunks


def test_model_sanity_a_lost_flushed_write_is_detected():
    """The checker itself can fail: a block that lost its flushed value is reported."""
    model = Model(4)
    model.apply([write(0, 1, 1)], durable=False)
    model.flush()
    with pytest.raises(AssertionError, match="block 0"):
        model.check_after_crash([bytes(BS)] * 4)


def test_real_files_resync_from_another_handle_needs_no_help_from_the_host(tmp_path):
    """The writer's background ticker handles clear requests while the host is idle."""
    from appliance.storage import open_file

    cfg = real_config(tmp_path, service_interval=0.02)
    with Volume.open(cfg) as vol:
        vol.start_full_resync()
        assert vol.state == LOGGING_TO_BITMAP
        with open_file(tmp_path / "bitmap") as bitmap_io:
            src = ResyncSource(bitmap_io)
            snap = src.snapshot()
            assert snap.logging and snap.dirty_chunks == cfg.num_chunks
            src.clear_shipped(snap, snap.runs, timeout=10)     # no poll: the ticker does it
        deadline = time.monotonic() + 10
        while vol.state == LOGGING_TO_BITMAP:
            assert time.monotonic() < deadline, "writer never returned to journaling"
            time.sleep(0.01)
        assert vol.status()["dirty_chunks"] == 0
        assert vol.status()["background_error"] is None


def test_cached_writes_are_written_back_by_the_background_work():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    rig.kw["mirror_sync_interval"] = 1e-6
    vol = rig.open()
    vol.submit([write(30, 2, 7)])
    assert rig.m.unsynced_bytes("journal") > 0 and vol.status()["pending_bytes"] == 2 * BS
    vol.service()
    assert vol.status()["pending_bytes"] == 0
    assert rig.m.unsynced_bytes("journal") == 0 and rig.m.unsynced_bytes("mirror") == 0
    assert rig.raw("mirror")[30 * BS:32 * BS] == write(30, 2, 7).data
    assert vol.status()["mirror_durable_seq"] == 1


def test_switching_the_write_cache_off_makes_cached_writes_durable():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    vol = rig.open()
    vol.submit([write(40, 1, 8)])
    vol.write_cache_enabled = False
    rig.crash(random.Random(9), tear=True)
    vol = rig.open()
    buf = bytearray(BS)
    vol.read_into(40, 1, [memoryview(buf)])
    assert buf == block_data(8, 0)


@pytest.mark.parametrize("policy", list(FlushPolicy))
def test_a_failed_mirror_write_is_retried_and_never_checkpointed_past(policy):
    """EIO from the mirror: the host gets an error, reads still see the journaled data, the
    next commit writes it, and the journal never reclaims it before the mirror holds it."""
    from appliance.volume import MediumError

    rig = Rig(policy=policy)
    vol = rig.open()
    peer = Peer(rig)
    rig.m.inject_fault("mirror", "write")
    with pytest.raises(MediumError):
        vol.submit([write(10, 2, 1)], fua=True)
    buf = bytearray(2 * BS)
    vol.read_into(10, 2, [memoryview(buf)])
    assert buf == write(10, 2, 1).data                 # journaled: reads see it
    for i in range(40):                                # later writes, acks, checkpoints
        vol.submit([write(100 + i % 50, 1, 100 + i)], fua=True)
        peer.ship()
    vol.flush()
    assert rig.raw("mirror")[10 * BS:12 * BS] == write(10, 2, 1).data
    assert rig.raw("mirror") == peer.expected_mirror(vol) == bytes(peer.image)


def test_real_files_4096_byte_blocks_overflow_and_return(tmp_path):
    """4 KiB volume blocks on real files: overflow when the peer is away, writes go on,
    the peer catches up, the resync cleans the bitmap, journaling resumes, and a peer image
    built from the shipped records and regions equals the mirror."""
    from appliance.journal import JournalReader
    from appliance.storage import open_file
    from appliance.volume import region_extent

    bs = 4096
    cfg = real_config(tmp_path, block_size=bs, num_blocks=256, journal_size=512 * 1024,
                      max_transfer_bytes=32 * 1024, chunk_size=16384, service_interval=None)
    rng = random.Random(7)
    expect = bytearray(256 * bs)
    peer = bytearray(256 * bs)
    acked = 0

    def ship() -> None:
        nonlocal acked
        with JournalReader(tmp_path / "journal", volume_uuid=cfg.uuid) as reader:
            while records := reader.read(acked + 1, 1 << 20):
                for rec in records:
                    op = rec.op
                    span = slice(op.lba * bs, (op.lba + op.nblocks) * bs)
                    peer[span] = (op.data if op.kind == OpKind.WRITE else
                                  op.data * op.nblocks if op.kind == OpKind.WRITE_SAME else
                                  bytes(op.nblocks * bs))
                acked = records[-1].seq
                reader.acknowledge(acked)

    with Volume.open(cfg) as vol:
        for i in range(30):
            lba, n = rng.randrange(248), rng.randint(4, 8)
            data = rng.randbytes(n * bs)
            if i % 7 == 3:
                op = WriteOp(OpKind.WRITE_SAME, lba, n, data[:bs])
                expect[lba * bs:(lba + n) * bs] = data[:bs] * n
            elif i % 11 == 5:
                op = WriteOp(OpKind.UNMAP, lba, n)
                expect[lba * bs:(lba + n) * bs] = bytes(n * bs)
            else:
                op = WriteOp(OpKind.WRITE, lba, n, data)
                expect[lba * bs:(lba + n) * bs] = data
            vol.submit([op], fua=i % 5 == 0)
        assert vol.state == LOGGING_TO_BITMAP, "the journal should have filled"
        ship()
        with open_file(tmp_path / "bitmap") as bitmap_io, open_file(tmp_path / "mirror") as m:
            src = ResyncSource(bitmap_io)
            snap = src.snapshot()
            assert acked >= snap.overflow_seq
            for first, count in snap.runs:
                off, length = region_extent(snap.chunk_size, first, count, len(peer))
                m.pread_into(off, memoryview(peer)[off:off + length])
            src.clear_shipped(snap, snap.runs, timeout=5, poll=vol.service)
        vol.service()
        assert vol.state == "journaling"
        vol.submit([WriteOp(OpKind.WRITE, 0, 1, bytes([9]) * bs)], fua=True)
        expect[:bs] = bytes([9]) * bs
        ship()
    assert (tmp_path / "mirror").read_bytes() == expect == peer


def test_real_files_large_cached_writes_reach_the_mirror_from_the_journal_file(tmp_path):
    # Without direct I/O (a file system refusing it), large cached writes stay spans.
    cfg = real_config(tmp_path, flush_policy=FlushPolicy.ON_FLUSH, overlay_span_bytes=16 * BS,
                      pending_limit_bytes=256 * 1024, direct_io=False)
    writes = [write(lba, 64, wid) for wid, lba in enumerate([0, 1000, 32, 2000, 3000], 1)]
    expect = bytearray(4096 * BS)
    with Volume.open(cfg) as vol:
        for op in writes:
            vol.submit([op])
            expect[op.lba * BS:(op.lba + op.nblocks) * BS] = op.data
        assert vol.status()["pending_bytes"] == 5 * 64 * BS      # cached, nothing synced
        assert (tmp_path / "mirror").read_bytes() == bytes(4096 * BS)
        assert b"".join(read_all(vol)) == expect                # read back from the journal
        vol.flush()
        assert (tmp_path / "mirror").read_bytes() == expect     # copied by the kernel
        for wid, lba in enumerate(range(0, 3800, 50), 10):       # past the pending limit
            op = write(lba, 40, wid)
            vol.submit([op])
            expect[lba * BS:(lba + 40) * BS] = op.data
        assert vol.status()["pending_bytes"] <= 256 * 1024
        assert b"".join(read_all(vol)) == expect
    assert (tmp_path / "mirror").read_bytes() == expect          # close commits the rest


def test_real_files_large_cached_writes_go_direct_to_journal_and_mirror(tmp_path):
    """With direct I/O a cached batch holding a large WRITE is written through at once, from
    the caller's (aligned) buffers to both files, none of it through the page cache; small
    cached writes stay in the overlay, and are committed first when a large write comes."""
    import mmap

    from tests.support.pagecache import cached_pages
    cfg = real_config(tmp_path, flush_policy=FlushPolicy.ON_FLUSH, overlay_span_bytes=16 * BS,
                      block_size=4096, num_blocks=1024, max_transfer_bytes=256 * 1024,
                      journal_size=4 << 20)
    bs = 4096
    ring = mmap.mmap(-1, 64 * bs)                        # page-aligned, as the TCMU ring is
    expect = bytearray(1024 * bs)
    with Volume.open(cfg) as vol:
        small = WriteOp(OpKind.WRITE, 100, 1, bytes([7]) * bs)
        vol.submit([small])
        expect[100 * bs:101 * bs] = small.data
        assert vol.status()["pending_bytes"] == bs           # small: cached
        ring[:] = bytes(range(256)) * (64 * bs // 256)
        vol.submit([WriteOp(OpKind.WRITE, 96, 64, memoryview(ring))])
        expect[96 * bs:160 * bs] = ring[:]
        status = vol.status()
        assert status["pending_bytes"] == 0                   # written through, nothing cached
        assert status["mirror_applied_seq"] == 2               # both writes on the mirror ...
        assert status["journal"]["durable_seq"] == 3           # ... after their journal sync
        assert cached_pages(tmp_path / "mirror", 96 * bs, 64 * bs) == 0
        mirror = (tmp_path / "mirror").read_bytes()
        assert mirror == expect                               # the small write landed first
        got = bytearray(64 * bs)
        vol.read_into(96, 64, [memoryview(got)])
        assert got == expect[96 * bs:160 * bs]
    assert (tmp_path / "mirror").read_bytes() == expect
