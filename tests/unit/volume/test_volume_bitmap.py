"""The dirty-region bitmap: durable marks, crash safety, and the cross-process clear protocol."""

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.volume import bitmap_format as fmt
from appliance.volume.bitmap import DirtyBitmap
from appliance.volume.errors import BitmapError
from appliance.volume.resync import ResyncSource, region_extent
from tests.support.simdisk import SimMachine

VOL = uuid.UUID(int=7)
CHUNKS = 5000          # > 4096 bits: the bit area spans two sectors-pages
CHUNK = 65536


def open_bitmap(m: SimMachine, **kw) -> DirtyBitmap:
    args = {"volume_uuid": VOL, "chunk_size": CHUNK, "num_chunks": CHUNKS} | kw
    return DirtyBitmap.open(m.open("bitmap", fmt.file_size(CHUNKS)), **args)


def test_synced_marks_survive_a_torn_crash_and_unsynced_never_invent_bits():
    for seed in range(20):
        rng = random.Random(seed)
        m = SimMachine()
        bm = open_bitmap(m)
        durable: set[int] = set()
        for _ in range(30):
            first = rng.randrange(CHUNKS - 10)
            count = rng.randrange(1, 10)
            gen = bm.begin_batch()
            bm.mark([(first, count)], gen)
            if rng.random() < 0.5:
                bm.sync()
                durable.update(range(first, first + count))
        marked = {c for c in range(CHUNKS) if bm.is_dirty(c)}
        m.crash(rng, tear=True)
        bm = open_bitmap(m)
        after = {c for c in range(CHUNKS) if bm.is_dirty(c)}
        assert durable <= after <= marked
        assert bm.dirty_chunks == len(after)


def test_incarnation_changes_at_every_open_even_after_a_crash():
    m = SimMachine()
    bm = open_bitmap(m)
    first = bm.incarnation
    m.crash(random.Random(1), tear=True)
    assert open_bitmap(m).incarnation == first + 1


def test_mode_and_overflow_seq_are_persisted():
    m = SimMachine()
    bm = open_bitmap(m)
    bm.set_mode(True, 1234)
    m.crash(random.Random(2), tear=True)
    bm = open_bitmap(m)
    assert bm.logging and bm.overflow_seq == 1234


def test_logging_since_is_set_on_entry_kept_while_logging_and_cleared_on_leaving(monkeypatch):
    m = SimMachine()
    bm = open_bitmap(m)
    assert bm.logging_since_ns == 0
    monkeypatch.setattr("time.time_ns", lambda: 1_700_000_000_000_000_000)
    bm.set_mode(True, 10)
    monkeypatch.setattr("time.time_ns", lambda: 1_800_000_000_000_000_000)
    bm.set_mode(True, 12)                       # still logging: the episode began earlier
    m.crash(random.Random(3), tear=True)
    bm = open_bitmap(m)
    assert bm.logging_since_ns == 1_700_000_000_000_000_000
    assert ResyncSource(bm.io).snapshot().logging_since_ns == 1_700_000_000_000_000_000
    bm.set_mode(False, 12)
    assert bm.logging_since_ns == 0


def test_a_version_1_header_is_read_with_an_unknown_logging_since():
    h = fmt.BitmapHeader(7, uuid.UUID(int=1), 65536, 16, 3, 2, fmt.MODE_LOGGING, 99, 4)
    v1 = fmt._HEADER_V1.pack(fmt.HEADER_MAGIC, 1, h.generation, h.volume_uuid.bytes,
                             h.chunk_size, h.num_chunks, h.incarnation, h.completed_gen,
                             h.mode, h.overflow_seq, h.processed_request)
    assert fmt.decode_header(fmt._seal(v1)) == h
    assert fmt.decode_header(fmt.encode_header(h)) == h
    future = bytearray(fmt.encode_header(h))
    future[8:12] = (6).to_bytes(4, "little")
    with pytest.raises(fmt.BitmapFormatError, match="version 6"):
        fmt.decode_header(fmt._seal(bytes(future[:fmt._HEADER.size])))


def test_clear_request_clears_shipped_chunks_but_not_ones_written_after_the_snapshot():
    m = SimMachine()
    bm = open_bitmap(m)
    g1 = bm.begin_batch()
    bm.mark([(10, 3), (100, 1)], g1)
    bm.sync()
    bm.finish_batch(g1)

    src = ResyncSource(m.open("bitmap"))
    snap = src.snapshot()
    assert snap.runs == ((10, 3), (100, 1)) and snap.seen_gen == g1
    # a write lands on chunk 11 after the resync read its data: it must stay dirty
    g2 = bm.begin_batch()
    bm.mark([(11, 1)], g2)
    bm.finish_batch(g2)
    rid = src.request_clear(snap, snap.runs)
    src.wait_processed(rid, timeout=2, poll=bm.poll_requests)
    assert [c for c in range(CHUNKS) if bm.is_dirty(c)] == [11]
    assert bm.dirty_chunks == 1
    # next pass clears it
    snap = src.snapshot()
    src.clear_shipped(snap, snap.runs, timeout=2, poll=bm.poll_requests)
    assert bm.dirty_chunks == 0 and src.snapshot().runs == ()


def test_in_flight_batch_is_not_covered_by_the_snapshot():
    m = SimMachine()
    bm = open_bitmap(m)
    gen = bm.begin_batch()
    bm.mark([(5, 1)], gen)
    bm.sync()
    # mirror write not finished yet (finish_batch not called): the resync may read old data
    src = ResyncSource(m.open("bitmap"))
    snap = src.snapshot()
    assert snap.seen_gen < gen
    src.clear_shipped(snap, snap.runs, timeout=2, poll=bm.poll_requests)
    assert bm.is_dirty(5)


