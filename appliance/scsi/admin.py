"""The commands that do not move block data: INQUIRY, READ CAPACITY, MODE SENSE/SELECT,
TEST UNIT READY, REQUEST SENSE, START STOP UNIT, SYNCHRONIZE CACHE."""

from __future__ import annotations

from appliance.scsi import buffers, capacity, inquiry, mode, sense
from appliance.scsi.cdb import be, check_range, require_length
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult
from appliance.scsi.context import Context, check_data_out, respond


def do_inquiry(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    data, alloc_len = inquiry.inquiry(cmd.cdb, ctx.identity, ctx.limits, ctx.block_size)
    return respond(data, alloc_len, buffers.byte_views(cmd.data))


def do_read_capacity_10(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    data = capacity.read_capacity_10(cmd.cdb, ctx.num_blocks, ctx.block_size)
    return respond(data, len(data), buffers.byte_views(cmd.data))


def do_service_action_in_16(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """SERVICE ACTION IN (16): READ CAPACITY (16) and GET LBA STATUS. Other service actions
    are answered as the kernel does: INVALID FIELD IN CDB on the SERVICE ACTION field."""
    require_length(cmd.cdb, 16)
    action = cmd.cdb[1] & 0x1F
    if action == 0x10:
        data, alloc_len = capacity.read_capacity_16(
            cmd.cdb, ctx.num_blocks, ctx.block_size,
            ctx.limits.blocks_per_physical(ctx.block_size))
    elif action == 0x12:
        data, alloc_len = capacity.get_lba_status(cmd.cdb, ctx.num_blocks)
    else:
        raise sense.invalid_field_in_cdb(1, 4, f"service action {action:#04x}")
    return respond(data, alloc_len, buffers.byte_views(cmd.data))


def _mode_context(ctx: Context) -> mode.ModeContext:
    return mode.ModeContext(wce=bool(ctx.volume.write_cache_enabled),
                            wce_default=ctx.wce_default,
                            num_blocks=ctx.num_blocks, block_size=ctx.block_size)


def do_mode_sense(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    data, alloc_len = mode.mode_sense(cmd.cdb, _mode_context(ctx))
    return respond(data, alloc_len, buffers.byte_views(cmd.data))


def do_mode_select(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """MODE SELECT (6)/(10) (SPC-4, MODE SELECT commands): PF=1 required (we only speak page format),
    SP=1 refused (nothing is saved across restarts: WCE comes from the volume config)."""
    cdb = cmd.cdb
    ten = cdb[0] == 0x55
    require_length(cdb, 10 if ten else 6)
    if not cdb[1] & 0x10:
        raise sense.invalid_field_in_cdb(1, 4, "PF=0: vendor-specific pages not supported")
    if cdb[1] & 0x01:
        raise sense.invalid_field_in_cdb(1, 0, "SP=1: saving pages not supported")
    param_len = be(cdb, 7, 2) if ten else cdb[4]
    if param_len == 0:
        return GOOD      # SPC-4 MODE SELECT: a zero PARAMETER LIST LENGTH is not an error
    check_data_out(cmd, param_len)
    params = bytes(buffers.region(buffers.byte_views(cmd.data), 0, param_len))
    new_wce = mode.mode_select(cdb, params, _mode_context(ctx))
    ctx.barrier()
    if new_wce != bool(ctx.volume.write_cache_enabled):
        if not new_wce:
            # Write-through from now on; make what was cached durable first, so that after
            # GOOD nothing acknowledged depends on a later SYNCHRONIZE CACHE.
            ctx.volume.flush()
        ctx.volume.write_cache_enabled = new_wce
    return GOOD


def do_test_unit_ready(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    return GOOD


def do_request_sense(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """REQUEST SENSE (SPC-4, REQUEST SENSE command): the pending unit attention (clearing it), else NO SENSE.
    Only fixed format: DESC=1 is refused, as the kernel's own emulation does."""
    require_length(cmd.cdb, 6)
    if cmd.cdb[1] & 0x01:
        raise sense.invalid_field_in_cdb(1, 0, "descriptor format sense not supported")
    pending = ctx.pop_unit_attention()
    data = pending.sense() if pending is not None else sense.no_sense()
    return respond(data, cmd.cdb[4], buffers.byte_views(cmd.data))


def do_start_stop_unit(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """START STOP UNIT (SBC-3 r36 5.25). The disk is always started: START=1 is GOOD; stopping,
    power conditions and load/eject (no removable medium) are refused, like tcmu-runner."""
    require_length(cmd.cdb, 6)
    byte4 = cmd.cdb[4]
    if byte4 & 0xF0:
        raise sense.invalid_field_in_cdb(4, 7, "power conditions not supported")
    if byte4 & 0x02:
        raise sense.invalid_field_in_cdb(4, 1, "LOEJ: no removable medium")
    if not byte4 & 0x01:
        raise sense.invalid_field_in_cdb(4, 0, "the unit cannot be stopped")
    return GOOD


def do_synchronize_cache(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """SYNCHRONIZE CACHE (10)/(16) (SBC-3 r36 5.26/5.27): everything acknowledged so far becomes
    durable. The range is checked but the whole volume is flushed (one fdatasync covers all).
    IMMED is honoured by simply finishing the flush first, which SBC allows."""
    cdb = cmd.cdb
    if cdb[0] == 0x91:
        require_length(cdb, 16)
        lba, nblocks = be(cdb, 2, 8), be(cdb, 10, 4)
    else:
        require_length(cdb, 10)
        lba, nblocks = be(cdb, 2, 4), be(cdb, 7, 2)
    # NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
    check_range(lba, nblocks, ctx.num_blocks)
    ctx.barrier()
    ctx.volume.flush()
    return GOOD
