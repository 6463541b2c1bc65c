"""The journal writer: create, recover, append batches, sync, checkpoint, redo.

One writer per journal file (it takes an exclusive flock when given a path). The
transmitter reads the same file from its own process with `JournalReader`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from itertools import accumulate

from appliance.journal import volume_files
from appliance.journal.creation import new_superblock, open_new_target, write_fresh_header
from appliance.journal.emit import emit_record
from appliance.journal.errors import (
    InvalidRequest,
    JournalCorrupt,
    JournalFull,
    RecordsGone,
)
from appliance.journal.format import (
    FORMAT_VERSION,
    JBLOCK,
    TRANSMITTER_SLOT_BLOCKS,
    Superblock,
    WriterCheckpoint,
)
from appliance.journal.header import (
    Target,
    load_superblock,
    open_target,
    read_header,
    read_slot_blocks,
    read_transmitter_slot,
    read_writer_slot,
    write_writer_slot,
)
from appliance.journal.model import JournalUsage, Record, WriteOp
from appliance.journal.placement import ChainPoint, Placement, place_batch
from appliance.journal.records import check_ops
from appliance.journal.scan import (
    Area,
    Walker,
    find_head,
    records_of,
    segment_holding,
)
from appliance.journal.space import last_seq_in, tail_segment
from appliance.journal.volume_files import VolumeFiles
from appliance.storage import BlockIO


class Journal:
    """The writer side of one journal file. Not thread-safe: the caller serialises calls
    (the Volume does, under its lock)."""

    high_water_percent: float = 80.0

    def __init__(self, io: BlockIO, sb: Superblock) -> None:
        """Use `create` or `open`."""
        self._io = io
        self.sb = sb
        self._area = Area(io, sb)
        self._journal_uuid_bytes = sb.journal_uuid.bytes   # UUID.bytes is computed per access
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
               volume_blocks: int, first_seq: int = 1, segment_size: int | None = None,
               volume_files: VolumeFiles | None = None) -> Journal:
        """Lay out a new, empty journal of `size` bytes. Refuses to overwrite a journal.

        `segment_size` (bytes, a multiple of 4096) bounds the largest single write; by
        default 32 MiB, shrunk for small journals so that there are at least 8 segments.
        `volume_files`: the mirror and bitmap, named from the moment the journal exists.
        """
        sb = new_superblock(size=size, volume_uuid=volume_uuid,
                            volume_block_size=volume_block_size, volume_blocks=volume_blocks,
                            first_seq=first_seq, segment_size=segment_size)
        io = open_new_target(path, sb.total_blocks * JBLOCK)
        try:
            write_fresh_header(io, sb, volume_files)
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
                io = self._io
                # Closed: every method checks _check_open() before it touches the file.
                self._io = None  # type: ignore[assignment]
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
    def io(self) -> BlockIO:
        """The journal's file. The volume reads cached writes back from it, by the offsets
        `append` reports, instead of keeping copies (docs/volume.md, "Flush policy")."""
        self._check_open()
        return self._io

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

    def append(self, ops: Sequence[WriteOp], data_offsets: list[int] | None = None,
               timestamp_ns: int = 0) -> range:
        """Write a batch (one metadata block per <= 248 writes, plus data; no fdatasync,
        except once before entering each new segment). Returns the seqs given. With
        `data_offsets`, appends to it where each op's data now lies in the journal's file
        (it stays there, unmoved, until the record is reclaimed). The records are stamped
        `timestamp_ns`, or now when it is 0 (a replica journal keeps the primary's stamp).

        Raises InvalidRequest or JournalFull, writing nothing.
        """
        self._check_open()
        lengths = check_ops(ops, self.sb)
        first = self._head.seq
        if not ops:
            return range(first, first)
        plan = place_batch(ops, lengths, self._head.block, self.sb.segment_blocks, self._total)
        # (One record, the usual plan, enters at most one segment: nothing to count.)
        if (len(plan) > 1
                and sum(placed.enters_segment for placed in plan) > self.sb.segment_count - 2):
            raise InvalidRequest(f"a batch of {sum(lengths)} bytes needs more than "
                                 f"{self.sb.segment_count - 2} of the journal's segments; split "
                                 f"it (at most {self.max_batch_bytes} bytes always fit)")
        for planned in plan:
            if (planned.enters_segment
                    and not self._segment_free(planned.block // self.sb.segment_blocks)):
                raise JournalFull(
                    f"journal full: appending {len(ops)} writes would overwrite records not "
                    f"yet acknowledged by the peer and on the mirror (tail seq {self.tail_seq}, "
                    f"acked {self._acked}, mirror durable {self._mirror_on_disk})")
        self._write(plan, timestamp_ns or time.time_ns(), data_offsets)
        return range(first, self._head.seq)

    def _segment_free(self, segment: int) -> bool:
        """May the writer enter `segment`? Only if every record in it is reclaimable."""
        last = last_seq_in(self._area, segment, self._head.seq)
        if last is None or last <= self._reclaimable():
            return True
        self._refresh_acked()
        if self._mirror > self._mirror_on_disk:  # make the mirror checkpoint count
            self._publish()
            self._io.sync()
            self._slot_dirty = False
            self._mirror_on_disk = self._mirror
        return last <= self._reclaimable()

    def _reclaimable(self) -> int:
        return min(self._acked, self._mirror_on_disk)

    def _write(self, plan: list[Placement], timestamp_ns: int,
               data_offsets: list[int] | None) -> None:
        bufs: list[bytes | memoryview] = []
        run_start = plan[0].block
        head = self._head
        batch_written = False  # a PAD need not be durable before the next segment (see scan)
        for planned in plan:
            if planned.enters_segment:
                if bufs:
                    self._io.pwritev(self.sb.block_offset(run_start), bufs)
                    bufs = []
                if batch_written or self._unsynced:  # the segment rule: all before is durable
                    self._head = head
                    self._unsynced = True
                    self.sync()
                self._publish()  # keeps the recovery anchor within a segment of the head
                batch_written = False
            if not bufs:
                run_start = planned.block
            head = emit_record(self.sb, self._journal_uuid_bytes, planned, head, timestamp_ns,
                               self.tail_seq, self._durable.seq, bufs)
            if data_offsets is not None and planned.ops:     # the data follows the meta block
                start = self.sb.block_offset(planned.block) + JBLOCK
                data_offsets.extend(accumulate(planned.lengths[:-1], initial=start))
            batch_written = batch_written or bool(planned.ops)
        if bufs:
            self._io.pwritev(self.sb.block_offset(run_start), bufs)
        self._head = head
        self._unsynced = True

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

    def publish_volume_files(self, files: VolumeFiles) -> None:
        """Say durably which mirror and bitmap go with this journal, for the transmitter."""
        self._check_open()
        volume_files.publish(self._io, self.sb, files)

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
        segment, meta = found if found is not None else (self._newest_segment(), None)
        if meta is None:
            self._refresh_acked()
            if from_seq < self.tail_seq:
                raise RecordsGone(f"records from seq {from_seq} were reclaimed and "
                                  f"overwritten (the tail is at seq {self.tail_seq})")
            raise JournalCorrupt(
                f"seq {from_seq} is still held (tail {self.tail_seq}) but the segment that "
                f"holds it has no intact first record",
                position=self.sb.block_offset(segment * self.sb.segment_blocks))
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
                self._tail_cache = (tail, tail_segment(self._area, tail,
                                                       self._newest_segment()))
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


__all__ = ["FORMAT_VERSION", "Journal"]
