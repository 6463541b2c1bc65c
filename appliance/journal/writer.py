"""The journal writer: create, recover, append batches, sync, checkpoint, redo.

One writer per journal file (it takes an exclusive flock when given a path). The
transmitter reads the same file from its own process with `JournalReader`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from appliance.journal.errors import (
    InvalidRequest,
    JournalCorrupt,
    JournalFull,
    JournalMismatch,
    RecordsGone,
)
from appliance.journal.format import (
    FORMAT_VERSION,
    HEADER_BLOCKS,
    JBLOCK,
    MAX_SEQ,
    MIN_JOURNAL_BYTES,
    SUPERBLOCK_BLOCKS,
    TRANSMITTER_SLOT_BLOCKS,
    Superblock,
    TransmitterCheckpoint,
    WriterCheckpoint,
    choose_segment_blocks,
    crc,
    decode_superblock,
    encode_superblock,
)
from appliance.journal.header import (
    Target,
    load_superblock,
    open_target,
    read_header,
    read_slot_blocks,
    read_transmitter_slot,
    read_writer_slot,
    write_transmitter_slot,
    write_writer_slot,
)
from appliance.journal.model import JournalUsage, Record, WriteOp
from appliance.journal.records import (
    MAX_OPS_PER_RECORD,
    RecordKind,
    check_ops,
    data_blocks,
    encode_meta,
)
from appliance.journal.scan import (
    Area,
    ChainPoint,
    Walker,
    find_head,
    records_of,
    segment_holding,
)
from appliance.storage import BlockIO, open_file

_ZERO_BLOCK = bytes(JBLOCK)


@dataclass(slots=True)
class _Planned:
    """One record of an append, placed: a PAD (ops empty) or a batch of writes."""

    block: int
    ops: Sequence[WriteOp]
    lengths: Sequence[int]
    record_blocks: int
    enters_segment: bool  # first record of a segment: everything before must be synced


class Journal:
    """The writer side of one journal file."""

    high_water_percent: float = 80.0

    def __init__(self, io: BlockIO, sb: Superblock) -> None:
        """Use `create` or `open`."""
        self._io = io
        self.sb = sb
        self._area = Area(io, sb)
        self._total = sb.area_blocks
        header = read_header(io)
        self._writer_gen, anchor = read_writer_slot(header, sb)
        self._tx_gen, tx = read_transmitter_slot(header, sb)
        self._acked = tx.acked_seq
        head, _ = find_head(self._area, anchor)
        self._head = ChainPoint(head.block % self._total, head.seq, head.prev_crc)
        self._mirror = self._mirror_on_disk = anchor.mirror_durable_seq
        # What we recovered may sit only in the page cache (a process crash): make it
        # durable before publishing it, so readers never see what a power cut could take.
        self._io.sync()
        self._durable = self._head
        self._unsynced = False
        self._publish()
        self._tail_cache: tuple[int, int] | None = None  # (tail seq, its segment)

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    def create(cls, path: Target, *, size: int, volume_uuid: uuid.UUID, volume_block_size: int,
               volume_blocks: int, first_seq: int = 1, segment_size: int | None = None
               ) -> Journal:
        """Lay out a new, empty journal of `size` bytes. Refuses to overwrite a journal.

        `segment_size` (bytes, a multiple of 4096) bounds the largest single write; by
        default 8 MiB, shrunk for small journals so that there are at least 8 segments.
        """
        total_blocks = size // JBLOCK if isinstance(size, int) else 0
        if total_blocks * JBLOCK < MIN_JOURNAL_BYTES:
            raise InvalidRequest(f"journal size {size} is below the minimum of "
                                 f"{MIN_JOURNAL_BYTES} bytes; give it more space")
        if volume_block_size not in (512, 1024, 2048, 4096):
            raise InvalidRequest(f"volume block size {volume_block_size} is not supported; "
                                 f"use 512 or 4096")
        if not isinstance(volume_blocks, int) or volume_blocks < 1:
            raise InvalidRequest(f"volume_blocks must be a positive integer, not {volume_blocks!r}")
        if not 1 <= first_seq <= MAX_SEQ // 2:
            raise InvalidRequest(f"first_seq must be in 1..{MAX_SEQ // 2}, not {first_seq}")
        if segment_size is not None and segment_size % JBLOCK:
            raise InvalidRequest(f"segment size {segment_size} is not a multiple of {JBLOCK}")
        try:
            seg_blocks = choose_segment_blocks(
                total_blocks, None if segment_size is None else segment_size // JBLOCK)
        except ValueError as err:
            raise InvalidRequest(str(err)) from err
        seg_count = (total_blocks - HEADER_BLOCKS) // seg_blocks
        io = _create_target(path, total_blocks * JBLOCK)
        try:
            sb = Superblock(uuid.uuid4(), volume_uuid, volume_block_size, volume_blocks,
                            HEADER_BLOCKS + seg_count * seg_blocks, seg_blocks, seg_count,
                            first_seq, time.time_ns())
            io.pwritev(0, [encode_superblock(sb)] * len(SUPERBLOCK_BLOCKS))
            start = WriterCheckpoint(first_seq - 1, first_seq, 0, 0)
            for gen in (1, 2):  # both copies valid from the start
                write_writer_slot(io, sb, gen, start)
                write_transmitter_slot(io, sb, gen, TransmitterCheckpoint(first_seq - 1))
            io.pwritev(6 * JBLOCK, [_ZERO_BLOCK, _ZERO_BLOCK])
            io.sync()
            return cls(io, sb)
        except BaseException:
            io.close()
            raise

    @classmethod
    def open(cls, path: Target, *, volume_uuid: uuid.UUID | None = None) -> Journal:
        """Recover (find head and tail) and return the writer. Raises JournalError subclasses."""
        io = open_target(path, lock=True)
        try:
            sb = load_superblock(io, read_header(io), volume_uuid)
            return cls(io, sb)
        except BaseException:
            io.close()
            raise

    def close(self) -> None:
        if self._io is not None:
            try:
                self.sync()
                if self._published != self._durable or self._slot_dirty:
                    self._publish()  # a clean close leaves the exact head in the slot
                    self._io.sync()
            finally:
                io, self._io = self._io, None
                io.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- properties -------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._head.seq

    @property
    def durable_seq(self) -> int:
        """Every seq below this is on stable storage (and published to readers)."""
        return self._durable.seq

    @property
    def mirror_durable_seq(self) -> int:
        return self._mirror

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def tail_seq(self) -> int:
        """Oldest seq still held: the peer lacks it, or the mirror may lack it."""
        return min(max(min(self._acked, self._mirror) + 1, self.sb.first_seq), self._head.seq)

    @property
    def volume_uuid(self) -> uuid.UUID:
        return self.sb.volume_uuid

    @property
    def max_op_bytes(self) -> int:
        """Payload of the largest single write (one segment minus its metadata block)."""
        return self.sb.max_op_data_blocks * JBLOCK

    @property
    def max_batch_bytes(self) -> int:
        """Payload one `append` always accepts: it may span all but two segments, and each
        segment holds at least half a segment of payload (records never straddle one)."""
        return (self.sb.segment_count - 2) * (self.sb.segment_blocks // 2 - 1) * JBLOCK

    # --- appending --------------------------------------------------------------------

    def append(self, ops: Sequence[WriteOp]) -> range:
        """Write a batch (one metadata block per <= 248 writes, plus data; no fdatasync,
        except once before entering each new segment). Returns the seqs given.

        Raises InvalidRequest or JournalFull, writing nothing.
        """
        self._check_open()
        lengths = check_ops(ops, self.sb)
        first = self._head.seq
        if not ops:
            return range(first, first)
        plan = self._plan(ops, lengths)
        if sum(p.enters_segment for p in plan) > self.sb.segment_count - 2:
            raise InvalidRequest(f"a batch of {sum(lengths)} bytes needs more than "
                                 f"{self.sb.segment_count - 2} of the journal's segments; split "
                                 f"it (at most {self.max_batch_bytes} bytes always fit)")
        for planned in plan:
            if planned.enters_segment and not self._segment_free(planned.block // self.sb.segment_blocks):
                raise JournalFull(
                    f"journal full: appending {len(ops)} writes would overwrite records not "
                    f"yet acknowledged by the peer and on the mirror (tail seq {self.tail_seq}, "
                    f"acked {self._acked}, mirror durable {self._mirror_on_disk})")
        self._write(plan, time.time_ns())
        return range(first, self._head.seq)

    def _plan(self, ops: Sequence[WriteOp], lengths: Sequence[int]) -> list[_Planned]:
        """Place the batch. A batch that fits in one segment never straddles two: it
        starts a fresh segment instead (after a PAD), because entering a segment with
        unsynced records costs an fdatasync. Group commit then needs one sync per batch."""
        pos = self._head.block
        plan = self._pack(ops, lengths, pos)
        S = self.sb.segment_blocks
        if pos % S and any(p.enters_segment for p in plan):
            room = S - pos % S
            fresh = self._pack(ops, lengths, (pos + room) % self._total)
            if sum(p.enters_segment for p in fresh) == 1:
                plan = [_Planned(pos, (), (), room, False), *fresh]
        return plan

    def _pack(self, ops: Sequence[WriteOp], lengths: Sequence[int], pos: int
              ) -> list[_Planned]:
        """Records grow while they fit the rest of their segment; a write that fits no
        more closes the record, and a new record that does not fit the rest of the
        segment goes to the next one, after a PAD record."""
        S = self.sb.segment_blocks
        plan: list[_Planned] = []
        lo, size = 0, 0  # the open record: ops[lo:i], `size` data bytes, starting at pos

        def close(hi: int) -> None:
            nonlocal pos
            need = 1 + data_blocks(size)
            plan.append(_Planned(pos, ops[lo:hi], lengths[lo:hi], need, pos % S == 0))
            pos = (pos + need) % self._total

        for i, length in enumerate(lengths):
            if i > lo and (i - lo >= MAX_OPS_PER_RECORD
                           or 1 + data_blocks(size + length) > S - pos % S):
                close(i)
                lo, size = i, 0
            if i == lo and pos % S and 1 + data_blocks(length) > S - pos % S:
                room = S - pos % S
                plan.append(_Planned(pos, (), (), room, False))
                pos = (pos + room) % self._total
            size += length
        close(len(ops))
        return plan

    def _segment_free(self, segment: int) -> bool:
        """May the writer enter `segment`? Only if every record in it is reclaimable."""
        last = self._last_seq_in(segment)
        if last is None or last <= self._reclaimable():
            return True
        self._refresh_acked()
        if self._mirror > self._mirror_on_disk:  # make the mirror checkpoint count
            self._publish()
            self._io.sync()
            self._slot_dirty = False
            self._mirror_on_disk = self._mirror
        return last <= self._reclaimable()

    def _last_seq_in(self, segment: int) -> int | None:
        """The newest seq the old content of `segment` holds (None: nothing held)."""
        start = self._area.probe(segment)
        if start is None or start.kind != RecordKind.BATCH or start.first_seq >= self._head.seq:
            return None
        following = self._area.probe((segment + 1) % self.sb.segment_count)
        if (following is not None and following.kind == RecordKind.BATCH
                and start.first_seq < following.first_seq <= self._head.seq):
            return following.first_seq - 1
        walker = Walker(self._area, ChainPoint(start.position, start.first_seq, 0),
                        check_first_link=False, window_blocks=self.sb.segment_blocks)
        while walker.next() is not None and walker.point.block % self.sb.segment_blocks:
            pass
        return walker.point.seq - 1

    def _reclaimable(self) -> int:
        return min(self._acked, self._mirror_on_disk)

    def _write(self, plan: list[_Planned], timestamp_ns: int) -> None:
        bufs: list[bytes | memoryview] = []
        run_start = plan[0].block
        head = self._head
        for planned in plan:
            if planned.enters_segment:
                if bufs or self._unsynced:  # the segment rule: all before it is durable
                    if bufs:
                        self._io.pwritev(self.sb.block_offset(run_start), bufs)
                        bufs = []
                    self._head = head
                    self._unsynced = True
                    self.sync()
                self._publish()  # keeps the recovery anchor within a segment of the head
            if not bufs:
                run_start = planned.block
            head = self._emit(planned, head, timestamp_ns, bufs)
        if bufs:
            self._io.pwritev(self.sb.block_offset(run_start), bufs)
        self._head = head
        self._unsynced = True

    def _emit(self, planned: _Planned, head: ChainPoint, timestamp_ns: int,
              bufs: list[bytes | memoryview]) -> ChainPoint:
        """Append the buffers of one record to `bufs`; return the chain point after it."""
        if not planned.ops:
            meta, header_crc = encode_meta(
                journal_uuid=self.sb.journal_uuid, kind=RecordKind.PAD, first_seq=head.seq,
                position=planned.block, record_blocks=planned.record_blocks,
                timestamp_ns=timestamp_ns, tail_seq=self.tail_seq,
                synced_seq=self._durable.seq, prev_crc=head.prev_crc, data_crc=0,
                data_bytes=0, entries=())
            bufs.append(meta)
            # The pad is not followed by its blank blocks: the next record starts a segment.
            return ChainPoint((planned.block + planned.record_blocks) % self._total, head.seq,
                              header_crc)
        data_crc = 0
        payload: list[bytes | memoryview] = []
        entries = []
        for op, length in zip(planned.ops, planned.lengths, strict=True):
            entries.append((op.kind, op.nblocks, op.lba))
            if length:
                data_crc = crc(op.data, data_crc)
                payload.append(op.data)
        size = sum(planned.lengths)
        meta, header_crc = encode_meta(
            journal_uuid=self.sb.journal_uuid, kind=RecordKind.BATCH, first_seq=head.seq,
            position=planned.block, record_blocks=planned.record_blocks,
            timestamp_ns=timestamp_ns, tail_seq=self.tail_seq, synced_seq=self._durable.seq,
            prev_crc=head.prev_crc, data_crc=data_crc, data_bytes=size, entries=entries)
        bufs.append(meta)
        bufs.extend(payload)
        if size % JBLOCK:
            bufs.append(_ZERO_BLOCK[: JBLOCK - size % JBLOCK])
        return ChainPoint((planned.block + planned.record_blocks) % self._total,
                          head.seq + len(planned.ops), header_crc)

    # --- durability and checkpoints ---------------------------------------------------

    def sync(self) -> None:
        """fdatasync: every record appended so far is durable.

        The head is not republished here (that would cost a second, scattered write per
        sync); readers find durable records themselves (see JournalReader.read). The writer
        slot is refreshed when a segment is entered, on `set_mirror_durable` and on close.
        """
        self._check_open()
        if not self._unsynced and self._mirror == self._mirror_on_disk:
            return
        written_mirror = self._slot_mirror
        self._io.sync()
        self._slot_dirty = False
        self._mirror_on_disk = written_mirror  # the slot written before this sync is durable
        self._durable = self._head
        self._unsynced = False

    def _publish(self) -> None:
        """Write the writer slot (durable head, mirror checkpoint); durable at the next sync."""
        self._writer_gen += 1
        self._slot_mirror = self._mirror
        self._slot_dirty = True
        self._published = self._durable
        write_writer_slot(self._io, self.sb, self._writer_gen,
                          WriterCheckpoint(self._mirror, self._durable.seq, self._durable.block,
                                           self._durable.prev_crc))

    def set_mirror_durable(self, seq: int) -> None:
        """The mirror durably holds every write up to `seq` (the writer's checkpoint)."""
        self._check_open()
        if seq < self._mirror:
            raise InvalidRequest(f"the mirror-durable checkpoint cannot go back from "
                                 f"{self._mirror} to {seq}")
        if seq >= self._durable.seq:
            raise InvalidRequest(f"seq {seq} is not durable in the journal yet (durable below "
                                 f"{self._durable.seq}); sync the journal before the mirror")
        if seq != self._mirror:
            self._mirror = seq
            self._publish()

    def _refresh_acked(self) -> None:
        header = read_slot_blocks(self._io, TRANSMITTER_SLOT_BLOCKS[0])
        self._tx_gen, tx = read_transmitter_slot(header, self.sb)
        self._acked = tx.acked_seq

    # --- reading back -----------------------------------------------------------------

    def records(self, from_seq: int) -> Iterator[Record]:
        """Every record from `from_seq` to the head, in order (redo after a crash, tests).

        Records below the tail can still be read until their segment is overwritten;
        then RecordsGone."""
        self._check_open()
        end = self._head.seq
        if from_seq >= end:
            return
        found = segment_holding(self._area, from_seq, self._newest_segment())
        if found is None:
            raise RecordsGone(f"records from seq {from_seq} were reclaimed and overwritten "
                              f"(the tail is at seq {self.tail_seq})")
        segment, meta = found
        walker = Walker(self._area, ChainPoint(segment * self.sb.segment_blocks, meta.first_seq, 0),
                        check_first_link=False)
        seq = meta.first_seq
        while seq < end:
            got = walker.next()
            if got is None:
                raise JournalCorrupt(f"record seq {walker.point.seq} is damaged: {walker.why}",
                                     position=self.sb.block_offset(walker.point.block))
            record_meta, data = got
            yield from records_of(record_meta, data, self.sb.volume_block_size, from_seq)
            seq = record_meta.end_seq

    def _newest_segment(self) -> int:
        return ((self._head.block - 1) % self._total) // self.sb.segment_blocks

    def usage(self) -> JournalUsage:
        self._check_open()
        self._refresh_acked()
        tail, head = self.tail_seq, self._head
        held_bytes = 0
        if tail < head.seq:
            if self._tail_cache is None or self._tail_cache[0] != tail:
                found = segment_holding(self._area, tail, self._newest_segment())
                segment = found[0] if found else (self._newest_segment() + 1) % self.sb.segment_count
                self._tail_cache = (tail, segment)
            blocks = (head.block - self._tail_cache[1] * self.sb.segment_blocks) % self._total
            held_bytes = (blocks or self._total) * JBLOCK
        capacity = self._total * JBLOCK
        percent = 100.0 * held_bytes / capacity
        return JournalUsage(held_bytes, head.seq - tail, capacity, percent,
                            percent >= self.high_water_percent, self.high_water_percent,
                            head.seq, tail, self._durable.seq, self._acked, self._mirror)

    def _check_open(self) -> None:
        if self._io is None:
            raise InvalidRequest("the journal is closed")


def _create_target(path: Target, size: int) -> BlockIO:
    """Open (creating if need be) the journal's file, refusing one that holds a journal."""
    if isinstance(path, str | os.PathLike):
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        io: BlockIO = open_file(path, create_size=size if fresh else None)
        try:
            io.lock_exclusive()
        except BaseException:
            io.close()
            raise
    else:
        io = path
    try:
        if io.size() < size:
            raise InvalidRequest(f"the target holds {io.size()} bytes, less than the "
                                 f"requested journal size {size}; enlarge or remove it")
        first = bytearray(JBLOCK)
        io.pread_into(0, memoryview(first))
        try:
            existing = decode_superblock(first) is not None
        except JournalMismatch:  # an unknown format version is still somebody's journal
            existing = True
        if existing:
            raise InvalidRequest("the target already holds a journal; open it, or delete it "
                                 "before creating a new one")
        return io
    except BaseException:
        io.close()
        raise


__all__ = ["FORMAT_VERSION", "Journal"]
