"""Writes journaled but not yet on the mirror (flush policy ``on-flush``).

With the write cache on, the journal is synced only on FUA / SYNCHRONIZE CACHE / when this
set grows past a bound. Until then the write-ahead rule keeps the writes off the mirror, so
reads see them through this overlay. The data is copied here: once a command completes the
caller may reuse its buffers (the TCMU ring), and the mirror write happens later.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal import OpKind, WriteOp
from appliance.volume import scatter


class PendingWrites:
    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._ops: list[WriteOp] = []
        self.nbytes = 0
        self.last_seq = 0
        self._lo = self._hi = 0         # block range the pending writes cover (quick reject)

    def __bool__(self) -> bool:
        return bool(self._ops)

    def add(self, ops: Sequence[WriteOp], last_seq: int) -> None:
        for op in ops:
            if not self._ops:
                self._lo, self._hi = op.lba, op.lba + op.nblocks
            self._lo, self._hi = min(self._lo, op.lba), max(self._hi, op.lba + op.nblocks)
            data = bytes(op.data) if op.kind != OpKind.UNMAP else b""
            self._ops.append(WriteOp(op.kind, op.lba, op.nblocks, data))
            self.nbytes += len(data)
        self.last_seq = last_seq

    def take(self) -> list[WriteOp]:
        ops, self._ops, self.nbytes = self._ops, [], 0
        return ops

    def overlay(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        """Apply the pending writes that overlap [lba, lba+nblocks) to a mirror read."""
        bs = self._bs
        end = lba + nblocks
        if end <= self._lo or lba >= self._hi:
            return
        for op in self._ops:
            lo, hi = max(lba, op.lba), min(end, op.lba + op.nblocks)
            if lo >= hi:
                continue
            dst, length = (lo - lba) * bs, (hi - lo) * bs
            if op.kind == OpKind.WRITE:
                src = (lo - op.lba) * bs
                scatter.copy_in(bufs, dst, memoryview(op.data)[src:src + length])
            elif op.kind == OpKind.WRITE_SAME:
                scatter.fill_pattern(bufs, dst, length, op.data)
            else:
                scatter.fill_pattern(bufs, dst, length, b"\0")
