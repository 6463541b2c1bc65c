"""Opening a journal file: the superblock checks and the checkpoint slots (both sides)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

from appliance.journal.errors import JournalCorrupt, JournalMismatch
from appliance.journal.format import (
    HEADER_BLOCKS,
    JBLOCK,
    MIN_SEGMENT_BLOCKS,
    MIN_SEGMENTS,
    SUPERBLOCK_BLOCKS,
    SUPERBLOCK_MAGIC,
    TRANSMITTER_SLOT_BLOCKS,
    TRANSMITTER_SLOT_MAGIC,
    WRITER_SLOT_BLOCKS,
    WRITER_SLOT_MAGIC,
    Superblock,
    TransmitterCheckpoint,
    WriterCheckpoint,
    decode_superblock,
    encode_transmitter_slot,
    encode_writer_slot,
    newest_slot,
    writer_checkpoint,
)
from appliance.storage import BlockIO, open_file

Target = str | os.PathLike[str] | BlockIO


def open_target(target: Target, *, lock: bool) -> BlockIO:
    """A BlockIO for `target` (a path, or an already open BlockIO which we then own)."""
    if isinstance(target, str | os.PathLike):
        io = open_file(target)
        if lock:
            try:
                io.lock_exclusive()
            except BaseException:
                io.close()
                raise
        return io
    return target


def journal_volume_bytes(journal: str | os.PathLike[str], volume_uuid: uuid.UUID) -> int:
    """The volume size the journal records now (another process may write it: not locked).
    It follows the volume's online resizes and a consistency group's joins, so it is the size
    of the image, where a configuration may be older."""
    io = open_target(journal, lock=False)
    try:
        sb = load_superblock(io, read_header(io), volume_uuid)
        return sb.volume_blocks * sb.volume_block_size
    finally:
        io.close()


def read_header(io: BlockIO) -> memoryview:
    buf = bytearray(HEADER_BLOCKS * JBLOCK)
    if io.size() < len(buf):
        raise JournalMismatch(f"the file is only {io.size()} bytes: too small to be a journal "
                              f"(its header alone takes {len(buf)} bytes)")
    io.pread_into(0, memoryview(buf))
    return memoryview(buf)


def _block(header: memoryview, index: int) -> memoryview:
    return header[index * JBLOCK : (index + 1) * JBLOCK]


def load_superblock(io: BlockIO, header: memoryview, volume_uuid: uuid.UUID | None
                    ) -> Superblock:
    """The superblock (either intact copy), checked against the file and the volume."""
    sb = None
    for index in SUPERBLOCK_BLOCKS:
        sb = decode_superblock(_block(header, index))
        if sb is not None:
            break
    if sb is None:
        if not any(bytes(_block(header, i)[:8]) == SUPERBLOCK_MAGIC for i in SUPERBLOCK_BLOCKS):
            raise JournalMismatch("not a journal: no journal superblock at the start of the "
                                  "file; check the path, or create the journal")
        raise JournalCorrupt("both copies of the journal superblock are damaged", position=0)
    if volume_uuid is not None and sb.volume_uuid != volume_uuid:
        raise JournalMismatch(
            f"journal {sb.journal_uuid} belongs to volume {sb.volume_uuid}, not to volume "
            f"{volume_uuid}; point the volume at its own journal")
    if (sb.segment_blocks < MIN_SEGMENT_BLOCKS or sb.segment_count < MIN_SEGMENTS
            or sb.volume_block_size not in (512, 1024, 2048, 4096) or sb.volume_blocks < 1):
        raise JournalMismatch(
            f"journal geometry is not usable: {sb.segment_count} segments of "
            f"{sb.segment_blocks} blocks (minimum {MIN_SEGMENTS} of {MIN_SEGMENT_BLOCKS}), "
            f"volume block size {sb.volume_block_size}; recreate the journal")
    need = sb.total_blocks * JBLOCK
    if io.size() < need or sb.area_start < HEADER_BLOCKS or (
            sb.area_start + sb.area_blocks > sb.total_blocks):
        raise JournalMismatch(
            f"journal geometry does not fit the file: the superblock describes {need} bytes, "
            f"the file has {io.size()} (was it truncated or copied partially?)")
    return sb


@dataclass
class Slots:
    writer: WriterCheckpoint
    writer_generation: int
    transmitter: TransmitterCheckpoint
    transmitter_generation: int


def read_writer_slot(header: memoryview, sb: Superblock) -> tuple[int, WriterCheckpoint]:
    got = newest_slot([_block(header, i) for i in WRITER_SLOT_BLOCKS], WRITER_SLOT_MAGIC,
                      sb.journal_uuid)
    if got is None:
        raise JournalCorrupt("both copies of the writer checkpoint are damaged",
                             position=WRITER_SLOT_BLOCKS[0] * JBLOCK)
    return got[0], writer_checkpoint(got[1])


def read_transmitter_slot(header: memoryview, sb: Superblock
                          ) -> tuple[int, TransmitterCheckpoint]:
    got = newest_slot([_block(header, i) for i in TRANSMITTER_SLOT_BLOCKS],
                      TRANSMITTER_SLOT_MAGIC, sb.journal_uuid)
    if got is None:
        raise JournalCorrupt("both copies of the transmitter checkpoint are damaged",
                             position=TRANSMITTER_SLOT_BLOCKS[0] * JBLOCK)
    return got[0], TransmitterCheckpoint(got[1][0])


def read_slot_blocks(io: BlockIO, first: int) -> memoryview:
    """Re-read one slot's two copies (a header-shaped view with only those blocks filled)."""
    buf = bytearray(HEADER_BLOCKS * JBLOCK)
    io.pread_into(first * JBLOCK, memoryview(buf)[first * JBLOCK : (first + 2) * JBLOCK])
    return memoryview(buf)


def write_writer_slot(io: BlockIO, sb: Superblock, generation: int, cp: WriterCheckpoint) -> None:
    """Write copy generation % 2; the other copy keeps the previous state if this one tears."""
    block = encode_writer_slot(sb, generation, cp, time.time_ns())
    io.pwritev(WRITER_SLOT_BLOCKS[generation % 2] * JBLOCK, [block])


def write_transmitter_slot(io: BlockIO, sb: Superblock, generation: int,
                           cp: TransmitterCheckpoint) -> None:
    block = encode_transmitter_slot(sb, generation, cp, time.time_ns())
    io.pwritev(TRANSMITTER_SLOT_BLOCKS[generation % 2] * JBLOCK, [block])
