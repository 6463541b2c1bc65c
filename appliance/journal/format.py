"""On-disk structures of the journal, as pure functions over bytes (docs/journal-format.md).

File layout, in 4 KiB journal blocks:

    0, 1   superblock, two identical copies (static after creation)
    2, 3   writer checkpoint slot, copies A/B (generation picks the newest valid one)
    4, 5   transmitter checkpoint slot, copies A/B
    6, 7   reserved (zero)
    8 ...  the record area: `segment_count` segments of `segment_blocks` blocks

Every integer is little-endian. Every structure carries a CRC32C (Castagnoli).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Final

from appliance.checksum import crc32c
from appliance.journal.errors import JournalMismatch

JBLOCK: Final = 4096
FORMAT_VERSION: Final = 1
SUPERBLOCK_MAGIC: Final = b"DRJOURNL"
WRITER_SLOT_MAGIC: Final = b"DRJWSLOT"
TRANSMITTER_SLOT_MAGIC: Final = b"DRJTSLOT"

SUPERBLOCK_BLOCKS: Final = (0, 1)
WRITER_SLOT_BLOCKS: Final = (2, 3)
TRANSMITTER_SLOT_BLOCKS: Final = (4, 5)
HEADER_BLOCKS: Final = 8  # the record area starts here

MIN_SEGMENT_BLOCKS: Final = 16  # 64 KiB
MIN_SEGMENTS: Final = 4
DEFAULT_SEGMENT_BLOCKS: Final = 8192  # 32 MiB: bounds the largest write and the recovery scan
MIN_JOURNAL_BYTES: Final = (HEADER_BLOCKS + MIN_SEGMENTS * MIN_SEGMENT_BLOCKS) * JBLOCK
MAX_SEQ: Final = 2**63 - 1


def crc(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    return crc32c(data, value)


# --- superblock ------------------------------------------------------------------------

# magic, version, flags, journal uuid, volume uuid, volume block size, journal block size,
# volume blocks, total blocks, area start block, segment blocks, segment count, first seq,
# created_ns; then CRC32C of everything before it.
_SB: Final = struct.Struct("<8sII16s16sIIQQQIIQQ")
_U32: Final = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Superblock:
    journal_uuid: uuid.UUID
    volume_uuid: uuid.UUID
    volume_block_size: int
    volume_blocks: int
    total_blocks: int
    segment_blocks: int
    segment_count: int
    first_seq: int
    created_ns: int
    area_start: int = HEADER_BLOCKS

    @property
    def area_blocks(self) -> int:
        return self.segment_blocks * self.segment_count

    @property
    def max_op_data_blocks(self) -> int:
        """Data blocks of the largest record: a segment minus its metadata block."""
        return self.segment_blocks - 1

    def block_offset(self, area_block: int) -> int:
        """Byte offset in the file of a block of the record area."""
        return (self.area_start + area_block) * JBLOCK


def choose_segment_blocks(total_blocks: int, requested: int | None) -> int:
    """Segment size: as asked, else the default shrunk (by halves) to leave >= 8 segments."""
    area = total_blocks - HEADER_BLOCKS
    if requested is not None:
        if requested < MIN_SEGMENT_BLOCKS:
            raise ValueError(f"segment size of {requested} blocks is below the minimum "
                             f"of {MIN_SEGMENT_BLOCKS} blocks ({MIN_SEGMENT_BLOCKS * JBLOCK} bytes)")
        if area // requested < MIN_SEGMENTS:
            raise ValueError(f"a journal of {total_blocks * JBLOCK} bytes holds fewer than "
                             f"{MIN_SEGMENTS} segments of {requested * JBLOCK} bytes; "
                             f"make the journal bigger or the segments smaller")
        return requested
    blocks = DEFAULT_SEGMENT_BLOCKS
    while blocks > MIN_SEGMENT_BLOCKS and area // blocks < 8:
        blocks //= 2
    return blocks


def encode_superblock(sb: Superblock) -> bytes:
    body = _SB.pack(SUPERBLOCK_MAGIC, FORMAT_VERSION, 0, sb.journal_uuid.bytes,
                    sb.volume_uuid.bytes, sb.volume_block_size, JBLOCK, sb.volume_blocks,
                    sb.total_blocks, sb.area_start, sb.segment_blocks, sb.segment_count,
                    sb.first_seq, sb.created_ns)
    out = bytearray(JBLOCK)
    out[: _SB.size] = body
    _U32.pack_into(out, _SB.size, crc(body))
    return bytes(out)


def decode_superblock(block: bytes | memoryview) -> Superblock | None:
    """The superblock in `block`, or None if the block holds no intact superblock.

    Raises JournalMismatch for an intact superblock of a format version we do not know.
    """
    if bytes(block[:8]) != SUPERBLOCK_MAGIC:
        return None
    version = _U32.unpack_from(block, 8)[0]
    if version != FORMAT_VERSION:
        raise JournalMismatch(
            f"journal format version {version} is not supported (this software reads "
            f"version {FORMAT_VERSION}); upgrade the appliance software or recreate the journal")
    fields = _SB.unpack_from(block, 0)
    if _U32.unpack_from(block, _SB.size)[0] != crc(block[: _SB.size]):
        return None
    (_, _, _, juuid, vuuid, vbs, jbs, vblocks, total, area_start, seg_blocks, seg_count,
     first_seq, created_ns) = fields
    if jbs != JBLOCK:
        raise JournalMismatch(f"journal block size {jbs} is not supported (expected {JBLOCK})")
    return Superblock(uuid.UUID(bytes=juuid), uuid.UUID(bytes=vuuid), vbs, vblocks, total,
                      seg_blocks, seg_count, first_seq, created_ns, area_start)


# --- checkpoint slots ----------------------------------------------------------------

# magic, version, journal uuid, generation, then four u64 fields and one u32, written_ns.
_SLOT: Final = struct.Struct("<8sI16sQQQQQIQ")


@dataclass(frozen=True, slots=True)
class WriterCheckpoint:
    """Owned by the writer. Every seq below `head_seq` is durable; the record with seq
    `head_seq` goes at area block `head_block` and links to `head_prev_crc`."""

    mirror_durable_seq: int
    head_seq: int
    head_block: int
    head_prev_crc: int


@dataclass(frozen=True, slots=True)
class TransmitterCheckpoint:
    """Owned by the transmitter: the peer holds every seq <= acked_seq durably."""

    acked_seq: int


def encode_slot(magic: bytes, journal_uuid: uuid.UUID, generation: int,
                values: tuple[int, int, int, int, int], written_ns: int) -> bytes:
    body = _SLOT.pack(magic, FORMAT_VERSION, journal_uuid.bytes, generation, *values,
                      written_ns)
    out = bytearray(JBLOCK)
    out[: _SLOT.size] = body
    _U32.pack_into(out, _SLOT.size, crc(body))
    return bytes(out)


def decode_slot(block: bytes | memoryview, magic: bytes, journal_uuid: uuid.UUID
                ) -> tuple[int, tuple[int, int, int, int, int]] | None:
    """(generation, values) of an intact slot copy of this journal, else None."""
    if bytes(block[:8]) != magic:
        return None
    if _U32.unpack_from(block, _SLOT.size)[0] != crc(block[: _SLOT.size]):
        return None
    fields = _SLOT.unpack_from(block, 0)
    _, version, juuid, gen = fields[:4]
    if version != FORMAT_VERSION or juuid != journal_uuid.bytes:
        return None
    return gen, fields[4:9]     # the five values; then written_ns


def encode_writer_slot(sb: Superblock, generation: int, cp: WriterCheckpoint,
                       written_ns: int) -> bytes:
    return encode_slot(WRITER_SLOT_MAGIC, sb.journal_uuid, generation,
                       (cp.mirror_durable_seq, cp.head_seq, cp.head_block, 0, cp.head_prev_crc),
                       written_ns)


def encode_transmitter_slot(sb: Superblock, generation: int, cp: TransmitterCheckpoint,
                            written_ns: int) -> bytes:
    return encode_slot(TRANSMITTER_SLOT_MAGIC, sb.journal_uuid, generation,
                       (cp.acked_seq, 0, 0, 0, 0), written_ns)


def newest_slot(blocks: list[bytes | memoryview], magic: bytes, journal_uuid: uuid.UUID
                ) -> tuple[int, tuple[int, int, int, int, int]] | None:
    """The intact copy with the highest generation (a torn copy loses to the other one)."""
    best = None
    for block in blocks:
        got = decode_slot(block, magic, journal_uuid)
        if got is not None and (best is None or got[0] > best[0]):
            best = got
    return best


def writer_checkpoint(values: tuple[int, int, int, int, int]) -> WriterCheckpoint:
    mirror, head_seq, head_block, _, prev_crc = values
    return WriterCheckpoint(mirror, head_seq, head_block, prev_crc)
