"""READ (10)/(16) and WRITE (10)/(16), the commands a host sends nearly all the time, by the
shortest route: one precompiled unpack of the CDB, a handful of comparisons, no BlockRange,
no generator over the buffers.

A fast handler takes only the plain case: a CDB of full length without protection bits, a
transfer of at least one block inside the volume and the transfer limit, and buffers that are
flat byte views holding exactly the transfer (for a write: each one whole blocks). Anything else
it declines by returning None, and the generic handler in rw.py runs. So every error and corner
case keeps one implementation and one set of sense data; tests/unit/scsi/test_fastpath.py
checks that both routes give the same results and write the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

from appliance.journal import OpKind, WriteOp
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult
from appliance.scsi.context import Context, Queued

# flags byte (RDPROTECT/WRPROTECT, DPO, FUA), LOGICAL BLOCK ADDRESS, TRANSFER LENGTH; each
# format spans the whole CDB, so its size is the CDB length the generic route requires.
_RW10: Final = struct.Struct(">xBIxHx")    # CDB bytes 1, 2..5, 7..8 of 10
_RW16: Final = struct.Struct(">xBQIxx")    # CDB bytes 1, 2..9, 10..13 of 16
_PROTECT: Final = 0xE0                     # byte 1 bits 7-5: protection information requested
_FUA: Final = 0x08
_WRITE: Final = OpKind.WRITE

FastHandler = Callable[[Context, ScsiCommand, struct.Struct], "ScsiResult | Queued | None"]


def _plain_range(ctx: Context, cdb: bytes, fmt: struct.Struct) -> tuple[int, int, int] | None:
    """(flags, lba, nblocks) when the CDB is one the fast route may take, else None."""
    if len(cdb) < fmt.size:
        return None
    flags, lba, nblocks = fmt.unpack_from(cdb)
    if (flags & _PROTECT or not 0 < nblocks <= ctx.max_transfer_blocks
            or lba + nblocks > ctx.volume.num_blocks):
        return None
    return flags, lba, nblocks


def _exact_views(bufs: Sequence[memoryview], nbytes: int, unit: int) -> bool:
    """The buffers are flat byte views, each a non-empty multiple of `unit` bytes, together
    exactly `nbytes`: what the ring hands out for an ordinary command."""
    total = 0
    for buf in bufs:
        if type(buf) is not memoryview or buf.format != "B" or buf.ndim != 1:
            return False
        size = buf.nbytes
        if size == 0 or size % unit:
            return False
        total += size
    return total == nbytes


def write(ctx: Context, cmd: ScsiCommand, fmt: struct.Struct) -> Queued | None:
    """WRITE (10)/(16) (`fmt` decodes the CDB): queued for the batch's group commit."""
    rng = _plain_range(ctx, cmd.cdb, fmt)
    if rng is None:
        return None
    flags, lba, nblocks = rng
    bs = ctx.volume.block_size
    data = cmd.data
    if not _exact_views(data, nblocks * bs, bs):
        return None
    if len(data) == 1:
        ops = [WriteOp(_WRITE, lba, nblocks, data[0])]
    else:
        ops = []
        for view in data:
            blocks = view.nbytes // bs
            ops.append(WriteOp(_WRITE, lba, blocks, view))
            lba += blocks
    return ctx.queue_write(ops, fua=bool(flags & _FUA), extents=[(rng[1], nblocks)])


def read(ctx: Context, cmd: ScsiCommand, fmt: struct.Struct) -> ScsiResult | None:
    """READ (10)/(16) (`fmt` decodes the CDB) into buffers of exactly the transfer."""
    rng = _plain_range(ctx, cmd.cdb, fmt)
    if rng is None:
        return None
    _, lba, nblocks = rng
    data = cmd.data
    if not _exact_views(data, nblocks * ctx.volume.block_size, 1):
        return None                  # longer buffers need READ_LEN: the generic route
    # FUA on a read changes nothing here: reads always come from the mirror (see rw.read).
    ctx.read_into(lba, nblocks, data)
    return GOOD


# opcode -> (handler, CDB format); the format is passed in, so no wrapper call per command.
FAST_HANDLERS: dict[int, tuple[FastHandler, struct.Struct]] = {
    0x28: (read, _RW10), 0x88: (read, _RW16), 0x2A: (write, _RW10), 0x8A: (write, _RW16),
}
