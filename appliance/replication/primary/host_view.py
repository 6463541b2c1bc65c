"""The primary's image as the host reads it, for verify and the resync's region reads.

With the write cache on (flush policy ``on-flush``, docs/volume.md) a small write is journaled,
and so shipped, at once, but reaches the mirror file only at the next FUA, SYNCHRONIZE CACHE
or bound: until then the handler serves it from its in-memory overlay, which this process
cannot see. A region read from the mirror file alone can therefore lack writes that the DR has
applied and acknowledged: verify would report it as differing, and a repair would put the
older bytes back on the DR, where no record would ever correct them (the records were
acknowledged already).

So regions are read as the host sees them at a journal head ``H``:

1. note the writer's published mirror checkpoint ``M``: every record ``<= M`` is on the
   mirror (the writer publishes it only after fdatasyncing the mirror that holds them);
2. read the regions from the mirror file;
3. read the journal from ``M + 1`` to its end; ``H`` is the last seq (the reader fdatasyncs
   records the writer has not synced yet, as it does before shipping them);
4. apply the records of ``(M, H]`` that touch the regions over the mirror bytes, in seq
   order, through the same overlay the handler serves its reads with (``PendingWrites``).

Why that is the image after every record ``<= H``: a write reaches the mirror only after its
record is durable in the journal (the write-ahead rule), and in seq order. So a block read in
step 2 holds either the newest record ``<= M`` that wrote it, or what some record above ``M``
wrote there (possibly torn by a write racing the read) — and that record was journaled before
step 3 began, because its mirror write had begun before step 2 ended, so it is in ``(M, H]``.
Step 4 rewrites every block a record of ``(M, H]`` wrote with the newest of them; every other
block was last written by a record ``<= M``, which the mirror held since step 1. The journal
reclaims only records at or below the checkpoint, so those of step 3 are still there unless
the writer moved ``M`` on meanwhile; then the read starts over.

Writes logged to the bitmap have no record: the writer puts them on the mirror at once (it
keeps no overlay in that mode), so they are read as they are, and the bitmap resync ships
their chunks. While it logs, ``M`` is its last journaled seq (entering that mode checkpoints
the mirror), so ``(M, H]`` is empty and a read is the mirror's: the bitmap resync, which reads
only while chunks are dirty, i.e. while the writer logs, gets exactly what it got before.

Cost: the records of ``(M, H]`` are indexed once (seq and blocks) and the index is kept
across reads (dropping what falls to the checkpoint), so a verify of the whole volume reads
each new record once, and again only the data of records that touch a region read later.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from appliance.journal import JournalCorrupt, Record, RecordsGone, WriteOp
from appliance.volume.pending import PendingWrites

if TYPE_CHECKING:
    from appliance.journal import JournalReader
    from appliance.storage import BlockIO

_ATTEMPTS = 5               # reads started over because the writer reclaimed under them
_READ_BYTES = 4 << 20       # journal bytes per scan call
_FETCH_BYTES = 256 << 10    # per re-read (the records wanted are usually few and apart)


class Spans:
    """Sorted, merged block ranges [lo, hi) of the regions read, to test records against."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._starts = [lo for lo, _ in merged]
        self._ends = [hi for _, hi in merged]
        self.lo = self._starts[0] if merged else 0
        self.hi = self._ends[-1] if merged else 0

    def touches(self, lo: int, hi: int) -> bool:
        if hi <= self.lo or lo >= self.hi:
            return False
        i = bisect.bisect_left(self._starts, hi) - 1     # last span starting below hi
        return i >= 0 and self._ends[i] > lo


