"""Byte layout of the TCMU shared region (Linux 6.1 `include/uapi/linux/target_core_user.h`).

Pure functions over a memoryview of the whole mmap'd region. Every offset passed in or
returned is relative to the start of the region, as the kernel's "no embedded pointers"
rule requires. Both sides use these helpers: the device loop (user side) and the ring
simulation (kernel side), so the simulation cannot drift from what the handler parses.

All integers are native-endian; x86-64 and arm64 are little-endian, so "<" is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, NamedTuple

MAILBOX_VERSION: Final = 2

# struct tcmu_mailbox (packed; cmd_tail is on its own 64-byte cache line)
MB_VERSION: Final = 0
MB_FLAGS: Final = 2
MB_CMDR_OFF: Final = 4
MB_CMDR_SIZE: Final = 8
MB_CMD_HEAD: Final = 12
MB_CMD_TAIL: Final = 64
MAILBOX_SIZE: Final = 128

FLAG_CAP_OOOC: Final = 0x1
FLAG_CAP_READ_LEN: Final = 0x2
FLAG_CAP_TMR: Final = 0x4
FLAG_CAP_KEEP_BUF: Final = 0x8
ALL_CAPS: Final = FLAG_CAP_OOOC | FLAG_CAP_READ_LEN | FLAG_CAP_TMR | FLAG_CAP_KEEP_BUF

# enum tcmu_opcode
OP_PAD: Final = 0
OP_CMD: Final = 1
OP_TMR: Final = 2
OP_MASK: Final = 0x7
OP_ALIGN_SIZE: Final = 8

# tcmu_cmd_entry_hdr.uflags
UFLAG_UNKNOWN_OP: Final = 0x1
UFLAG_READ_LEN: Final = 0x2
UFLAG_KEEP_BUF: Final = 0x4

# struct tcmu_cmd_entry_hdr
HDR_LEN_OP: Final = 0
HDR_CMD_ID: Final = 4
HDR_KFLAGS: Final = 6
HDR_UFLAGS: Final = 7
HDR_SIZE: Final = 8

# struct tcmu_cmd_entry, req arm (inner struct not packed: cdb_off at 24)
REQ_IOV_CNT: Final = 8
REQ_IOV_BIDI_CNT: Final = 12
REQ_IOV_DIF_CNT: Final = 16
REQ_CDB_OFF: Final = 24
REQ_IOV: Final = 48
IOVEC_SIZE: Final = 16

# rsp arm, written over the same bytes as req
RSP_SCSI_STATUS: Final = 8
RSP_READ_LEN: Final = 12
RSP_SENSE: Final = 16
SENSE_BUFFERSIZE: Final = 96

CMD_ENTRY_SIZE: Final = 112  # sizeof(struct tcmu_cmd_entry)

# struct tcmu_tmr_entry
TMR_TYPE: Final = 8
TMR_CMD_CNT: Final = 12
TMR_CMD_IDS: Final = 32

_CDB_LEN_BY_GROUP: Final = (6, 10, 10, 12, 16, 12, 10, 10)
_VARIABLE_LENGTH_CDB: Final = 0x7F

# Precompiled formats of the fields every command passes (the hot paths unpack them once).
_HDR: Final = struct.Struct("<IHBB")                 # len_op, cmd_id, kflags, uflags
_REQ: Final = struct.Struct("<IHBBIII4xQ")           # header + iov_cnt, bidi_cnt, dif_cnt, cdb_off
_IOVEC: Final = struct.Struct("<QQ")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_ZERO_SENSE: Final = bytes(SENSE_BUFFERSIZE)
_new_tuple = tuple.__new__


class LayoutError(ValueError):
    """The region does not hold what the 6.1 layout says it should."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    version: int
    flags: int
    cmdr_off: int
    cmdr_size: int


class EntryHeader(NamedTuple):
    length: int
    op: int
    cmd_id: int
    kflags: int
    uflags: int


class CmdRequest(NamedTuple):
    """A CMD entry's request, copied out of the ring (the rsp arm will overwrite it).

    A NamedTuple, not a dataclass: one is built per command and a tuple is the cheapest
    immutable record Python has."""

    cmd_id: int
    cdb: bytes
    iovecs: tuple[tuple[int, int], ...]  # (offset from region start, length)
    bidi_count: int                      # the last `bidi_count` iovecs are Data-In of a BIDI


def read_mailbox(region: memoryview) -> Mailbox:
    version, flags, cmdr_off, cmdr_size = struct.unpack_from("<HHII", region, MB_VERSION)
    return Mailbox(version, flags, cmdr_off, cmdr_size)


