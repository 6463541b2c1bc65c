"""Where records go: packing, padding, and one fdatasync per group commit."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.journal import JournalCorrupt, OpKind, WriteOp
from appliance.journal.placement import _pack, place_batch
from tests.support.journaling import make_op, sim_journal
from tests.support.simdisk import SimMachine

S, TOTAL = 16, 16 * 8


def writes(count, blocks_each):
    """`count` WRITE ops of `blocks_each` journal blocks (4 KiB volume blocks)."""
    return [WriteOp(OpKind.WRITE, 0, blocks_each, b"")] * count, [blocks_each * 4096] * count


def shape(plan):
    return [(p.block, len(p.ops), p.record_blocks, p.enters_segment) for p in plan]


def test_a_batch_that_fits_the_rest_of_the_segment_stays():
    ops, lengths = writes(3, 2)
    assert shape(place_batch(ops, lengths, 5, S, TOTAL)) == [(5, 3, 7, False)]


def test_a_batch_that_fits_a_segment_moves_whole_to_the_next_one():
    ops, lengths = writes(3, 2)  # 7 blocks; only 5 left in segment 0
    assert shape(place_batch(ops, lengths, 11, S, TOTAL)) == [(11, 0, 5, False), (16, 3, 7, True)]


def test_a_batch_bigger_than_a_segment_fills_the_rest_first():
    ops, lengths = writes(4, 6)  # records of at most 15 data blocks
    assert shape(place_batch(ops, lengths, 4, S, TOTAL)) == [
        (4, 1, 7, False), (11, 0, 5, False), (16, 2, 13, True), (29, 0, 3, False),
        (32, 1, 7, True)]


def test_records_hold_at_most_248_writes_and_wrap_to_the_start():
    ops = [WriteOp(OpKind.UNMAP, 0, 1)] * 300
    plan = place_batch(ops, [0] * 300, TOTAL - 1, S, TOTAL)
    assert shape(plan) == [(TOTAL - 1, 0, 1, False), (0, 248, 1, True), (1, 52, 1, False)]


def test_group_commit_costs_one_fdatasync_per_batch():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 64 * 16, volume_blocks=4096)
    before = m.syncs["journal"]
    for batch in range(40):  # 40 batches of 9 blocks: they keep entering new segments
        j.append([make_op(OpKind.WRITE, i, 8, 512, batch * 8 + i) for i in range(8)])
        j.sync()
    assert j._head.block > 30 * 16
    assert m.syncs["journal"] - before == 40


def test_a_torn_padding_record_is_stepped_over_but_a_damaged_batch_is_not():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16, volume_blocks=4096)
    j.append([make_op(OpKind.WRITE, 0, 8 * 11, 512, 1)])  # seq 1: blocks 0..11
    j.sync()
    j.append([make_op(OpKind.WRITE, 0, 8 * 6, 512, 2)])  # seq 2: PAD at 12, record at 16
    j.sync()
    j.close()
    area = 8 * 4096
    f = m.open("journal")
    f.pwritev(area + 12 * 4096, [bytes(4096)])  # the PAD never made it
    f.sync()
    j = type(j).open(m.open("journal"))
    assert [r.seq for r in j.records(1)] == [1, 2]
    j.close()
    f = m.open("journal")
    f.pwritev(area + 0 * 4096 + 200, [b"\xff"])  # damage seq 1's metadata
    f.sync()
    j = type(j).open(m.open("journal"))
    assert [r.seq for r in j.records(2)] == [2]
    with pytest.raises(JournalCorrupt, match="seq 1 is still held"):
        list(j.records(1))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 6 * 4096).map(lambda n: n - n % 512), min_size=1,
                        max_size=260),
       head=st.integers(0, TOTAL - 1))
def test_the_one_record_shortcut_places_exactly_as_the_packer(lengths, head):
    """`place_batch` skips the per-write packer when the batch fits the rest of the
    segment as one record; the packer must agree wherever the shortcut is taken."""
    ops = [WriteOp(OpKind.WRITE, 0, 1, b"")] * len(lengths)
    packed = _pack(ops, lengths, head, S, TOTAL)
    placed = place_batch(ops, lengths, head, S, TOTAL)
    if len(packed) == 1:
        assert shape(placed) == shape(packed)
        assert list(placed[0].lengths) == lengths
    assert sum(len(p.ops) for p in placed) == len(ops)
