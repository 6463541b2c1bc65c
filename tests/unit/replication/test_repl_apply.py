"""In-order apply: gaps, duplicates and reordering never produce an out-of-order run."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.replication.dr.apply import (
    SeqOrderer,
    apply_record,
    apply_records,
    check_record,
    record_extents,
)
from appliance.replication.wire import WireRecord


def rec(seq: int, lba: int = 0, data: bytes = b"\0" * 512) -> WireRecord:
    return WireRecord(seq, 0, 1, lba, len(data) // 512, data)


def test_contiguous_run_is_released_in_order():
    o = SeqOrderer(next_seq=5)
    out = o.offer([rec(5), rec(6), rec(7)])
    assert [r.seq for r in out.run] == [5, 6, 7] and out.resend_from is None
    assert o.next_seq == 8


def test_gap_holds_records_and_asks_for_resend():
    o = SeqOrderer(next_seq=1)
    out = o.offer([rec(1), rec(3), rec(4)])
    assert [r.seq for r in out.run] == [1]
    assert out.resend_from == 2 and o.pending == 2
    out = o.offer([rec(2), rec(3)])
    assert [r.seq for r in out.run] == [2, 3, 4]
    assert out.resend_from is None and out.duplicates == 1 and o.pending == 0


def test_records_held_above_a_gap_do_not_pin_their_frame():
    """A received record's data is a view of its whole frame: the in-order run keeps the view
    (no copy), a record held above a gap gets its own bytes."""
    frame = bytes(range(256)) * 8                       # 2 KiB "frame", 4 records of 512
    views = [memoryview(frame)[i * 512:(i + 1) * 512] for i in range(4)]
    o = SeqOrderer(next_seq=1)
    out = o.offer([rec(1, data=views[0]), rec(3, data=views[2]), rec(4, data=views[3])])
    assert [r.data for r in out.run] == [views[0]] and out.run[0].data is views[0]
    out = o.offer([rec(2, data=views[1])])
    assert [r.seq for r in out.run] == [2, 3, 4]
    assert out.run[0].data is views[1]
    assert all(type(r.data) is bytes for r in out.run[1:])
    assert b"".join(bytes(r.data) for r in out.run) == frame[512:]


def test_duplicates_below_next_seq_are_ignored():
    o = SeqOrderer(next_seq=10)
    out = o.offer([rec(3), rec(9), rec(10), rec(10)])
    assert [r.seq for r in out.run] == [10] and out.duplicates == 3


def test_full_buffer_drops_and_keeps_asking():
    o = SeqOrderer(next_seq=1, max_pending=2)
    out = o.offer([rec(2), rec(3), rec(4)])
    assert out.run == [] and out.dropped == 2 and out.resend_from == 1
    out = o.offer([rec(1), rec(3)])      # 3 is still outside the window [1, 3)
    assert [r.seq for r in out.run] == [1, 2] and out.resend_from == 3
    out = o.offer([rec(3), rec(4)])
    assert [r.seq for r in out.run] == [3, 4] and out.resend_from is None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_any_delivery_order_with_resends_yields_exactly_the_sequence(n, seed):
    """Shuffle, duplicate and drop deliveries; resend on request; output is 1..n once each."""
    rng = random.Random(seed)
    o = SeqOrderer(next_seq=1, max_pending=8)
    out_seqs: list[int] = []
    wire_q = [rec(s) for s in range(1, n + 1) for _ in range(rng.randint(0, 2))]
    rng.shuffle(wire_q)
    for _ in range(10 * n + 10):
        if o.next_seq > n:
            break
        batch, wire_q = wire_q[:3], wire_q[3:]
        got = o.offer(batch)
        out_seqs += [r.seq for r in got.run]
        if got.resend_from is not None or not wire_q:
            wire_q += [rec(s) for s in range(o.next_seq, min(n, o.next_seq + 5) + 1)]
    assert out_seqs == list(range(1, n + 1))


class MemMirror:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def pwritev(self, offset, bufs):
        for b in bufs:
            self.buf[offset : offset + len(b)] = b
            offset += len(b)

    def sync(self):
        pass


def test_apply_write_write_same_and_unmap():
    m = MemMirror(512 * 16)
    apply_record(m, WireRecord(1, 0, 1, 2, 2, b"a" * 1024), 512)
    apply_record(m, WireRecord(2, 0, 2, 8, 3, b"b" * 512), 512)
    apply_record(m, WireRecord(3, 0, 3, 3, 6, b""), 512)
    assert m.buf[1024:1536] == b"a" * 512
    assert m.buf[1536:4608] == bytes(3072)
    assert m.buf[4608:5632] == b"b" * 1024
    assert m.buf[5632:] == bytes(512 * 5)


def test_check_record_refuses_out_of_range_and_wrong_lengths():
    import pytest

    with pytest.raises(ValueError, match="outside"):
        check_record(WireRecord(1, 0, 1, 15, 2, b"a" * 1024), 512, 16)
    with pytest.raises(ValueError, match="carries"):
        check_record(WireRecord(1, 0, 1, 0, 2, b"a" * 1000), 512, 16)
    with pytest.raises(ValueError, match="one block"):
        record_extents(WireRecord(1, 0, 2, 0, 2, b"a" * 1024), 512)


class CountingMirror(MemMirror):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.calls = 0

    def pwritev(self, offset, bufs):
        assert len(bufs) <= 1024, "more buffers than IOV_MAX"
        self.calls += 1
        super().pwritev(offset, bufs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 1, 1, 2, 3]), st.integers(0, 60),
                          st.integers(1, 600), st.integers(0, 255)), min_size=1, max_size=30))
def test_coalesced_apply_equals_record_by_record(ops):
    """Adjacent extents share a pwritev; overlapping ones still land in record order."""
    size_blocks = 700
    records = []
    for i, (kind, lba, nblocks, fill) in enumerate(ops):
        data = {1: bytes([fill]) * nblocks * 512, 2: bytes([fill]) * 512, 3: b""}[kind]
        records.append(WireRecord(i + 1, 0, kind, lba, nblocks, data))
    one_by_one, together = MemMirror(size_blocks * 512), CountingMirror(size_blocks * 512)
    for rec in records:
        one_by_one.pwritev(rec.lba * 512, record_extents(rec, 512))
    assert apply_records(together, records, 512) == sum(len(r.data) for r in records)
    assert together.buf == one_by_one.buf


def test_sequential_records_are_written_in_one_call():
    m = CountingMirror(512 * 64)
    recs = [WireRecord(i + 1, 0, 1, 4 * i, 4, bytes([i]) * 2048) for i in range(16)]
    apply_records(m, recs, 512)
    assert m.calls == 1
    assert all(m.buf[2048 * i : 2048 * (i + 1)] == bytes([i]) * 2048 for i in range(16))
