"""The retention log of a DR replica (before-images with seq and primary time): replay to any
point of the window gives that point's image exactly, overlapping records of one run
included; a torn last record is cut at open; pruning by size and by age keeps the window
and never drops what a recovery pinned; points are found by seq and by time, and a point
outside the window is refused with the range."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.replication.dr import retention
from appliance.replication.dr.apply import apply_records
from appliance.replication.dr.retention import Point, RetentionError, RetentionLog
from appliance.replication.wire import KIND_UNMAP, KIND_WRITE, KIND_WRITE_SAME, WireRecord

BS = 512
BLOCKS = 64


class MemMirror:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def pread_into(self, offset, buf):
        buf[:] = self.buf[offset : offset + len(buf)]

    def pwritev(self, offset, bufs):
        for b in bufs:
            self.buf[offset : offset + len(b)] = b
            offset += len(b)

    def sync(self):
        pass


def make_record(seq: int, kind: int, lba: int, n: int, rng: random.Random) -> WireRecord:
    if kind == KIND_WRITE:
        data = rng.randbytes(n * BS)
    elif kind == KIND_WRITE_SAME:
        data = rng.randbytes(BS)
    else:
        data = b""
    return WireRecord(seq, 1_000_000_000 * seq, kind, lba, n, data)


def run_workload(log: RetentionLog, mirror: MemMirror, runs: list[list[WireRecord]]
                 ) -> dict[int, bytes]:
    """Apply runs as the replica does (before-images durable, then the mirror); the image
    after each seq."""
    images = {runs[0][0].seq - 1: bytes(mirror.buf)}
    for run in runs:
        log.save(mirror, run, BS)
        log.sync()
        for rec in run:       # one by one here, to know every intermediate image
            apply_records(mirror, [rec], BS)
            images[rec.seq] = bytes(mirror.buf)
    return images


def recovered(log: RetentionLog, mirror: MemMirror, to_seq: int, from_seq: int) -> bytes:
    copy = MemMirror(len(mirror.buf))
    copy.buf[:] = mirror.buf
    log.roll_back(copy, to_seq=to_seq, from_seq=from_seq)
    return bytes(copy.buf)


ops = st.lists(st.tuples(st.sampled_from([KIND_WRITE, KIND_WRITE, KIND_WRITE_SAME, KIND_UNMAP]),
                         st.integers(0, BLOCKS - 1), st.integers(1, 8), st.integers(1, 4)),
               min_size=1, max_size=30)


@settings(max_examples=30, deadline=None)
@given(ops=ops, seed=st.integers(0, 1000))
def test_every_point_of_the_window_is_recovered_exactly(tmp_path_factory, ops, seed):
    """Overlapping records within a run too: a record's before-image has the earlier
    records of its run laid over what the mirror held."""
    rng = random.Random(seed)
    d = tmp_path_factory.mktemp("ret")
    mirror = MemMirror(BLOCKS * BS)
    mirror.buf[:] = rng.randbytes(BLOCKS * BS)
    log = RetentionLog(d / "retention", segment_bytes=4096)   # many segments
    log.start(Point(10, 7))
    runs, seq, cur = [], 11, []
    for kind, lba, n, run_len in ops:
        n = min(n, BLOCKS - lba)
        cur.append(make_record(seq, kind, lba, n, rng))
        seq += 1
        if len(cur) >= run_len:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    images = run_workload(log, mirror, runs)
    last = seq - 1
    assert log.oldest == Point(10, 7) and log.newest == Point(last, last * 1_000_000_000)
    for p in range(10, last + 1):
        assert recovered(log, mirror, p, last) == images[p], f"point {p}"
    log.close()
    # Reopened from the files: the same window and the same images.
    again = RetentionLog(d / "retention", segment_bytes=4096)
    assert again.oldest == Point(10, 7) and again.newest.seq == last
    assert recovered(again, mirror, 10, last) == images[10]
    again.close()


def test_a_large_record_is_saved_in_pieces_and_a_torn_one_is_cut_at_open(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(retention, "PIECE_BYTES", 2 * BS)
    rng = random.Random(1)
    mirror = MemMirror(BLOCKS * BS)
    mirror.buf[:] = rng.randbytes(BLOCKS * BS)
    d = tmp_path / "retention"
    log = RetentionLog(d)
    log.start(Point(0, 0))
    images = run_workload(log, mirror, [[make_record(1, KIND_WRITE, 0, 7, rng)],
                                        [make_record(2, KIND_WRITE, 3, 7, rng)]])
    pieces = [(seq, last) for seq, _, _, _, last in retention.entries(d)]
    assert pieces == [(1, False), (1, False), (1, False), (1, True),
                      (2, False), (2, False), (2, False), (2, True)]
    log.close()
    # The crash tore record 2 after two of its pieces: its mirror write never started.
    seg = next(d.iterdir())
    entry = retention._ENTRY.size
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size - 2 * (entry + 2 * BS) - (entry + BS) - 10)
    mirror.buf[:] = images[1]
    log = RetentionLog(d)
    assert log.newest == Point(1, 1_000_000_000)
    assert [s for s, *_ in retention.entries(d)] == [1, 1, 1, 1]
    # The redo saves record 2 again, and every point is still exact.
    images2 = run_workload(log, mirror, [[make_record(2, KIND_WRITE, 3, 7, rng)]])
    assert recovered(log, mirror, 0, 2) == images[0]
    assert recovered(log, mirror, 1, 2) == images2[1]
    log.close()


def test_records_already_saved_are_not_saved_again_after_a_crash(tmp_path):
    """The redo applies records whose before-images were durable before the crash: the
    first save (made before any mirror write) is the one kept."""
    rng = random.Random(2)
    mirror = MemMirror(BLOCKS * BS)
    log = RetentionLog(tmp_path / "retention")
    log.start(Point(0, 0))
    run = [make_record(1, KIND_WRITE, 0, 4, rng), make_record(2, KIND_WRITE, 2, 4, rng)]
    original = bytes(mirror.buf)
    log.save(mirror, run, BS)
    log.sync()
    apply_records(mirror, run[:1], BS)           # the crash came in the middle of the run
    assert log.save(mirror, run, BS) == 0        # redo: both are in the log already
    apply_records(mirror, run, BS)
    assert recovered(log, mirror, 0, 2) == original
    log.close()


def window(n_records: int, tmp_path, *, segment_bytes: int, record_blocks: int = 2,
           spacing_ns: int = 1_000_000_000) -> tuple[RetentionLog, MemMirror]:
    rng = random.Random(3)
    mirror = MemMirror(BLOCKS * BS)
    log = RetentionLog(tmp_path / "retention", segment_bytes=segment_bytes)
    log.start(Point(0, 1))
    for seq in range(1, n_records + 1):
        rec = WireRecord(seq, seq * spacing_ns, KIND_WRITE, (seq * 3) % (BLOCKS - 2),
                         record_blocks, rng.randbytes(record_blocks * BS))
        log.save(mirror, [rec], BS)
        log.sync()
        apply_records(mirror, [rec], BS)
    return log, mirror


def test_pruning_by_size_keeps_the_log_under_the_cap_and_drops_the_oldest(tmp_path):
    log, _ = window(100, tmp_path, segment_bytes=4096)
    total = log.size_bytes
    assert total > 100 * 1024
    removed = log.prune(retain_s=0, retain_bytes=32 * 1024)
    assert removed > 0 and log.size_bytes <= 32 * 1024
    oldest = log.oldest
    assert oldest.seq > 0 and log.newest.seq == 100
    with pytest.raises(RetentionError, match=f"seq 1 is outside the retention window; "
                                             f"recoverable: seq {oldest.seq} "):
        log.point_at(seq=1, newest=log.newest)
    assert log.point_at(seq=oldest.seq, newest=log.newest) == oldest
    log.close()


def test_pruning_by_age_keeps_every_point_of_the_window(tmp_path):
    log, mirror = window(100, tmp_path, segment_bytes=2048)   # record n stamped n seconds
    now = 100 * 1_000_000_000
    log.prune(retain_s=30, retain_bytes=0, now_ns=now)
    oldest = log.oldest
    # Every time of the last 30 s is recoverable, and not much more is kept.
    assert 0 < oldest.ts_ns <= now - 30 * 1_000_000_000
    assert oldest.seq >= 60
    assert log.point_at(ts_ns=now - 30 * 1_000_000_000, newest=log.newest).seq == 70
    with pytest.raises(RetentionError, match="is before the retention window; recoverable: "
                                             f"seq {oldest.seq} "):
        log.point_at(ts_ns=oldest.ts_ns - 1, newest=log.newest)
    log.close()


def test_a_pinned_point_is_not_pruned_until_released(tmp_path):
    log, _ = window(60, tmp_path, segment_bytes=2048)
    with log.pinned(5):
        log.prune(retain_s=0, retain_bytes=4096)
        assert log.oldest.seq <= 5
    log.prune(retain_s=0, retain_bytes=4096)
    assert log.oldest.seq > 5
    log.close()


def test_points_by_time_are_the_last_record_stamped_at_or_before_it(tmp_path):
    log, _ = window(20, tmp_path, segment_bytes=2048)     # record n at n seconds
    newest = log.newest
    s = 1_000_000_000
    assert log.point_at(ts_ns=7 * s, newest=newest) == Point(7, 7 * s)
    assert log.point_at(ts_ns=7 * s + 999, newest=newest) == Point(7, 7 * s)
    assert log.point_at(ts_ns=1, newest=newest) == Point(0, 1)       # the base
    assert log.point_at(ts_ns=99 * s, newest=newest) == newest
    # The mirror applied up to 12 so far: later records are not recoverable yet.
    assert log.point_at(ts_ns=15 * s, newest=Point(12, 12 * s)).seq == 12
    with pytest.raises(RetentionError, match="outside the retention window; recoverable: "
                                             "seq 0 .* to seq 12 "):
        log.point_at(seq=13, newest=Point(12, 12 * s))
    log.close()


def test_a_window_of_unknown_base_time_refuses_a_time_before_its_first_record(tmp_path):
    log = RetentionLog(tmp_path / "retention")
    log.start(Point(5, 0))
    mirror = MemMirror(BLOCKS * BS)
    rec = WireRecord(6, 10_000, KIND_WRITE, 0, 1, bytes(BS))
    log.save(mirror, [rec], BS)
    with pytest.raises(RetentionError, match="time of the oldest point .* is unknown"):
        log.point_at(ts_ns=9_999, newest=Point(6, 10_000))
    assert log.point_at(ts_ns=10_000, newest=Point(6, 10_000)).seq == 6
    log.close()


def test_clear_forgets_the_window_and_its_files(tmp_path):
    log, _ = window(10, tmp_path, segment_bytes=2048)
    epoch = log.epoch
    log.clear()
    assert log.oldest is None and log.newest is None and log.epoch == epoch + 1
    assert not list((tmp_path / "retention").iterdir())
    assert retention.read_summary(tmp_path / "retention") is None
    log.close()


def test_read_summary_of_a_closed_log(tmp_path):
    log, _ = window(10, tmp_path, segment_bytes=2048)
    log.close()
    summary = retention.read_summary(tmp_path / "retention")
    assert summary["oldest"] == {"seq": 0, "time": 1e-9,
                                 "time_utc": "1970-01-01T00:00:00.000001Z"}
    assert summary["newest"] == {"seq": 10, "time": 10.0,
                                 "time_utc": "1970-01-01T00:00:10.000000Z"}
    assert summary["segments"] > 1
