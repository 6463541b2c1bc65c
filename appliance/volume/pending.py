"""Writes journaled but not yet on the mirror (flush policy ``on-flush``).

With the write cache on, the journal is synced only on FUA / SYNCHRONIZE CACHE / when this
set grows past a bound. Until then the write-ahead rule keeps the writes off the mirror, so
reads see them through this overlay. Once a command completes, the caller may reuse its
buffers (the TCMU ring) and the mirror write happens later, so the data cannot stay there.
A small write is copied here. A large one is not: the journal has just written it, so the
overlay keeps only where (a `JournalSpan`), reads it back from the journal's file, and the
commit has the kernel copy it to the mirror. Copying it here cost more than the sync it saves
(under TCG every byte copied in user space is an emulated `rep movsb`); the journal cannot
reuse that space before the mirror holds the write durably (its checkpoint), so the span
stays valid for as long as the op is pending.

Reads must not scan every pending op (thousands of cached writes would make each read cost
milliseconds), so the ops are indexed by *stripe* (a fixed run of blocks): a read looks only
at the stripes it covers, plus the few ops too wide to index (big WRITE SAME / UNMAP).
Ops are applied in arrival order, so the newest write wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from appliance.journal import OpKind, WriteOp
from appliance.volume import scatter
from appliance.volume.mirror import JournalSpan

if TYPE_CHECKING:
    from appliance.storage import BlockIO

STRIPE_BYTES: Final = 64 * 1024
# An op covering more stripes than this is kept in a short list every read checks instead
# (indexing a volume-wide UNMAP would cost a dict entry per stripe of the volume).
MAX_INDEXED_STRIPES: Final = 256
_UNMAP: Final = OpKind.UNMAP
_WRITE: Final = OpKind.WRITE


class PendingWrites:
    def __init__(self, block_size: int, journal: BlockIO | None = None,
                 reference_bytes: int | None = None) -> None:
        """`journal`: the journal's file; a WRITE of at least `reference_bytes` whose
        journal offset `add` is told is kept as a span of it instead of copied."""
        self._bs = block_size
        self._journal = journal
        self._reference_bytes = reference_bytes if journal is not None else None
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

    def add(self, ops: Sequence[WriteOp], last_seq: int,
            data_offsets: Sequence[int] | None = None) -> None:
        """Cache journaled ops (`data_offsets`: where the journal put each op's data, as
        `Journal.append` reports). Ops taken earlier may come back: spans stay spans."""
        # Runs for every cached host write: locals instead of repeated attribute lookups.
        shift, kept, by_stripe = self._shift, self._ops, self._by_stripe
        nbytes = self.nbytes
        offsets: Sequence[int] = () if data_offsets is None else data_offsets
        reference = self._reference_bytes if data_offsets is not None else None
        data: bytes | memoryview | JournalSpan
        for i, op in enumerate(ops):
            index = len(kept)
            kind, lba, nblocks, data = op.kind, op.lba, op.nblocks, op.data
            if kind is _UNMAP:
                data = b""
            elif isinstance(data, JournalSpan):
                pass
            elif reference is not None and kind is _WRITE and len(data) >= reference:
                data = JournalSpan(offsets[i], len(data))
            else:
                data = bytes(data)
            kept.append(WriteOp(kind, lba, nblocks, data))   # a span stands in for the data
            nbytes += data.length if isinstance(data, JournalSpan) else len(data)
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
        lists = [found for stripe in range(first, last + 1)
                 if (found := self._by_stripe.get(stripe)) is not None]
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
                if type(op.data) is JournalSpan:
                    assert self._journal is not None    # spans are made only with a journal
                    at = op.data.offset + src
                    for view, start in scatter.mirror_segments(bufs, dst, length):
                        self._journal.pread_into(at + start, view)
                else:
                    scatter.copy_in(bufs, dst, memoryview(op.data)[src:src + length])
            elif op.kind == OpKind.WRITE_SAME:
                scatter.fill_pattern(bufs, dst, length, op.data)
            else:
                scatter.fill_pattern(bufs, dst, length, b"\0")