def write_mailbox(region: memoryview, *, cmdr_off: int, cmdr_size: int,
                  flags: int = ALL_CAPS, version: int = MAILBOX_VERSION) -> None:
    """Kernel side: what tcmu_configure_device writes (head and tail start at 0)."""
    struct.pack_into("<HHIII", region, MB_VERSION, version, flags, cmdr_off, cmdr_size, 0)
    struct.pack_into("<I", region, MB_CMD_TAIL, 0)


def check_mailbox(mb: Mailbox, region_size: int) -> None:
    """Refuse a region whose mailbox does not describe a 6.1-style ring inside it."""
    if mb.version != MAILBOX_VERSION:
        raise LayoutError(f"TCMU mailbox version {mb.version}, this handler speaks "
                          f"version {MAILBOX_VERSION}")
    if mb.cmdr_off < MAILBOX_SIZE or mb.cmdr_size <= CMD_ENTRY_SIZE:
        raise LayoutError(f"implausible ring: cmdr_off={mb.cmdr_off} cmdr_size={mb.cmdr_size}")
    if mb.cmdr_off + mb.cmdr_size > region_size:
        raise LayoutError(f"ring ends at {mb.cmdr_off + mb.cmdr_size}, past the "
                          f"{region_size}-byte mapping")


def data_area_offset(mb: Mailbox) -> int:
    return mb.cmdr_off + mb.cmdr_size


def read_header(region: memoryview, off: int) -> EntryHeader:
    len_op, cmd_id, kflags, uflags = _HDR.unpack_from(region, off)
    return EntryHeader(len_op & ~OP_MASK, len_op & OP_MASK, cmd_id, kflags, uflags)


def write_header(region: memoryview, off: int, *, length: int, op: int, cmd_id: int = 0,
                 kflags: int = 0, uflags: int = 0) -> None:
    if length % OP_ALIGN_SIZE:
        raise LayoutError(f"entry length {length} is not a multiple of {OP_ALIGN_SIZE}")
    struct.pack_into("<IHBB", region, off, length | op, cmd_id, kflags, uflags)


def read_len_op_id(region: memoryview, off: int) -> tuple[int, int]:
    """(length, op) and cmd_id of the entry at `off` without building an EntryHeader: the
    ring loops call this for every entry."""
    len_op, cmd_id, _, _ = _HDR.unpack_from(region, off)
    return len_op, cmd_id


def set_cmd_id(region: memoryview, off: int, cmd_id: int) -> None:
    _U16.pack_into(region, off + HDR_CMD_ID, cmd_id)


def or_uflags(region: memoryview, off: int, flags: int) -> None:
    region[off + HDR_UFLAGS] |= flags


def scsi_command_size(cdb_head: bytes | memoryview) -> int:
    """CDB length from the opcode's group code, as the kernel's scsi_command_size() does.

    `cdb_head` needs byte 0, and byte 7 for a variable-length (0x7F) CDB.
    """
    opcode = cdb_head[0]
    if opcode == _VARIABLE_LENGTH_CDB:
        return cdb_head[7] + 8
    return _CDB_LEN_BY_GROUP[(opcode >> 5) & 7]


def cmd_entry_base_size(iov_total: int) -> int:
    """tcmu_cmd_get_base_cmd_size: header + iovecs, at least sizeof(struct tcmu_cmd_entry)."""
    return max(REQ_IOV + IOVEC_SIZE * iov_total, CMD_ENTRY_SIZE)


def cmd_entry_size(iov_total: int, cdb_len: int) -> int:
    """tcmu_cmd_get_cmd_size: base + CDB rounded up to the 8-byte entry alignment."""
    return cmd_entry_base_size(iov_total) + _round_up(cdb_len, OP_ALIGN_SIZE)


def tmr_entry_size(cmd_cnt: int) -> int:
    return _round_up(TMR_CMD_IDS + 2 * cmd_cnt, OP_ALIGN_SIZE)