class HostView:
    """Reads regions of the primary's image as the host sees them (module docstring).
    Thread-safe; owns the journal readers it opens with ``open_reader``, not ``mirror``."""

    def __init__(self, mirror: BlockIO, open_reader: Callable[[], JournalReader]) -> None:
        self._mirror = mirror
        self._open_reader = open_reader
        self._lock = threading.Lock()
        # Two readers: one only ever reads on at the end of the journal (its position stays
        # there), the other re-reads older records that touch a later read.
        self._scan: JournalReader | None = None
        self._fetch: JournalReader | None = None
        self._index: list[tuple[int, int, int]] = []    # (seq, first block, end block)
        self._indexed_to = 0                            # last seq in the index's range
        self.records_applied = 0                        # (tests: the overlay was used)

    def close(self) -> None:
        with self._lock:
            for reader in (self._scan, self._fetch):
                if reader is not None:
                    reader.close()
            self._scan = self._fetch = None

    def read(self, regions: Sequence[tuple[int, int]]) -> tuple[list[bytes], int]:
        """The bytes of each (offset, length) region, and the journal head ``H`` they are
        the image at: the peer holds the same bytes once it has applied every seq ``<= H``."""
        with self._lock:
            if self._scan is None or self._fetch is None:
                self._scan, self._fetch = self._open_reader(), self._open_reader()
            bs = self._scan.sb.volume_block_size
            for offset, length in regions:
                if offset % bs or length % bs:
                    raise ValueError(f"region ({offset}, {length}) is not in whole blocks of "
                                     f"{bs} bytes")
            spans = Spans([(o // bs, (o + n) // bs) for o, n in regions])
            for attempt in range(_ATTEMPTS):
                mark = self._scan.writer_checkpoint().mirror_durable_seq
                datas = [self._read_mirror(offset, length) for offset, length in regions]
                try:
                    head, ops = self._records_touching(spans, mark)
                except (RecordsGone, JournalCorrupt):
                    # The writer moved its checkpoint on and reclaimed what we read after
                    # ``mark``: the mirror holds those records now, so read again. If the
                    # checkpoint did not move, the journal is damaged: say so.
                    if (attempt == _ATTEMPTS - 1 or
                            self._scan.writer_checkpoint().mirror_durable_seq == mark):
                        raise
                    continue
                self._apply(ops, head, regions, datas, bs)
                return [bytes(d) for d in datas], head
        raise AssertionError("unreachable")     # (the last attempt returns or raises)

    def _read_mirror(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self._mirror.pread_into(offset, memoryview(buf))
        return buf

    def _records_touching(self, spans: Spans, mark: int) -> tuple[int, list[WriteOp]]:
        """Journal head, and the writes of (mark, head] that touch ``spans``, in order."""
        try:
            return self._scan_and_fetch(spans, mark)
        except BaseException:
            self._index.clear()         # it may be incomplete now: index again next time
            self._indexed_to = 0
            raise

    def _scan_and_fetch(self, spans: Spans, mark: int) -> tuple[int, list[WriteOp]]:
        index = self._index
        del index[:bisect.bisect_right(index, (mark, 1 << 62, 0))]    # on the mirror now
        self._indexed_to = max(self._indexed_to, mark)
        older = [seq for seq, lo, hi in index if spans.touches(lo, hi)]
        fresh: list[WriteOp] = []
        assert self._scan is not None
        while batch := self._scan.read(self._indexed_to + 1, _READ_BYTES, views=True):
            for record in batch:
                op = record.op
                index.append((record.seq, op.lba, op.lba + op.nblocks))
                if spans.touches(op.lba, op.lba + op.nblocks):
                    fresh.append(_own(record))
            self._indexed_to = batch[-1].seq
        return self._indexed_to, self._fetch_records(older) + fresh

    def _fetch_records(self, seqs: list[int]) -> list[WriteOp]:
        """The writes of these seqs (ascending), read again."""
        assert self._fetch is not None
        wanted, got = set(seqs), {}
        for seq in seqs:
            if seq in got:
                continue
            for record in self._fetch.read(seq, _FETCH_BYTES, views=True):
                if record.seq in wanted:
                    got[record.seq] = _own(record)
            if seq not in got:
                raise RecordsGone(f"the journal no longer holds seq {seq} where it did")
        return [got[seq] for seq in seqs]

    def _apply(self, ops: list[WriteOp], head: int, regions: Sequence[tuple[int, int]],
               datas: list[bytearray], bs: int) -> None:
        if not ops:
            return
        overlay = PendingWrites(bs)
        overlay.add(ops, head)
        for (offset, length), data in zip(regions, datas, strict=True):
            overlay.overlay(offset // bs, length // bs, [memoryview(data)])
        self.records_applied += len(ops)


def _own(record: Record) -> WriteOp:
    """The write with its data copied out of the reader's buffer (a view keeps the whole
    read of up to ``_READ_BYTES`` alive; the overlay would copy it anyway)."""
    op = record.op
    return WriteOp(op.kind, op.lba, op.nblocks, bytes(op.data))
