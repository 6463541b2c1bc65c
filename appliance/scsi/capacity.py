"""READ CAPACITY (10) and (16), GET LBA STATUS (SBC-3 commands of those names)."""

from __future__ import annotations

from appliance.scsi import sense
from appliance.scsi.cdb import be, require_length


def read_capacity_10(cdb: bytes, num_blocks: int, block_size: int) -> bytes:
    """8 bytes: RETURNED LOGICAL BLOCK ADDRESS (last LBA) and block length."""
    require_length(cdb, 10)
    # SBC-3 READ CAPACITY (10): with PMI=0 the LOGICAL BLOCK ADDRESS field shall be zero. (PMI=1 asks for
    # the last LBA before a delay; we have none, so the answer is the same.)
    if not cdb[8] & 0x01 and be(cdb, 2, 4):
        raise sense.invalid_field_in_cdb(2, None, "LBA set while PMI is zero")
    # SBC-3 READ CAPACITY (10) parameter data: capacities beyond 32 bits answer FFFFFFFFh, telling the host to use (16).
    last = min(max(num_blocks - 1, 0), 0xFFFFFFFF)
    return last.to_bytes(4, "big") + block_size.to_bytes(4, "big")


def read_capacity_16(cdb: bytes, num_blocks: int, block_size: int,
                     blocks_per_physical: int) -> tuple[bytes, int]:
    """32 bytes of READ CAPACITY(16) parameter data (SBC-3) and the allocation length.

    LBPME=1 because UNMAP / WRITE SAME with UNMAP are implemented, LBPRZ=1 because the
    Volume reads deallocated blocks back as zeros (consistent with VPD 0xB2's LBPRZ).
    LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT advertises the journal block so hosts align.
    """
    require_length(cdb, 16)
    if not cdb[14] & 0x01 and be(cdb, 2, 8):   # PMI: byte 14 bit 0 (obsolete in SBC-4)
        raise sense.invalid_field_in_cdb(2, None, "LBA set while PMI is zero")
    alloc_len = be(cdb, 10, 4)
    buf = bytearray(32)
    buf[0:8] = max(num_blocks - 1, 0).to_bytes(8, "big")
    buf[8:12] = block_size.to_bytes(4, "big")
    buf[13] = blocks_per_physical.bit_length() - 1   # P_I_EXPONENT 0, LBPPBE
    buf[14] = 0x80 | 0x40                             # LBPME | LBPRZ, lowest aligned LBA 0
    return bytes(buf), alloc_len


def get_lba_status(cdb: bytes, num_blocks: int) -> tuple[bytes, int]:
    """GET LBA STATUS parameter data and allocation length: one LBA status descriptor from
    the starting LBA to the end of the volume, PROVISIONING STATUS 0h.

    SBC-4 reads 0h as "mapped or has an unknown state", which is all we can say: the Volume
    does not report which blocks are deallocated (UNMAP'd blocks read back as zeros either
    way, LBPRZ=1). Logical block provisioning management (LBPME=1) requires the command.
    """
    start, alloc_len = be(cdb, 2, 8), be(cdb, 10, 4)
    if start >= num_blocks:
        raise sense.lba_out_of_range(start, 0, num_blocks)
    count = min(num_blocks - start, 0xFFFFFFFF)
    descriptor = start.to_bytes(8, "big") + count.to_bytes(4, "big") + bytes(4)
    # PARAMETER DATA LENGTH counts the bytes after itself: 4 reserved + the descriptors.
    return (4 + len(descriptor)).to_bytes(4, "big") + bytes(4) + descriptor, alloc_len
