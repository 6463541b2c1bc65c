"""UNMAP and WRITE SAME (10)/(16) (SBC-3 UNMAP, WRITE SAME
commands; logical block provisioning).

Both become journal ops without data copies: UNMAP → OpKind.UNMAP (no data), WRITE SAME →
OpKind.WRITE_SAME carrying the one Data-Out block as a view. Deallocated blocks read back
as zeros (LBPRZ=1), so WRITE SAME with UNMAP may only deallocate when the block is zeros.
"""

from __future__ import annotations

from appliance.journal import OpKind, WriteOp
from appliance.scsi import buffers, sense
from appliance.scsi.cdb import be, check_range, require_length
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult
from appliance.scsi.context import Context, Queued, check_data_out

UNMAP_HEADER = 8
UNMAP_DESCRIPTOR = 16


def unmap(ctx: Context, cmd: ScsiCommand) -> ScsiResult | Queued:
    """UNMAP (SBC-3 UNMAP command). All descriptors are checked before any is queued, so a bad list
    deallocates nothing. Zero-count descriptors are skipped; a truncated last descriptor is
    ignored (as the kernel's sbc_execute_unmap)."""
    cdb = cmd.cdb
    require_length(cdb, 10)
    if cdb[1] & 0x01:
        raise sense.invalid_field_in_cdb(1, 0, "ANCHOR not supported")   # VPD B2 ANC_SUP=0
    param_len = be(cdb, 7, 2)
    if param_len == 0:
        return GOOD      # SBC-3 UNMAP: not an error, nothing to do
    if param_len < UNMAP_HEADER:
        raise sense.parameter_list_length_error("UNMAP parameter list below 8 bytes")
    check_data_out(cmd, param_len)
    params = bytes(buffers.region(buffers.byte_views(cmd.data), 0, param_len))
    # UNMAP BLOCK DESCRIPTOR DATA LENGTH larger than what was sent: use what was sent.
    desc_len = min(be(params, 2, 2), param_len - UNMAP_HEADER)
    count = desc_len // UNMAP_DESCRIPTOR
    if count > ctx.limits.max_unmap_descriptors:
        raise sense.invalid_field_in_parameter_list(
            2, None, f"{count} descriptors above MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT")
    ranges: list[tuple[int, int]] = []
    total = 0
    for i in range(count):
        at = UNMAP_HEADER + i * UNMAP_DESCRIPTOR
        lba, nblocks = be(params, at, 8), be(params, at + 8, 4)
        total += nblocks
        if total > ctx.limits.max_unmap_lba_count:
            # SBC-3 UNMAP: the sum over all descriptors is bounded by MAXIMUM UNMAP LBA COUNT.
            raise sense.invalid_field_in_parameter_list(
                at + 8, None, "blocks above MAXIMUM UNMAP LBA COUNT")
        check_range(lba, nblocks, ctx.num_blocks)
        if nblocks:
            ranges.append((lba, nblocks))
    if not ranges:
        return GOOD
    ops = [WriteOp(OpKind.UNMAP, lba, blocks) for lba, blocks in ranges]
    return ctx.queue_write(ops, fua=False, extents=ranges)


def write_same(ctx: Context, cmd: ScsiCommand) -> ScsiResult | Queued:
    """WRITE SAME (10)/(16) (SBC-3 WRITE SAME commands)."""
    cdb = cmd.cdb
    sixteen = cdb[0] == 0x93
    require_length(cdb, 16 if sixteen else 10)
    if sixteen:
        lba, nblocks, count_byte = be(cdb, 2, 8), be(cdb, 10, 4), 10
    else:
        lba, nblocks, count_byte = be(cdb, 2, 4), be(cdb, 7, 2), 7
    flags = cdb[1]
    if flags & 0xE0:
        raise sense.invalid_field_in_cdb(1, 7, "protection information not supported")
    if flags & 0x10:
        raise sense.invalid_field_in_cdb(1, 4, "ANCHOR not supported")
    if flags & 0x06:
        # PBDATA/LBDATA (obsolete in SBC-4) need protection information / LBA stamping.
        raise sense.invalid_field_in_cdb(1, 2 if flags & 0x04 else 1, "PBDATA/LBDATA")
    deallocate = bool(flags & 0x08)
    ndob = sixteen and bool(flags & 0x01)      # NO DATA-OUT BUFFER: the block is zeros
    if nblocks == 0:
        # WSNZ=1 in VPD 0xB0: zero does not mean "to the end of the medium" here.
        raise sense.invalid_field_in_cdb(count_byte, None, "NUMBER OF LOGICAL BLOCKS is 0")
    if nblocks > ctx.limits.max_write_same_blocks:
        raise sense.invalid_field_in_cdb(count_byte, None, "above MAXIMUM WRITE SAME LENGTH")
    check_range(lba, nblocks, ctx.num_blocks)
    bs = ctx.block_size
    if ndob:
        check_data_out(cmd, 0)
        block: memoryview | None = None
    else:
        check_data_out(cmd, bs)
        block = buffers.region(buffers.byte_views(cmd.data), 0, bs)
    extents = [(lba, nblocks)]
    if deallocate and (block is None or block == bytes(bs)):
        return ctx.queue_write([WriteOp(OpKind.UNMAP, lba, nblocks)], fua=False,
                               extents=extents)
    data = block if block is not None else memoryview(bytes(bs))
    return ctx.queue_write([WriteOp(OpKind.WRITE_SAME, lba, nblocks, data)], fua=False,
                           extents=extents)
