"""MODE SENSE (6)/(10) and MODE SELECT (6)/(10) (SPC-4 MODE SENSE/SELECT
commands and mode parameters; SBC-3 mode pages).

Pages: 0x01 read-write error recovery, 0x08 caching, 0x0A control; 0x3F = all of them.
The only changeable bit is WCE in the caching page: it is the Volume's write_cache_enabled.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.scsi import sense
from appliance.scsi.cdb import be, require_length

RW_ERROR_RECOVERY = 0x01
CACHING = 0x08
CONTROL = 0x0A
ALL_PAGES = 0x3F
PAGE_ORDER = (RW_ERROR_RECOVERY, CACHING, CONTROL)

# Page control (SPC-4 MODE SENSE(6) PC field).
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3

WCE_BIT = 0x04          # caching page byte 2 bit 2
DPOFUA = 0x10           # device-specific parameter: DPO and FUA supported (SBC-3 mode parameter header)


@dataclass(frozen=True, slots=True)
class ModeContext:
    """What the pages depend on."""

    wce: bool               # current write cache setting
    wce_default: bool       # the setting the volume was opened with
    num_blocks: int
    block_size: int


def page(code: int, pc: int, ctx: ModeContext) -> bytes:
    """One mode page for page control `pc` (current, changeable mask, default)."""
    if code == RW_ERROR_RECOVERY:
        # SBC-3 read-write error recovery page: all knobs zero (no retries to tune; nothing changeable).
        return bytes([0x01, 0x0A]) + bytes(10)
    if code == CACHING:
        # SBC-3 caching mode page, 20 bytes. WCE reflects whether GOOD may precede durability.
        body = bytearray(20)
        body[0:2] = b"\x08\x12"
        if pc == PC_CHANGEABLE or (ctx.wce if pc == PC_CURRENT else ctx.wce_default):
            body[2] = WCE_BIT
        return bytes(body)
    if code == CONTROL:
        body = bytearray(12)
        body[0:2] = b"\x0a\x0a"
        if pc != PC_CHANGEABLE:
            # spc4r31 7.5.7 control mode page: GLTSD=1 (no log parameters saved implicitly); QUEUE ALGORITHM
            # MODIFIER 1 = unrestricted reordering (we do reorder non-overlapping reads around
            # queued writes); TAS=1 as LIO's default; BUSY TIMEOUT PERIOD FFFFh = unlimited.
            body[2] = 0x02
            body[3] = 0x10
            body[5] = 0x40
            body[8:10] = b"\xff\xff"
        return bytes(body)
    raise KeyError(code)


def _block_descriptor(long_lba: bool, pc: int, ctx: ModeContext) -> bytes:
    """SBC-3 mode parameter block descriptors: short (8 bytes) or long LBA (16 bytes) block descriptor."""
    if pc == PC_CHANGEABLE:
        return bytes(16 if long_lba else 8)
    if long_lba:
        return ctx.num_blocks.to_bytes(8, "big") + bytes(4) + ctx.block_size.to_bytes(4, "big")
    blocks = min(ctx.num_blocks, 0xFFFFFFFF)
    return blocks.to_bytes(4, "big") + b"\x00" + ctx.block_size.to_bytes(3, "big")


def mode_sense(cdb: bytes, ctx: ModeContext) -> tuple[bytes, int]:
    """Full MODE SENSE response and allocation length (the caller truncates)."""
    ten = cdb[0] == 0x5A
    require_length(cdb, 10 if ten else 6)
    dbd = bool(cdb[1] & 0x08)
    long_lba = ten and bool(cdb[1] & 0x10)
    pc = cdb[2] >> 6
    code = cdb[2] & 0x3F
    subpage = cdb[3]
    alloc_len = be(cdb, 7, 2) if ten else cdb[4]
    if pc == PC_SAVED:
        raise sense.saving_parameters_not_supported()   # SPC-4: PC=11b needs saved pages
    if code == ALL_PAGES:
        if subpage not in (0x00, 0xFF):
            raise sense.invalid_field_in_cdb(3, None, "no subpages")
        codes = PAGE_ORDER
    elif code in PAGE_ORDER:
        if subpage:
            raise sense.invalid_field_in_cdb(3, None, "no subpages")
        codes = (code,)
    else:
        raise sense.invalid_field_in_cdb(2, 5, f"mode page {code:#04x} not supported")
    pages = b"".join(page(page_code, pc, ctx) for page_code in codes)
    descriptor = b"" if dbd else _block_descriptor(long_lba, pc, ctx)
    device_specific = DPOFUA                              # WP=0: we are never read-only
    if ten:
        total = 8 + len(descriptor) + len(pages)
        header = ((total - 2).to_bytes(2, "big") + bytes([0, device_specific])
                  + bytes([0x01 if descriptor and long_lba else 0x00, 0])
                  + len(descriptor).to_bytes(2, "big"))
    else:
        total = 4 + len(descriptor) + len(pages)
        if total > 256:   # cannot happen with our pages; SPC-4 forbids a truncated length
            raise sense.invalid_field_in_cdb(2, 5, "mode data too long for MODE SENSE(6)")
        header = bytes([total - 1, 0, device_specific, len(descriptor)])
    return header + descriptor + pages, alloc_len


def mode_select(cdb: bytes, params: bytes, ctx: ModeContext) -> bool:
    """Validate a MODE SELECT parameter list; return the new WCE. Nothing is applied unless
    the whole list is valid (SPC-4: a MODE SELECT that fails changes nothing).

    `params` is exactly PARAMETER LIST LENGTH bytes; the caller checked the CDB.
    """
    ten = cdb[0] == 0x55
    header_len = 8 if ten else 4
    if len(params) < header_len:
        raise sense.parameter_list_length_error("shorter than the mode parameter header")
    if ten:
        long_lba = bool(params[4] & 0x01)
        bd_len, bd_len_byte = be(params, 6, 2), 6
    else:
        long_lba = False
        bd_len, bd_len_byte = params[3], 3
    if bd_len not in (0, 16 if long_lba else 8):
        raise sense.invalid_field_in_parameter_list(bd_len_byte, None,
                                                    "one block descriptor at most")
    if header_len + bd_len > len(params):
        raise sense.parameter_list_length_error("block descriptor truncated")
    if bd_len:
        _check_block_descriptor(params, header_len, long_lba, ctx)
    new_wce = ctx.wce
    offset = header_len + bd_len
    while offset < len(params):
        if offset + 2 > len(params):
            raise sense.parameter_list_length_error("truncated mode page header")
        code, length = params[offset] & 0x3F, params[offset + 1]
        if params[offset] & 0x40:
            raise sense.invalid_field_in_parameter_list(offset, 6, "no subpages")
        if code not in PAGE_ORDER:
            raise sense.invalid_field_in_parameter_list(offset, 5, f"page {code:#04x}")
        current = page(code, PC_CURRENT, ctx)
        if length != len(current) - 2:
            raise sense.invalid_field_in_parameter_list(offset + 1, None, "page length")
        if offset + 2 + length > len(params):
            raise sense.parameter_list_length_error(f"page {code:#04x} truncated")
        changeable = page(code, PC_CHANGEABLE, ctx)
        for i in range(2, len(current)):
            diff = (params[offset + i] ^ current[i]) & ~changeable[i] & 0xFF
            if diff:
                raise sense.invalid_field_in_parameter_list(
                    offset + i, diff.bit_length() - 1, f"page {code:#04x} byte {i} fixed")
        if code == CACHING:
            new_wce = bool(params[offset + 2] & WCE_BIT)
        offset += 2 + length
    return new_wce


def _check_block_descriptor(params: bytes, start: int, long_lba: bool,
                            ctx: ModeContext) -> None:
    """The capacity and block length cannot be changed: accept only what we report (or a
    NUMBER OF LOGICAL BLOCKS of zero, which SBC-3 defines as "no change")."""
    if long_lba:
        blocks, length = be(params, start, 8), be(params, start + 12, 4)
        length_byte, current_blocks = start + 12, ctx.num_blocks
    else:
        blocks, length = be(params, start, 4), be(params, start + 5, 3)
        length_byte, current_blocks = start + 5, min(ctx.num_blocks, 0xFFFFFFFF)
    if blocks not in (0, current_blocks):
        raise sense.invalid_field_in_parameter_list(start, None, "capacity is fixed")
    if length != ctx.block_size:
        raise sense.invalid_field_in_parameter_list(length_byte, None, "block length is fixed")
