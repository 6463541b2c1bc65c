"""The local mirror: applying write ops to it and reading from it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from appliance.journal import OpKind, WriteOp
from appliance.storage import copy_range
from appliance.volume import scatter

if TYPE_CHECKING:
    from appliance.storage import BlockIO

_ZEROS: Final = bytes(1 << 20)     # immutable: shared source for UNMAP writes
_MAX_IOV: Final = 1024


@dataclass(frozen=True, slots=True)
class JournalSpan:
    """The data of a cached WRITE, left where the journal wrote it: `length` bytes at
    `offset` in the journal's file (the overlay's op carries this instead of bytes)."""

    offset: int
    length: int


class Mirror:
    """Block-addressed I/O on the mirror file or device."""

    def __init__(self, io: BlockIO, block_size: int, num_blocks: int) -> None:
        self.io = io
        self.block_size = block_size
        self.num_blocks = num_blocks

    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        base = lba * self.block_size
        if len(bufs) == 1:          # one buffer of exactly the read (the caller checked)
            self.io.pread_into(base, bufs[0])
            return
        for view, start in scatter.mirror_segments(bufs, 0, nblocks * self.block_size):
            self.io.pread_into(base + start, view)

    def apply(self, ops: Iterable[WriteOp], journal: BlockIO | None = None) -> int:
        """Write the ops in order; adjacent WRITEs go out as one pwritev, a WRITE whose data
        is a `JournalSpan` is copied from `journal` by the kernel. Returns bytes."""
        bs = self.block_size
        run_bufs: list[bytes | memoryview] = []
        run_off, run_len = 0, 0
        moved = 0
        for op in ops:
            off = op.lba * bs
            moved += op.nblocks * bs
            if op.kind == OpKind.WRITE and type(op.data) is not JournalSpan:
                if run_bufs and off == run_off + run_len and len(run_bufs) < _MAX_IOV:
                    run_bufs.append(op.data)
                else:
                    if run_bufs:
                        self.io.pwritev(run_off, run_bufs)
                    run_off, run_bufs, run_len = off, [op.data], 0
                run_len += op.nblocks * bs
                continue
            if run_bufs:
                self.io.pwritev(run_off, run_bufs)
                run_bufs, run_len = [], 0
            if op.kind == OpKind.WRITE:
                if journal is None:
                    raise ValueError(f"the WRITE at block {op.lba} is a span of the journal's "
                                     f"file, and no journal was given to copy it from")
                copy_range(journal, op.data.offset, self.io, off, op.data.length)
            elif op.kind == OpKind.WRITE_SAME:
                self._write_same(off, op.nblocks, memoryview(op.data))
            else:
                self.zero(off, op.nblocks * bs)
        if run_bufs:
            self.io.pwritev(run_off, run_bufs)
        return moved

    def _write_same(self, off: int, nblocks: int, block: memoryview) -> None:
        done = 0
        while done < nblocks:
            count = min(_MAX_IOV, nblocks - done)
            self.io.pwritev(off + done * self.block_size, [block] * count)
            done += count

    def zero(self, off: int, length: int) -> None:
        """Write zeros over [off, off+length) from one shared buffer (no sync)."""
        zeros = memoryview(_ZEROS)
        step = len(_ZEROS) * 16
        done = 0
        while done < length:
            count = min(step, length - done)
            full, rest = divmod(count, len(_ZEROS))
            bufs = [zeros] * full + ([zeros[:rest]] if rest else [])
            self.io.pwritev(off + done, bufs)
            done += count

    def sync(self) -> None:
        self.io.sync()

    def close(self) -> None:
        self.io.close()
