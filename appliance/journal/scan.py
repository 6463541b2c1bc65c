"""Reading the record area: segment probes, the binary searches, the chain walk.

Shared by the writer (recovery, redo) and the reader (the transmitter's process).
Positions are area blocks (0 = first block of segment 0). See docs/journal-format.md for
why a binary search over segment starts is sound: every segment starts with a record,
and the writer syncs everything before it enters a new segment.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from typing import Protocol

from appliance.journal.errors import JournalCorrupt
from appliance.journal.format import JBLOCK, Superblock, WriterCheckpoint, crc
from appliance.journal.model import OpKind, Record, WriteOp
from appliance.journal.placement import ChainPoint
from appliance.journal.records import RECORD_MAGIC, RecordKind, RecordMeta, parse_meta
from appliance.storage import BlockIO

DEFAULT_WINDOW_BLOCKS = 256  # 1 MiB per read while walking
# Pooled reads are sized in powers of two from this up, so that a few sizes fit every read
# again (the window grows 16 -> 64 -> 256 blocks; the last read of a segment is shorter).
_POOLED_MIN = 64 * 1024


class ReadBuffers(Protocol):
    """Where a walk's reads go instead of fresh memory (``replication.buffers.BufferPool``):
    ``take(n)`` returns a writable buffer of at least ``n`` bytes that nothing else refers
    to, and never hands out again a buffer that anything (a view of a record) still refers
    to. A fresh buffer costs a page fault and zeroing per page on first touch, about as much
    as the read itself (docs/protocol.md, "Data path")."""

    def take(self, need: int) -> mmap.mmap | bytearray: ...


class Area:
    """Reads of one journal's record area. A walk's reads (``read_window``) go into
    ``buffers`` when given (the transmitter's reader), else into fresh memory."""

    def __init__(self, io: BlockIO, sb: Superblock, buffers: ReadBuffers | None = None) -> None:
        self.io = io
        self.sb = sb
        self.segment_blocks = sb.segment_blocks
        self.segment_count = sb.segment_count
        self.buffers = buffers

    def read(self, block: int, count: int) -> bytearray:
        buf = bytearray(count * JBLOCK)
        self.io.pread_into(self.sb.block_offset(block), memoryview(buf))
        return buf

    def read_window(self, block: int, count: int) -> bytearray | memoryview:
        """``read``, into a reused buffer when the area has ``buffers`` (a view of exactly
        ``count`` blocks of it, which keeps it from being reused while held)."""
        if self.buffers is None:
            return self.read(block, count)
        nbytes = count * JBLOCK
        buf = self.buffers.take(max(_POOLED_MIN, 1 << (nbytes - 1).bit_length()))
        view = memoryview(buf)[:nbytes]
        self.io.pread_into(self.sb.block_offset(block), view)
        return view

    def parse(self, block_bytes: bytes | bytearray | memoryview, position: int
              ) -> RecordMeta | None:
        return parse_meta(block_bytes, self.sb.journal_uuid, position, self.sb.volume_block_size)

    def probe(self, segment: int) -> RecordMeta | None:
        """The record at the start of `segment` (one block read), if intact."""
        position = segment * self.segment_blocks
        return self.parse(self.read(position, 1), position)

    def segment_of(self, block: int) -> int:
        return block // self.segment_blocks

    def segment_end(self, block: int) -> int:
        return (block // self.segment_blocks + 1) * self.segment_blocks

    def byte_offset(self, block: int) -> int:
        return self.sb.block_offset(block)


def last_true(count: int, pred: Callable[[int], bool]) -> int:
    """Largest k in [0, count) with pred(k), for a pred true on a prefix (pred(0) assumed)."""
    lo, hi = 0, count - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def newest_segment(area: Area, anchor: WriterCheckpoint) -> tuple[int, RecordMeta | None]:
    """The segment holding the newest record, by binary search from the published anchor.

    Segments entered after the anchor start with a seq >= anchor.head_seq; every other
    segment starts with an older seq, a torn block, or was never written. Walking the
    circle from the segment of the last record before the anchor, that predicate is true
    on a prefix, so O(log m) probes find the last one. Returns (segment, its start
    record), or (the anchor's segment, None) when no segment was entered after the anchor.
    """
    total = area.segment_count * area.segment_blocks
    base = area.segment_of((anchor.head_block - 1) % total)
    probes: dict[int, RecordMeta | None] = {}

    def entered_after(step: int) -> bool:
        meta = probes[step] = area.probe((base + step) % area.segment_count)
        return (meta is not None and meta.kind == RecordKind.BATCH
                and meta.first_seq >= anchor.head_seq)

    last = last_true(area.segment_count, lambda step: step == 0 or entered_after(step))
    if last == 0:
        return base, None
    return (base + last) % area.segment_count, probes[last]


def segment_holding(area: Area, seq: int, newest: int
                    ) -> tuple[int, RecordMeta | None] | None:
    """The segment whose first record has the largest first seq <= `seq`, or None if every
    intact segment starts above `seq` (the records were overwritten). (segment, None) means
    the segment that should hold `seq` has no intact first record: damaged, if `seq` is
    still meant to be held.

    Circular order from the oldest segment (newest + 1) to the newest: first a run of
    segments with no intact start (never written, or torn while being entered), then
    ascending first seqs. "No intact start, or starts at or below seq" holds on a prefix.
    """
    probes: dict[int, RecordMeta | None] = {}
    newest_meta = area.probe(newest)
    # A segment start above the newest one is a leftover of a torn entry into a segment
    # (its metadata survived a power cut, its data did not): treat it as never written.
    limit = newest_meta.first_seq if newest_meta is not None else 2**64

    def at_or_below(step: int) -> bool:
        meta = probes[step] = area.probe((newest + 1 + step) % area.segment_count)
        return (meta is None or meta.kind != RecordKind.BATCH or meta.first_seq > limit
                or meta.first_seq <= seq)

    if not at_or_below(0):
        return None
    last = last_true(area.segment_count, lambda step: step == 0 or at_or_below(step))
    meta = probes[last]
    segment = (newest + 1 + last) % area.segment_count
    if meta is None or meta.kind != RecordKind.BATCH or meta.first_seq > limit:
        return segment, None
    return segment, meta


class Walker:
    """Follows the record chain from a point, validating every link and CRC.

    `next()` returns the next intact record (with its data) or None where the chain ends:
    a block that is not an intact metadata block, a seq or link that does not follow, a
    record that crosses its segment end, or data whose CRC does not match (`why` says
    which). PAD records are followed silently. Reads `window_blocks` at a time.
    """

    def __init__(self, area: Area, start: ChainPoint, *, check_first_link: bool = True,
                 window_blocks: int = DEFAULT_WINDOW_BLOCKS, pad_crc: int | None = None
                 ) -> None:
        self.area = area
        self.point = start
        self.check_link = check_first_link
        self.max_window = max(1, window_blocks)
        self.window = min(16, self.max_window)  # grows while reads stay sequential
        self.why = ""
        # Header CRC of a PAD just followed (`pad_crc`: one followed by an earlier walker
        # that stopped right after it). Writers before the PAD rule of
        # docs/journal-format.md ("a signpost, not a link") linked the next segment's first
        # record to the PAD; the PAD itself links to the last BATCH, so that chain is
        # unbroken too, and journals written that way must stay readable.
        self.pad_crc = pad_crc
        self._buf: bytearray | memoryview = bytearray()
        self._buf_start = 0

    def _view(self, block: int, count: int) -> memoryview:
        start = self._buf_start
        end = start + len(self._buf) // JBLOCK
        if not (start <= block and block + count <= end):
            # A new segment: probe it before reading ahead.
            if block % self.area.segment_blocks == 0:
                self.window = min(16, self.max_window)
            elif block == end:  # sequential: read ahead further, like the kernel does
                self.window = min(self.window * 4, self.max_window)
            seg_end = self.area.segment_end(block)
            want = min(seg_end - block, max(self.window, count))
            self._buf = self.area.read_window(block, want)
            self._buf_start = start = block
        lo = (block - start) * JBLOCK
        return memoryview(self._buf)[lo : lo + count * JBLOCK]

    def _continues_at(self, seg_end: int) -> bool:
        """Does the chain go on at the next segment's first block? (The PAD before it may be
        torn: the writer does not sync a PAD before entering the next segment.) Only a
        record linking to our last record qualifies, so no damaged BATCH is ever skipped:
        the next segment's first record would link to that BATCH instead."""
        point = self.point
        if not self.check_link or point.block % self.area.segment_blocks == 0:
            return False
        start = seg_end % (self.area.segment_count * self.area.segment_blocks)
        meta = self.area.parse(self._view(start, 1), start)
        if (meta is None or meta.kind != RecordKind.BATCH or meta.first_seq != point.seq
                or meta.prev_crc != point.prev_crc):
            return False
        self.point = ChainPoint(start, point.seq, point.prev_crc)
        return True

    def next(self) -> tuple[RecordMeta, memoryview] | None:
        while True:
            point = self.point
            if point.block >= self.area.segment_count * self.area.segment_blocks:
                point = self.point = ChainPoint(0, point.seq, point.prev_crc)
            meta = self.area.parse(self._view(point.block, 1), point.block)
            seg_end = self.area.segment_end(point.block)
            if meta is None or meta.first_seq != point.seq or (
                    self.check_link and meta.prev_crc != point.prev_crc
                    and meta.prev_crc != self.pad_crc):
                if self._continues_at(seg_end):
                    continue
                self.why = ("no intact metadata block" if meta is None else
                            f"record seq {meta.first_seq} does not follow seq {point.seq - 1} "
                            f"(stale or foreign record)")
                return None
            if meta.end_block > seg_end:
                self.why = "record crosses its segment end"
                return None
            if meta.kind == RecordKind.PAD:
                if meta.end_block != seg_end:
                    self.why = "padding record does not end at its segment end"
                    return None
                # PADs are not links: the next record links to the last BATCH record.
                self.point = ChainPoint(seg_end, point.seq, point.prev_crc if self.check_link
                                        else meta.prev_crc)
                self.check_link = True
                self.pad_crc = meta.header_crc
                continue
            data = self._view(point.block + 1, meta.record_blocks - 1)[: meta.data_bytes]
            if crc(data) != meta.data_crc:
                self.why = f"data of record seq {meta.first_seq} fails its CRC"
                return None
            self.check_link = True
            self.pad_crc = None
            self.point = ChainPoint(meta.end_block, meta.end_seq, meta.header_crc)
            return meta, data


def find_head(area: Area, anchor: WriterCheckpoint) -> tuple[ChainPoint, RecordMeta | None]:
    """Recover the head: binary search for the newest segment, then walk its chain.

    Returns the point after the last intact record, and that record's metadata (None if
    no record follows the anchor). Raises JournalCorrupt when a damaged record sits below
    records that were written after it had been synced (so it was durable once).
    """
    segment, start_meta = newest_segment(area, anchor)
    last = None
    if start_meta is not None:
        walker = Walker(area, ChainPoint(segment * area.segment_blocks, start_meta.first_seq,
                                         start_meta.prev_crc), window_blocks=area.segment_blocks)
        while (got := walker.next()) is not None:
            last = got[0]
    if last is None:
        # No segment entered since the anchor, or the newest one's first record is torn
        # (its metadata made it, its data did not): the chain ends where the walk from
        # the published anchor ends (everything before that segment was synced).
        walker = Walker(area, ChainPoint(anchor.head_block, anchor.head_seq, anchor.head_prev_crc),
                        window_blocks=area.segment_blocks)
        while (got := walker.next()) is not None:
            last = got[0]
    if walker.point.seq < anchor.head_seq:
        raise JournalCorrupt(
            f"record seq {walker.point.seq} is damaged ({walker.why}), but the writer had "
            f"published every seq below {anchor.head_seq} as durable",
            position=area.byte_offset(walker.point.block))
    _check_nothing_durable_beyond(area, walker.point, walker.why)
    return walker.point, last


def _check_nothing_durable_beyond(area: Area, head: ChainPoint, why: str) -> None:
    """Bounded forward scan past the head (rest of its segment, start of the next one): a
    record there that was written after seq `head.seq` had been synced proves that the
    record at the head was durable, so its damage is corruption, not a torn write."""
    total = area.segment_count * area.segment_blocks
    start = head.block % total
    seg_end = area.segment_end(start) if start % area.segment_blocks else start
    spans = [(start, seg_end), (seg_end % total, seg_end % total + 1)]
    for lo, hi in spans:
        if hi <= lo:
            continue
        buf = area.read(lo, hi - lo)
        view = memoryview(buf)
        pos = buf.find(RECORD_MAGIC)
        while pos >= 0:
            if pos % JBLOCK == 0:
                block = lo + pos // JBLOCK
                meta = area.parse(view[pos : pos + JBLOCK], block)
                if meta is not None and meta.first_seq >= head.seq and meta.synced_seq > head.seq:
                    raise JournalCorrupt(
                        f"record seq {head.seq} is damaged ({why}), but record seq "
                        f"{meta.first_seq} at area block {block} was written after seq "
                        f"{head.seq} had been synced; the journal lost durable data",
                        position=area.byte_offset(start))
            pos = buf.find(RECORD_MAGIC, pos + 1)


def records_of(meta: RecordMeta, data: memoryview, volume_block_size: int,
               from_seq: int = 0, *, views: bool = False) -> Iterator[Record]:
    """The writes of one record (those with seq >= from_seq), with their data as bytes, or
    with ``views`` as read-only views of ``data`` (no copy)."""
    if views:
        data = data.toreadonly()
    offset = 0
    for i, (kind, nblocks, lba) in enumerate(meta.entries):
        op_kind = OpKind(kind)
        length = (nblocks * volume_block_size if op_kind == OpKind.WRITE
                  else volume_block_size if op_kind == OpKind.WRITE_SAME else 0)
        seq = meta.first_seq + i
        if seq >= from_seq:
            payload = data[offset : offset + length]
            if not views:
                payload = bytes(payload)
            yield Record(seq, meta.timestamp_ns, WriteOp(op_kind, lba, nblocks, payload))
        offset += length
