"""COMPARE AND WRITE (SBC-3, COMPARE AND WRITE command): the atomic test-and-set VMware ATS and cluster file
systems rely on. Atomicity against other writes is the Volume's (compare_and_write holds its
write lock across read, compare and write); we only decode, check and map the result."""

from __future__ import annotations

from appliance.scsi import buffers, sense
from appliance.scsi.cdb import be, check_no_protection, check_range, require_length
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult
from appliance.scsi.context import Context, check_data_out


def compare_and_write(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    cdb = cmd.cdb
    require_length(cdb, 16)
    check_no_protection(cdb)
    lba, nblocks = be(cdb, 2, 8), cdb[13]
    if nblocks == 0:
        if buffers.total_len(cmd.data):
            # Data-Out with a zero count: the count is not what the initiator meant (libiscsi's
            # 256 blocks wrap to 0 in this one-byte field). LIO refuses its own backstores'
            # write with a mismatched transfer; refuse here too instead of reporting success.
            raise sense.invalid_field_in_cdb(13, None, "NUMBER OF LOGICAL BLOCKS 0 with Data-Out")
        return GOOD   # SBC-3 COMPARE AND WRITE: 0 blocks = no compare, no transfer, no write; not an error
    if nblocks > ctx.limits.max_compare_and_write_blocks:
        raise sense.invalid_field_in_cdb(13, None, "above MAXIMUM COMPARE AND WRITE LENGTH")
    check_range(lba, nblocks, ctx.num_blocks)
    half = nblocks * ctx.block_size
    # Data-Out: the verify instance (n blocks) followed by the write instance (n blocks).
    check_data_out(cmd, 2 * half)
    data = buffers.byte_views(cmd.data)
    verify = buffers.region(data, 0, half)
    write = buffers.region(data, half, half)
    # Queued writes of this batch come first: the compare must see them.
    ctx.barrier()
    durable = bool(cdb[1] & 0x08) or not ctx.volume.write_cache_enabled
    offset = ctx.volume.compare_and_write(lba, verify, write, fua=durable)
    if offset is not None:
        # INFORMATION = offset of the first differing byte from the start of the Data-Out.
        raise sense.miscompare(offset)
    return GOOD
