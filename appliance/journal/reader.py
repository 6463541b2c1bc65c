"""The reader: how the transmitter (its own process) reads the journal and acknowledges.

It never writes records. It returns only records below the durable head the writer
published in its checkpoint slot, so nothing that a power cut could still take is
shipped, and it persists the peer's acknowledgements in its own checkpoint slot.
"""

from __future__ import annotations

import uuid

from appliance.journal import volume_files
from appliance.journal.errors import InvalidRequest, JournalCorrupt, RecordsGone
from appliance.journal.format import (
    JBLOCK,
    TRANSMITTER_SLOT_BLOCKS,
    WRITER_SLOT_BLOCKS,
    TransmitterCheckpoint,
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
    write_transmitter_slot,
)
from appliance.journal.model import Record
from appliance.journal.placement import ChainPoint
from appliance.journal.scan import (
    Area,
    ReadBuffers,
    Walker,
    newest_segment,
    records_of,
    segment_holding,
)
from appliance.journal.volume_files import VolumeFiles
from appliance.storage import BlockIO

_LOCATE_ATTEMPTS = 3


class JournalReader:
    """Reads durable records of a journal that another process writes.

    ``buffers``: reads go into buffers reused once nothing refers to them (``ReadBuffers``)
    instead of fresh memory; for a reader whose records are views (``read(views=True)``)."""

    def __init__(self, path: Target, *, volume_uuid: uuid.UUID | None = None,
                 buffers: ReadBuffers | None = None) -> None:
        self._io: BlockIO | None = open_target(path, lock=False)
        try:
            header = read_header(self._io)
            self.sb = load_superblock(self._io, header, volume_uuid)
            self._tx_gen, tx = read_transmitter_slot(header, self.sb)
        except BaseException:
            self._io.close()
            raise
        self.acked_seq = tx.acked_seq
        self._area = Area(self._io, self.sb, buffers)
        self._cursor: ChainPoint | None = None  # start of the record holding the next seq
        self._cursor_pad_crc: int | None = None  # a PAD just before the cursor (Walker)
        self._synced_to = 0  # every seq below this was returned after our own fdatasync

    def close(self) -> None:
        if self._io is not None:
            io, self._io = self._io, None
            io.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def writer_checkpoint(self) -> WriterCheckpoint:
        """The writer's published state: durable head and mirror checkpoint."""
        io = self._open_io()
        return read_writer_slot(read_slot_blocks(io, WRITER_SLOT_BLOCKS[0]), self.sb)[1]

    def volume_files(self) -> VolumeFiles | None:
        """The mirror and bitmap the writer named (None: a writer older than that slot)."""
        return volume_files.read_slot(self._open_io(), self.sb)[1]

    @property
    def durable_seq(self) -> int:
        """Every seq below this is durable: published by the writer, or synced by us."""
        return max(self.writer_checkpoint().head_seq, self._synced_to)

    def read(self, from_seq: int, max_bytes: int, *, views: bool = False) -> list[Record]:
        """Durable records with seq >= from_seq, in order; [] when caught up.

        Returns at least one record when any is available, and stops once the data
        returned reaches `max_bytes`. Records the writer has not synced yet are returned
        too, after this reader fdatasyncs the file itself: nothing that a power cut could
        still take is ever returned. Raises JournalCorrupt on a bad record below the
        durable head, RecordsGone if from_seq was already reclaimed.

        Each record's `op.data` is bytes, or with `views` a read-only memoryview of the
        buffer it was read (and CRC-checked) into: no copy per record. Such a buffer is
        not reused while any view of it is held (a pooled one is refilled only once nothing
        refers to it), so a view stays valid, and its bytes those checked, as long as it is
        held (and keeps its read of up to a few MiB alive).
        """
        anchor = self.writer_checkpoint()
        durable = max(anchor.head_seq, self._synced_to)
        tail = max(min(self.acked_seq, anchor.mirror_durable_seq) + 1, self.sb.first_seq)
        if from_seq < tail:
            raise RecordsGone(f"records from seq {from_seq} were reclaimed; the oldest held is "
                              f"{tail}")
        out: list[Record] = []
        for attempt in range(_LOCATE_ATTEMPTS):
            start = self._locate(from_seq, anchor)
            if start is None:
                if from_seq >= durable:
                    return []  # nothing was written there yet
                if attempt == _LOCATE_ATTEMPTS - 1:
                    raise JournalCorrupt(
                        f"seq {from_seq} is below the durable head {durable} but no intact "
                        f"segment start leads to it", position=self.sb.block_offset(0))
                anchor = self.writer_checkpoint()
                continue
            out, failure = self._collect(start, from_seq, durable, max_bytes, views)
            if failure is None:
                break
            if attempt == _LOCATE_ATTEMPTS - 1:
                raise failure
            self._cursor = None
            anchor = self.writer_checkpoint()
        else:
            raise RecordsGone(f"no segment of the journal holds seq {from_seq} any more")
        if out and out[-1].seq >= durable:
            # Beyond what is known durable: make it so before anyone ships it.
            self._open_io().sync()
            self._synced_to = out[-1].seq + 1
        return out

    def backlog_bytes(self, from_seq: int) -> int:
        """Bytes of the record area from the segment holding `from_seq` to the writer's
        published head: what a peer lacking `from_seq` onwards still needs from this journal.
        Counted from the segment's start, like `JournalUsage.bytes_held`, so it may exceed
        the exact figure by up to one segment; 0 when `from_seq` is at the head."""
        anchor = self.writer_checkpoint()
        if from_seq >= anchor.head_seq:
            return 0
        newest, _ = newest_segment(self._area, anchor)
        found = segment_holding(self._area, from_seq, newest)
        total = self.sb.area_blocks
        if found is None:       # reclaimed already: the whole journal is behind
            return total * JBLOCK
        start = found[0] * self.sb.segment_blocks
        return ((anchor.head_block - start) % total or total) * JBLOCK

    def _locate(self, seq: int, anchor: WriterCheckpoint) -> ChainPoint | None:
        if self._cursor is not None and self._cursor.seq <= seq:
            return self._cursor
        self._cursor_pad_crc = None
        newest, _ = newest_segment(self._area, anchor)
        found = segment_holding(self._area, seq, newest)
        if found is None or found[1] is None:
            return None
        segment, meta = found
        return ChainPoint(segment * self.sb.segment_blocks, meta.first_seq, meta.prev_crc)

    def _collect(self, start: ChainPoint, from_seq: int, durable: int, max_bytes: int,
                 views: bool = False) -> tuple[list[Record], JournalCorrupt | None]:
        """Walk from `start`. Below `durable` a broken chain is corruption; at or above
        it, it is where the writer has got to (or a write in progress): stop there."""
        walker = Walker(self._area, start, pad_crc=self._cursor_pad_crc)
        out: list[Record] = []
        size = 0
        while not out or size < max_bytes:
            got = walker.next()
            if got is None:
                if walker.point.seq < durable:
                    return out, JournalCorrupt(
                        f"record seq {walker.point.seq} below the durable head {durable} is "
                        f"damaged: {walker.why}",
                        position=self.sb.block_offset(walker.point.block))
                if walker.point.seq == from_seq or out:
                    self._cursor = walker.point  # caught up: resume here next time
                    self._cursor_pad_crc = walker.pad_crc
                return out, None
            meta, data = got
            for record in records_of(meta, data, self.sb.volume_block_size, from_seq,
                                     views=views):
                if out and size >= max_bytes:
                    self._cursor = ChainPoint(meta.position, meta.first_seq, meta.prev_crc)
                    self._cursor_pad_crc = None
                    return out, None
                out.append(record)
                size += len(record.op.data)
            self._cursor = walker.point
            self._cursor_pad_crc = walker.pad_crc
        return out, None

    def acknowledge(self, seq: int) -> None:
        """The peer holds every seq <= `seq` durably; persist it (fdatasync)."""
        io = self._open_io()
        if seq <= self.acked_seq:
            return
        durable = self.durable_seq
        if seq >= durable:
            raise InvalidRequest(f"cannot acknowledge seq {seq}: only seqs below {durable} "
                                 f"are durable in the journal (and could have been shipped)")
        header = read_slot_blocks(io, TRANSMITTER_SLOT_BLOCKS[0])
        self._tx_gen, _ = read_transmitter_slot(header, self.sb)
        self._tx_gen += 1
        write_transmitter_slot(io, self.sb, self._tx_gen, TransmitterCheckpoint(seq))
        io.sync()
        self.acked_seq = seq

    def _open_io(self) -> BlockIO:
        if self._io is None:
            raise InvalidRequest("the journal reader is closed")
        return self._io
