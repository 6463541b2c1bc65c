"""The values the journal API exchanges: write operations, records and usage figures."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OpKind(enum.IntEnum):
    WRITE = 1  # data = nblocks * volume_block_size bytes
    WRITE_SAME = 2  # data = exactly one volume block, repeated over nblocks
    UNMAP = 3  # data = b"" ; the range reads back as zeros afterwards


@dataclass(frozen=True, slots=True)
class WriteOp:
    kind: OpKind
    lba: int
    nblocks: int
    data: bytes | memoryview = b""


@dataclass(frozen=True, slots=True)
class Record:
    """One write as stored in (and read back from) the journal."""

    seq: int  # 64-bit, monotonic, never reused once durable
    timestamp_ns: int
    op: WriteOp  # op.data is bytes here (a read-only view from JournalReader.read(views=True))


@dataclass(frozen=True, slots=True)
class JournalUsage:
    """How full the journal is. Space is reclaimed a segment at a time, so `bytes_held`
    counts from the start of the segment that holds the oldest unreclaimable record."""

    bytes_held: int
    records_held: int
    capacity_bytes: int
    percent: float
    high_water: bool  # percent >= high_water_percent
    high_water_percent: float
    next_seq: int
    tail_seq: int
    durable_seq: int  # every seq below this is on stable storage (published to readers)
    acked_seq: int
    mirror_durable_seq: int