def read_cmd_request(region: memoryview, off: int, region_size: int,
                     data_off: int = 0) -> CmdRequest:
    """Copy the CDB and iovec list of the CMD entry at `off` out of the ring.

    Offsets are checked against the mapping (and iovecs against the data area starting at
    `data_off`), so a corrupt entry raises LayoutError instead of letting the SCSI layer write
    over the ring or outside the region. Header and request fields come from one unpack, and
    the usual single iovec from another: this runs for every command.
    """
    len_op, cmd_id, _, _, iov_cnt, bidi_cnt, _dif_cnt, cdb_off = _REQ.unpack_from(region, off)
    length = len_op & ~OP_MASK
    total = iov_cnt + bidi_cnt
    if REQ_IOV + IOVEC_SIZE * total > length:
        raise LayoutError(f"cmd {cmd_id}: {total} iovecs do not fit a {length}-byte entry")
    if total == 1:
        iovecs: tuple[tuple[int, int], ...] = (_IOVEC.unpack_from(region, off + REQ_IOV),)
    else:
        iovecs = tuple(_IOVEC.iter_unpack(region[off + REQ_IOV: off + REQ_IOV + IOVEC_SIZE * total]))
    for base, iov_len in iovecs:
        if base < data_off or base + iov_len > region_size:
            raise LayoutError(f"cmd {cmd_id}: iovec {base:#x}+{iov_len} outside the data area")
    if cdb_off >= region_size:
        raise LayoutError(f"cmd {cmd_id}: cdb_off {cdb_off:#x} outside the region")
    opcode = region[cdb_off]
    if opcode == _VARIABLE_LENGTH_CDB:
        cdb_len = scsi_command_size(region[cdb_off: min(cdb_off + 8, region_size)])
    else:
        cdb_len = _CDB_LEN_BY_GROUP[opcode >> 5]
    if cdb_off + cdb_len > region_size:
        raise LayoutError(f"cmd {cmd_id}: CDB at {cdb_off:#x} runs past the region")
    # tuple.__new__ is what CmdRequest(...) ends in, without the generated __new__'s frame
    # (which stays interpreted code even when this module is compiled).
    return _new_tuple(CmdRequest,
                      (cmd_id, bytes(region[cdb_off: cdb_off + cdb_len]), iovecs, bidi_cnt))


def write_cmd_request(region: memoryview, off: int, *, cmd_id: int, cdb: bytes,
                      iovecs: list[tuple[int, int]], bidi_count: int = 0) -> int:
    """Kernel side (queue_cmd_ring): lay out a CMD entry at `off`; returns its length."""
    total = len(iovecs)
    base = cmd_entry_base_size(total)
    length = base + _round_up(len(cdb), OP_ALIGN_SIZE)
    region[off: off + base] = bytes(base)
    write_header(region, off, length=length, op=OP_CMD, cmd_id=cmd_id)
    struct.pack_into("<III", region, off + REQ_IOV_CNT, total - bidi_count, bidi_count, 0)
    struct.pack_into("<Q", region, off + REQ_CDB_OFF, off + base)
    for i, (iov_base, iov_len) in enumerate(iovecs):
        struct.pack_into("<QQ", region, off + REQ_IOV + IOVEC_SIZE * i, iov_base, iov_len)
    region[off + base: off + base + len(cdb)] = cdb
    return length


def write_tmr(region: memoryview, off: int, *, tmr_type: int, cmd_ids: list[int]) -> int:
    """Kernel side (queue_tmr_ring): a TMR entry listing the affected ring commands."""
    length = tmr_entry_size(len(cmd_ids))
    region[off: off + length] = bytes(length)
    write_header(region, off, length=length, op=OP_TMR)
    struct.pack_into("<BxxxI", region, off + TMR_TYPE, tmr_type, len(cmd_ids))
    struct.pack_into(f"<{len(cmd_ids)}H", region, off + TMR_CMD_IDS, *cmd_ids)
    return length


def write_response(region: memoryview, off: int, *, status: int, sense: bytes = b"",
                   read_len: int | None = None) -> None:
    """User side: fill the rsp arm. Destroys the request's iov_cnt..__pad2 (they alias)."""
    if len(sense) > SENSE_BUFFERSIZE:
        raise LayoutError(f"sense of {len(sense)} bytes exceeds {SENSE_BUFFERSIZE}")
    region[off + RSP_SCSI_STATUS] = status
    # The kernel copies sense only for CHECK CONDITION; zeroing it anyway costs one memcpy and
    # leaves no request bytes in a buffer someone might read.
    region[off + RSP_SENSE: off + RSP_SENSE + SENSE_BUFFERSIZE] = (
        sense.ljust(SENSE_BUFFERSIZE, b"\0") if sense else _ZERO_SENSE)
    if read_len is not None:
        _U32.pack_into(region, off + RSP_READ_LEN, read_len)
        or_uflags(region, off, UFLAG_READ_LEN)


def write_good_response(region: memoryview, off: int) -> None:
    """`write_response` for plain GOOD (no sense, no READ_LEN), without its checks."""
    region[off + RSP_SCSI_STATUS] = 0
    region[off + RSP_SENSE: off + RSP_SENSE + SENSE_BUFFERSIZE] = _ZERO_SENSE


def read_response(region: memoryview, off: int) -> tuple[int, bytes, int]:
    """Kernel side: (scsi_status, sense_buffer, read_len) of a completed entry."""
    status = region[off + RSP_SCSI_STATUS]
    (read_len,) = struct.unpack_from("<I", region, off + RSP_READ_LEN)
    sense = bytes(region[off + RSP_SENSE: off + RSP_SENSE + SENSE_BUFFERSIZE])
    return status, sense, read_len


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align
