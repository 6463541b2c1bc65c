"""Writes journaled but not yet on the mirror (flush policy ``on-flush``).

With the write cache on, the journal is synced only on FUA / SYNCHRONIZE CACHE / when this
set grows past a bound. Until then the write-ahead rule keeps the writes off the mirror, so
reads see them through this overlay. The data is copied here: once a command completes the
caller may reuse its buffers (the TCMU ring), and the mirror write happens later.

Reads must not scan every pending op (thousands of cached writes would make each read cost
milliseconds), so the ops are indexed by *stripe* (a fixed run of blocks): a read looks only
at the stripes it covers, plus the few ops too wide to index (big WRITE SAME / UNMAP).
Ops are applied in arrival order, so the newest write wins.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal import OpKind, WriteOp
from appliance.volume import scatter

STRIPE_BYTES = 64 * 1024
# An op covering more stripes than this is kept in a short list every read checks instead
# (indexing a volume-wide UNMAP would cost a dict entry per stripe of the volume).
MAX_INDEXED_STRIPES = 256
_UNMAP = OpKind.UNMAP


class PendingWrites:
    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._shift = (STRIPE_BYTES // block_size).bit_length() - 1   # blocks per stripe, log2
        self._ops: list[WriteOp] = []
        self._by_stripe: dict[int, list[int]] = {}   # stripe -> indexes into _ops, ascending
        self._wide: list[int] = []                   # indexes of ops too wide to index
        self.nbytes = 0
        self.last_seq = 0
        self.examined = 0       # ops looked at by overlay() (tests: the work stays local)

    def __bool__(self) -> bool:
        return bool(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def add(self, ops: Sequence[WriteOp], last_seq: int) -> None:
        # Runs for every cached host write: locals instead of repeated attribute lookups.
        shift, kept, by_stripe = self._shift, self._ops, self._by_stripe
        nbytes = self.nbytes
        for op in ops:
            index = len(kept)
            kind, lba, nblocks = op.kind, op.lba, op.nblocks
            data = bytes(op.data) if kind is not _UNMAP else b""
            kept.append(WriteOp(kind, lba, nblocks, data))
            nbytes += len(data)
            first, last = lba >> shift, (lba + nblocks - 1) >> shift
            if last - first >= MAX_INDEXED_STRIPES:
                self._wide.append(index)
                continue
            for stripe in range(first, last + 1):
                found = by_stripe.get(stripe)
                if found is None:
                    by_stripe[stripe] = [index]
                else:
                    found.append(index)
        self.nbytes = nbytes
        self.last_seq = last_seq

    def take(self) -> list[WriteOp]:
        ops, self._ops, self.nbytes = self._ops, [], 0
        self._by_stripe, self._wide = {}, []
        return ops

    def _candidates(self, lba: int, end: int) -> list[int]:
        """Indexes of the ops that may overlap [lba, end), oldest first."""
        shift = self._shift
        first, last = lba >> shift, (end - 1) >> shift
        lists = [found for s in range(first, last + 1)
                 if (found := self._by_stripe.get(s)) is not None]
        if self._wide:
            lists.append(self._wide)
        if len(lists) <= 1:         # the usual cases: nothing there, or one stripe's list
            return lists[0] if lists else []
        return sorted({i for found in lists for i in found})

    def overlay(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        """Apply the pending writes that overlap [lba, lba+nblocks) to a mirror read."""
        bs = self._bs
        end = lba + nblocks
        ops = self._ops
        candidates = self._candidates(lba, end)
        self.examined += len(candidates)
        for index in candidates:
            op = ops[index]
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
