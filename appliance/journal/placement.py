"""Where the records of one batch go (a pure function of the head and the geometry), and the
chain point each record leaves for the next."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal.format import JBLOCK
from appliance.journal.model import Value, WriteOp
from appliance.journal.records import MAX_OPS_PER_RECORD, data_blocks


class Placement(Value):
    """One record of an append, placed: a PAD (ops empty) or a batch of writes."""

    __slots__ = ("block", "ops", "lengths", "record_blocks", "enters_segment")
    _fields = ("block", "ops", "lengths", "record_blocks", "enters_segment")

    def __init__(self, block: int, ops: Sequence[WriteOp], lengths: Sequence[int],
                 record_blocks: int, enters_segment: bool) -> None:
        self.block = block                    # area block of its metadata block
        self.ops = ops
        self.lengths = lengths
        self.record_blocks = record_blocks
        self.enters_segment = enters_segment  # first of a segment: all before must be durable


class ChainPoint(Value):
    """Where the next record of the chain goes, which seq it gets, what it links to."""

    __slots__ = ("block", "seq", "prev_crc")
    _fields = ("block", "seq", "prev_crc")

    def __init__(self, block: int, seq: int, prev_crc: int) -> None:
        self.block = block
        self.seq = seq
        self.prev_crc = prev_crc


def place_batch(ops: Sequence[WriteOp], lengths: Sequence[int], head_block: int,
                segment_blocks: int, total_blocks: int) -> list[Placement]:
    """Place a batch starting at `head_block`.

    A batch that fits in one segment never straddles two: it starts a fresh segment
    instead (after a PAD), because entering a segment while records before it are unsynced
    costs an fdatasync. Group commit (append, then sync) then needs one sync per batch.
    """
    in_segment = head_block % segment_blocks
    need = 1 + data_blocks(sum(lengths))
    if len(ops) <= MAX_OPS_PER_RECORD and in_segment + need <= segment_blocks:
        # The common case, one record in the rest of this segment: no per-write loop.
        return [Placement(head_block, ops, lengths, need, in_segment == 0)]
    plan = _pack(ops, lengths, head_block, segment_blocks, total_blocks)
    if in_segment and any(placed.enters_segment for placed in plan):
        room = segment_blocks - head_block % segment_blocks
        fresh = _pack(ops, lengths, (head_block + room) % total_blocks, segment_blocks,
                      total_blocks)
        if sum(placed.enters_segment for placed in fresh) == 1:
            plan = [Placement(head_block, (), (), room, False), *fresh]
    return plan


def _pack(ops: Sequence[WriteOp], lengths: Sequence[int], pos: int, segment_blocks: int,
          total: int) -> list[Placement]:
    """Records grow while they fit the rest of their segment; a write that fits no more
    closes the record, and a new record that does not fit the rest of the segment goes to
    the next one, after a PAD record."""
    plan: list[Placement] = []
    lo, size = 0, 0  # the open record: ops[lo:i], `size` data bytes, starting at pos

    def close(hi: int) -> None:
        nonlocal pos
        need = 1 + data_blocks(size)
        plan.append(Placement(pos, ops[lo:hi], lengths[lo:hi], need, pos % segment_blocks == 0))
        pos = (pos + need) % total

    # Data that still fits the open record:
    room_bytes = (segment_blocks - pos % segment_blocks - 1) * JBLOCK
    for i, length in enumerate(lengths):
        if i > lo and (i - lo >= MAX_OPS_PER_RECORD or size + length > room_bytes):
            close(i)
            lo, size = i, 0
            room_bytes = (segment_blocks - pos % segment_blocks - 1) * JBLOCK
        if (i == lo and pos % segment_blocks
                and 1 + data_blocks(length) > segment_blocks - pos % segment_blocks):
            room = segment_blocks - pos % segment_blocks
            plan.append(Placement(pos, (), (), room, False))
            pos = (pos + room) % total
            room_bytes = (segment_blocks - 1) * JBLOCK
        size += length
    close(len(ops))
    return plan
