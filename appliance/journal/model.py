"""The values the journal API exchanges: write operations, records and usage figures."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class OpKind(enum.IntEnum):
    WRITE = 1  # data = nblocks * volume_block_size bytes
    WRITE_SAME = 2  # data = exactly one volume block, repeated over nblocks
    UNMAP = 3  # data = b"" ; the range reads back as zeros afterwards


class Value:
    """Base of the small value classes the write path makes per command or per batch
    (WriteOp, Placement, ChainPoint): written out instead of `@dataclass(frozen=True)`
    because a dataclass's generated __init__ stays interpreted code when its module is
    compiled (docs/compiled.md), while mypyc makes these constructors and attribute reads
    native. Like the frozen dataclasses they replace: compared, hashed and shown by
    `_fields`, and immutable by contract (nothing assigns after __init__)."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"


class WriteOp(Value):
    """One host write: two are made per write command (the command's, and the write cache's
    copy). `kind` is an OpKind and `data` any buffer (bytes, a memoryview, a bytearray, an
    array), both typed `Any`: whatever a caller hands reaches the checks
    (journal.records.check_ops, volume.requests.check_ops), which refuse it by name, and the
    OpKind member itself is kept (compiled, an `int` attribute would keep only the number, and
    `op.kind is OpKind.WRITE` would fail). Compiled, `lba` and `nblocks` must be ints when the
    op is made (TypeError)."""

    __slots__ = ("kind", "lba", "nblocks", "data")
    _fields = ("kind", "lba", "nblocks", "data")

    def __init__(self, kind: Any, lba: int, nblocks: int, data: Any = b"") -> None:
        self.kind = kind
        self.lba = lba
        self.nblocks = nblocks
        self.data = data


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