def test_request_from_an_earlier_writer_incarnation_is_ignored():
    m = SimMachine()
    bm = open_bitmap(m)
    bm.mark([(0, 4)], bm.begin_batch())
    bm.sync()
    src = ResyncSource(m.open("bitmap"))
    snap = src.snapshot()
    bm.close()
    bm = open_bitmap(m)               # writer restarted: in-memory touch history gone
    src.clear_shipped(snap, snap.runs, timeout=2, poll=bm.poll_requests)
    assert bm.dirty_chunks == 4
    snap = src.snapshot()
    src.clear_shipped(snap, snap.runs, timeout=2, poll=bm.poll_requests)
    assert bm.dirty_chunks == 0


def test_clears_are_lazy_but_a_crash_never_loses_a_mark():
    rng = random.Random(5)
    m = SimMachine()
    bm = open_bitmap(m)
    bm.mark([(0, 64)], bm.begin_batch())
    bm.sync()
    bm.finish_batch(1)
    src = ResyncSource(m.open("bitmap"))
    snap = src.snapshot()
    src.clear_shipped(snap, [(0, 32)], timeout=2, poll=bm.poll_requests)
    m.crash(rng, tear=True)
    bm = open_bitmap(m)
    assert all(bm.is_dirty(c) for c in range(32, 64))   # never cleared: must survive


def test_mark_all_for_initial_sync():
    m = SimMachine()
    bm = open_bitmap(m)
    bm.mark_all()
    m.crash(random.Random(3))
    bm = open_bitmap(m)
    assert bm.dirty_chunks == CHUNKS
    assert list(bm.dirty_runs()) == [(0, CHUNKS)]


def test_mark_request_is_durable_once_handled_and_clipped_to_the_volume():
    m = SimMachine()
    bm = open_bitmap(m)
    bm.mark([(10, 5)], bm.begin_batch())
    bm.sync()
    src = ResyncSource(m.open("bitmap"))
    rid = src.request_mark_all()
    req = bm.pending_request()
    assert req is not None and req.mark and req.ranges == ((0, CHUNKS),)
    assert bm.handle_mark(req) == CHUNKS - 5
    assert bm.pending_request() is None
    src.wait_processed(rid, timeout=1)
    m.crash(random.Random(7), tear=True)
    bm = open_bitmap(m)
    assert bm.dirty_chunks == CHUNKS and list(bm.dirty_runs()) == [(0, CHUNKS)]
    # A request naming chunks past the end (a volume shrunk meanwhile) marks what exists.
    assert bm.handle_mark(fmt.BitmapRequest(9, 0, 9, 0, ((CHUNKS - 2, 10),), mark=True)) == 0


def test_clear_and_mark_requests_round_trip_and_differ():
    clear = fmt.BitmapRequest(3, 1, 3, 7, ((0, 4), (9, 1)))
    mark = fmt.BitmapRequest(4, 1, 4, 0, ((0, 100),), mark=True)
    for req in (clear, mark):
        assert fmt.decode_request(fmt.encode_request(req)) == req


def test_wait_processed_times_out_with_a_message_when_no_writer_runs():
    m = SimMachine()
    open_bitmap(m)
    src = ResyncSource(m.open("bitmap"))
    rid = src.request_clear(src.snapshot(), [(0, 1)])
    with pytest.raises(TimeoutError, match="service"):
        src.wait_processed(rid, timeout=0.05)


@pytest.mark.parametrize("kw, message", [
    ({"volume_uuid": uuid.UUID(int=8)}, "belongs to volume"),
    ({"chunk_size": 2 * CHUNK}, "chunks of"),
])
def test_bitmap_of_another_volume_or_geometry_is_refused(kw, message):
    m = SimMachine()
    open_bitmap(m).close()
    with pytest.raises(BitmapError, match=message):
        open_bitmap(m, **kw)


def test_unknown_format_version_is_refused_and_file_left_alone():
    m = SimMachine()
    open_bitmap(m).close()
    f = m.open("bitmap")
    slot = bytearray(fmt.SLOT_SIZE)
    f.pread_into(0, memoryview(slot))
    h = fmt.decode_header(slot)
    body = bytearray(fmt.encode_header(h))
    body[8:12] = (99).to_bytes(4, "little")
    import crc32c
    size = fmt._HEADER.size
    body[size:size + 4] = crc32c.crc32c(bytes(body[:size])).to_bytes(4, "little")
    f.pwritev(0, [body])
    f.pwritev(fmt.SLOT_SIZE, [body])
    with pytest.raises(BitmapError, match="version 99"):
        open_bitmap(m)
    after = bytearray(fmt.SLOT_SIZE)
    f.pread_into(0, memoryview(after))
    assert after == body


def test_too_small_bitmap_file_is_refused():
    m = SimMachine()
    with pytest.raises(BitmapError, match="needs"):
        DirtyBitmap.open(m.open("b", 8192), volume_uuid=VOL, chunk_size=CHUNK, num_chunks=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 299), st.integers(1, 40)), max_size=12),
       st.integers(0, 299))
def test_runs_match_a_naive_scan(marks, start):
    n = 300
    bits = bytearray(fmt.bits_length(n))
    for first, count in marks:
        fmt.set_bits(bits, first, min(count, n - first))
    expect = [c for c in range(start, n) if bits[c >> 3] >> (c & 7) & 1]
    got = [c for first, count in fmt.iter_runs(bits, n, start) for c in range(first, first + count)]
    assert got == expect


def test_region_extent_clips_the_last_chunk():
    assert region_extent(65536, 2, 2, 200_000) == (131072, 200_000 - 131072)
