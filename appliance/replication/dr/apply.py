"""Strict sequence ordering on the receiver, and applying records to a mirror.

``SeqOrderer`` is pure bookkeeping: it turns whatever arrives (in order, duplicated, with gaps,
reordered after a reconnect) into contiguous runs starting exactly at the next expected seq.
Records above a gap wait in a bounded buffer; the caller asks the primary to resend from the
gap. Nothing is ever handed out twice or out of order, which is what keeps the remote mirror a
prefix of the primary's write sequence.

``apply_records`` writes records' effects to a mirror through the BlockIO protocol, in order,
coalescing adjacent extents into one pwritev.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from appliance.replication.wire import (
    KIND_UNMAP,
    KIND_WRITE,
    KIND_WRITE_SAME,
    WireRecord,
)


@dataclass(slots=True)
class Offered:
    run: list[WireRecord]          # contiguous, starting at the previous next_seq
    resend_from: int | None        # a gap is open: ask the primary to resend from here
    duplicates: int = 0            # records ignored because we already had them
    dropped: int = 0               # records above the gap dropped because the buffer was full


@dataclass
class SeqOrderer:
    next_seq: int
    max_pending: int = 4096        # reorder window: seqs >= next_seq + max_pending are dropped
    _pending: dict[int, WireRecord] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, records: Iterable[WireRecord]) -> Offered:
        duplicates = dropped = 0
        added: list[int] = []
        for rec in records:
            if rec.seq < self.next_seq or rec.seq in self._pending:
                duplicates += 1
            elif rec.seq < self.next_seq + self.max_pending:
                self._pending[rec.seq] = rec
                added.append(rec.seq)
            else:
                dropped += 1   # beyond the reorder window; the resend brings it again
        run: list[WireRecord] = []
        while self.next_seq in self._pending:
            run.append(self._pending.pop(self.next_seq))
            self.next_seq += 1
        for seq in added:
            rec = self._pending.get(seq)
            if rec is not None and isinstance(rec.data, memoryview):
                # Held above a gap: its own copy, so that it does not keep the whole frame
                # it arrived in (a view) alive for as long as the gap lasts.
                self._pending[seq] = replace(rec, data=bytes(rec.data))
        resend = self.next_seq if self._pending or dropped else None
        return Offered(run, resend, duplicates, dropped)

    def reset(self, next_seq: int) -> None:
        """Forget buffered records (new session) and expect ``next_seq``."""
        self._pending.clear()
        self.next_seq = next_seq


class BlockWriter(Protocol):
    def pwritev(self, offset: int, bufs: list[bytes | memoryview]) -> None: ...
    def sync(self) -> None: ...


_ZERO_CHUNK = bytes(1 << 20)


def record_extents(rec: WireRecord, block_size: int) -> list[bytes | memoryview]:
    """The bytes a record leaves on the mirror at ``rec.lba * block_size``."""
    length = rec.nblocks * block_size
    if rec.kind == KIND_WRITE:
        if len(rec.data) != length:
            raise ValueError(f"record {rec.seq}: WRITE of {rec.nblocks} blocks carries "
                             f"{len(rec.data)} bytes")
        return [rec.data]
    if rec.kind == KIND_WRITE_SAME:
        if len(rec.data) != block_size:
            raise ValueError(f"record {rec.seq}: WRITE SAME must carry one block")
        return [rec.data] * rec.nblocks
    if rec.kind == KIND_UNMAP:
        full, rest = divmod(length, len(_ZERO_CHUNK))
        return [_ZERO_CHUNK] * full + ([memoryview(_ZERO_CHUNK)[:rest]] if rest else [])
    raise ValueError(f"record {rec.seq}: unknown kind {rec.kind}")


def check_record(rec: WireRecord, block_size: int, num_blocks: int) -> None:
    """Raise ValueError unless the record fits the volume (checked before anything is written)."""
    if rec.nblocks <= 0 or rec.lba < 0 or rec.lba + rec.nblocks > num_blocks:
        raise ValueError(f"record {rec.seq}: blocks {rec.lba}+{rec.nblocks} outside the "
                         f"volume of {num_blocks} blocks")
    record_extents(rec, block_size)


_MAX_IOV = 512                 # pwritev takes at most IOV_MAX (1024 on Linux) buffers
_MAX_WRITE = 8 << 20           # bytes per pwritev when records are coalesced


def apply_record(mirror: BlockWriter, rec: WireRecord, block_size: int) -> None:
    apply_records(mirror, [rec], block_size)


def apply_records(mirror: BlockWriter, records: list[WireRecord], block_size: int) -> int:
    """Write records to the mirror strictly in their order; return the data bytes applied.

    Records whose extents follow each other on the volume (a sequential stream) go out in
    one pwritev: the same bytes at the same offsets in the same order, with fewer system
    calls. A record that does not continue the previous extent starts a new write, so an
    overlapping later record still lands after the earlier one."""
    nbytes = 0
    start = end = -1
    pending: list[bytes | memoryview] = []
    pending_len = 0
    for rec in records:
        bufs = record_extents(rec, block_size)
        nbytes += len(rec.data)
        offset = rec.lba * block_size
        if pending and (offset != end or len(pending) + len(bufs) > _MAX_IOV
                        or pending_len >= _MAX_WRITE):
            mirror.pwritev(start, pending)
            pending, pending_len = [], 0
        if not pending:
            start = end = offset
        for i in range(0, len(bufs), _MAX_IOV):
            chunk = bufs[i : i + _MAX_IOV]
            size = sum(len(b) for b in chunk)
            if len(pending) + len(chunk) > _MAX_IOV:
                mirror.pwritev(start, pending)
                pending, pending_len, start = [], 0, end
            pending.extend(chunk)
            pending_len += size
            end += size
    if pending:
        mirror.pwritev(start, pending)
    return nbytes
