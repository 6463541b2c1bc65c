"""Creating a journal: checking the request, choosing the geometry, the first header."""

from __future__ import annotations

import errno
import os
import time
import uuid

from appliance.journal import volume_files
from appliance.journal.errors import InvalidRequest, JournalMismatch
from appliance.journal.format import (
    HEADER_BLOCKS,
    JBLOCK,
    MAX_SEQ,
    MIN_JOURNAL_BYTES,
    SUPERBLOCK_BLOCKS,
    Superblock,
    TransmitterCheckpoint,
    WriterCheckpoint,
    choose_segment_blocks,
    decode_superblock,
    encode_superblock,
)
from appliance.journal.header import Target, write_transmitter_slot, write_writer_slot
from appliance.journal.volume_files import VOLUME_FILES_BLOCKS, VolumeFiles
from appliance.storage import BlockIO, FileBlockIO, allocate, open_file


def new_superblock(*, size: int, volume_uuid: uuid.UUID, volume_block_size: int,
                   volume_blocks: int, first_seq: int, segment_size: int | None) -> Superblock:
    """The superblock of a new journal; InvalidRequest (saying what to fix) if it cannot be."""
    total_blocks = size // JBLOCK if isinstance(size, int) else 0
    if total_blocks * JBLOCK < MIN_JOURNAL_BYTES:
        raise InvalidRequest(f"journal size {size} is below the minimum of "
                             f"{MIN_JOURNAL_BYTES} bytes; give it more space")
    if not isinstance(volume_uuid, uuid.UUID):
        raise InvalidRequest(f"volume_uuid must be a uuid.UUID, not {volume_uuid!r}")
    if volume_block_size not in (512, 1024, 2048, 4096):
        raise InvalidRequest(f"volume block size {volume_block_size} is not supported; "
                             f"use 512 or 4096")
    if not isinstance(volume_blocks, int) or volume_blocks < 1:
        raise InvalidRequest(f"volume_blocks must be a positive integer, not {volume_blocks!r}")
    if not isinstance(first_seq, int) or not 1 <= first_seq <= MAX_SEQ // 2:
        raise InvalidRequest(f"first_seq must be in 1..{MAX_SEQ // 2}, not {first_seq}")
    if segment_size is not None and segment_size % JBLOCK:
        raise InvalidRequest(f"segment size {segment_size} is not a multiple of {JBLOCK}")
    try:
        seg_blocks = choose_segment_blocks(
            total_blocks, None if segment_size is None else segment_size // JBLOCK)
    except ValueError as err:
        raise InvalidRequest(str(err)) from err
    seg_count = (total_blocks - HEADER_BLOCKS) // seg_blocks
    return Superblock(uuid.uuid4(), volume_uuid, volume_block_size, volume_blocks,
                      HEADER_BLOCKS + seg_count * seg_blocks, seg_blocks, seg_count,
                      first_seq, time.time_ns())


def _reserve(io: FileBlockIO, size: int) -> None:
    """A journal is rewritten in circles for ever: give it all its blocks now, so that no
    host write ever fails for want of space another file took (and none pays for block
    allocation). Raises, with what to do, if the file system has no room."""
    try:
        allocate(io.fileno(), 0, size)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        os.ftruncate(io.fileno(), 0)     # still "fresh" for the next try, nothing kept
        raise InvalidRequest(f"no room for the journal's {size} bytes on the file system of "
                             f"{io.path}; free space there or choose a smaller journal") from err


def open_new_target(path: Target, size: int) -> BlockIO:
    """Open (creating if need be) the journal's file, refusing one that holds a journal."""
    if isinstance(path, str | os.PathLike):
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        io: BlockIO = open_file(path, create_size=size if fresh else None)
        try:
            io.lock_exclusive()
            if fresh:
                _reserve(io, size)
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


def write_fresh_header(io: BlockIO, sb: Superblock, files: VolumeFiles | None = None) -> None:
    """Both copies of both slots (nothing written or acked yet) and the volume-files slot
    (``files``, if given), synced; then the superblock copies, synced.

    The superblock goes last because it is what makes the file a journal: a transmitter
    polling for it (another process) finds a journal whole, its mirror and bitmap already
    named, never one whose files are still unknown (it would tell its peer the volume is a
    plain one when it is a consistency group, docs/groups.md). A crash before the superblock
    leaves no journal, which the next open creates again."""
    start = WriterCheckpoint(sb.first_seq - 1, sb.first_seq, 0, 0)
    for gen in (1, 2):  # both copies valid from the start
        write_writer_slot(io, sb, gen, start)
        write_transmitter_slot(io, sb, gen, TransmitterCheckpoint(sb.first_seq - 1))
    io.pwritev(VOLUME_FILES_BLOCKS[0] * JBLOCK, [bytes(2 * JBLOCK)])
    if files is not None:
        volume_files.publish(io, sb, files)
    io.sync()
    io.pwritev(0, [encode_superblock(sb)] * len(SUPERBLOCK_BLOCKS))
    io.sync()
