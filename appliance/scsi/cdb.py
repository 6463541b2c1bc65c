"""CDB decoding: pure functions over the CDB bytes (SPC-4 r37 4.3 "The command descriptor block").

LBA / transfer-length layout by CDB size (SBC-3; kernel drivers/target/target_core_sbc.c
transport_get_sectors_*):

    6   LBA 21 bits: cdb[1]&0x1F, cdb[2..3]     length cdb[4] (0 means 256 for READ/WRITE(6))
    10  LBA BE32 cdb[2..5]                        length BE16 cdb[7..8]
    12  LBA BE32 cdb[2..5]                        length BE32 cdb[6..9]
    16  LBA BE64 cdb[2..9]                        length BE32 cdb[10..13]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from appliance.scsi import sense

# CDB size by group code (opcode >> 5), SPC-4 r37 4.3.5.1 (group code); None: variable length / vendor.
_GROUP_LENGTH: Final = (6, 10, 10, None, 16, 12, None, None)


def cdb_length(opcode: int) -> int | None:
    """CDB size implied by the opcode's group code; None for variable-length/vendor groups."""
    return _GROUP_LENGTH[(opcode >> 5) & 7]


def require_length(cdb: bytes, length: int) -> None:
    """A CDB shorter than its opcode demands cannot be decoded: point at the opcode."""
    if len(cdb) < length:
        raise sense.invalid_field_in_cdb(0, None, f"CDB is {len(cdb)} bytes, needs {length}")


def be(cdb: bytes, start: int, size: int) -> int:
    return int.from_bytes(cdb[start:start + size], "big")


@dataclass(frozen=True, slots=True)
class BlockRange:
    """LBA, transfer length and the byte where the length field starts (for field pointers)."""

    lba: int
    nblocks: int
    length_byte: int


def block_range(cdb: bytes) -> BlockRange:
    """LBA and transfer length of a READ/WRITE-family CDB, by CDB size."""
    size = cdb_length(cdb[0])
    if size == 6:
        require_length(cdb, 6)
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        # SBC-3 READ (6) / WRITE (6): TRANSFER LENGTH 0 means 256 blocks.
        return BlockRange(lba, cdb[4] or 256, 4)
    if size == 10:
        require_length(cdb, 10)
        return BlockRange(be(cdb, 2, 4), be(cdb, 7, 2), 7)
    if size == 12:
        require_length(cdb, 12)
        return BlockRange(be(cdb, 2, 4), be(cdb, 6, 4), 6)
    if size == 16:
        require_length(cdb, 16)
        return BlockRange(be(cdb, 2, 8), be(cdb, 10, 4), 10)
    raise sense.invalid_opcode(cdb[0])


def check_range(lba: int, nblocks: int, num_blocks: int) -> None:
    """SBC-3 (each data command): LBA + length beyond the capacity is LBA OUT OF RANGE (a zero-length
    transfer may start at the capacity, as the kernel's sbc_check_valid_sectors allows)."""
    if lba + nblocks > num_blocks:
        raise sense.lba_out_of_range(lba, nblocks, num_blocks)


def check_no_protection(cdb: bytes) -> None:
    """RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7-5) need protection information, which
    we do not format (READ CAPACITY(16) PROT_EN=0): SBC-3 READ (10) RDPROTECT field → INVALID FIELD IN CDB.
    The 6-byte CDBs have no such field (byte 1 bits 7-5 are the obsolete LUN field)."""
    if cdb_length(cdb[0]) != 6 and cdb[1] & 0xE0:
        raise sense.invalid_field_in_cdb(1, 7, "protection information not supported")


def fua(cdb: bytes) -> bool:
    """FUA bit of a 10/12/16-byte read/write CDB (byte 1 bit 3); the 6-byte forms have none."""
    return cdb_length(cdb[0]) != 6 and bool(cdb[1] & 0x08)
