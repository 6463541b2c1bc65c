"""READ, WRITE, WRITE AND VERIFY and VERIFY (SBC-3 commands of
those names).

Data is never copied here: reads land straight in the Data-In views, writes hand views of
the Data-Out buffers to the Volume as WriteOp data, one op per buffer (buffers are whole
blocks on the ring; a block straddling two buffers is the only thing joined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from appliance.journal import OpKind, WriteOp
from appliance.scsi import buffers, sense
from appliance.scsi.cdb import BlockRange, block_range, check_no_protection, check_range, fua
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult, Status
from appliance.scsi.context import Context, Queued, check_data_in, check_data_out

VERIFY_CHUNK_BYTES: Final = 1 << 20      # VERIFY reads the medium in pieces of this size


def _decode(ctx: Context, cmd: ScsiCommand) -> BlockRange:
    """Common checks of every data command (SBC-3; docs/scsi.md): protection bits, maximum transfer
    length (SBC-3 Block Limits VPD page: beyond it → INVALID FIELD IN CDB), capacity."""
    rng = block_range(cmd.cdb)
    check_no_protection(cmd.cdb)
    if rng.nblocks > ctx.limits.max_transfer_blocks(ctx.block_size):
        raise sense.invalid_field_in_cdb(rng.length_byte, None,
                                         "transfer length above MAXIMUM TRANSFER LENGTH")
    check_range(rng.lba, rng.nblocks, ctx.num_blocks)
    return rng


def write_ops(lba: int, bufs: Sequence[memoryview], nbytes: int,
              block_size: int) -> list[WriteOp]:
    """WRITE ops for `nbytes` of Data-Out starting at `lba`, one per block-aligned piece."""
    return [WriteOp(OpKind.WRITE, lba + first, len(view) // block_size, view)
            for first, view in buffers.block_pieces(bufs, nbytes, block_size)]


def read(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """READ (6)/(10)/(12)/(16). FUA on a read asks for data from the medium: our reads
    always come from the mirror, after any queued overlapping write is committed."""
    rng = _decode(ctx, cmd)
    nbytes = rng.nblocks * ctx.block_size
    check_data_in(cmd, nbytes)
    bufs = buffers.byte_views(cmd.data)
    if nbytes:
        ctx.read_into(rng.lba, rng.nblocks, buffers.take(bufs, nbytes))
    if buffers.total_len(bufs) == nbytes:
        return GOOD
    buffers.zero_after(bufs, nbytes)
    return ScsiResult(Status.GOOD, read_len=nbytes)


def write(ctx: Context, cmd: ScsiCommand) -> ScsiResult | Queued:
    """WRITE (6)/(10)/(12)/(16): queued for the batch's group commit."""
    rng = _decode(ctx, cmd)
    nbytes = rng.nblocks * ctx.block_size
    check_data_out(cmd, nbytes)
    if not nbytes:
        return GOOD      # SBC-3 WRITE (10): a zero transfer length is not an error
    ops = write_ops(rng.lba, buffers.byte_views(cmd.data), nbytes, ctx.block_size)
    return ctx.queue_write(ops, fua=fua(cmd.cdb), extents=[(rng.lba, rng.nblocks)])


def _chunk_blocks(ctx: Context) -> int:
    """Blocks per medium read of VERIFY: bounded memory, and never above the transfer limit
    (the Volume refuses larger reads)."""
    limit = min(VERIFY_CHUNK_BYTES, ctx.limits.max_transfer_bytes)
    return max(limit // ctx.block_size, 1)


def _first_difference(expected: memoryview, actual: memoryview) -> int | None:
    if expected == actual:
        return None
    # Narrow down in halves: bytes comparison runs in C, only log2(n) Python steps.
    lo, hi = 0, len(expected)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if expected[lo:mid] != actual[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo


def _compare_with_medium(ctx: Context, lba: int, nblocks: int,
                         expected: Sequence[memoryview], repeat_one_block: bool) -> None:
    """Read [lba, lba+nblocks) in chunks and compare with the Data-Out; MISCOMPARE with the
    offset from the start of the Data-Out buffer (SBC-3 VERIFY)."""
    bs = ctx.block_size
    chunk_blocks = _chunk_blocks(ctx)
    scratch = bytearray(min(nblocks, chunk_blocks) * bs)
    pattern = buffers.region(expected, 0, bs) if repeat_one_block else None
    done = 0
    while done < nblocks:
        count = min(chunk_blocks, nblocks - done)
        view = memoryview(scratch)[: count * bs]
        ctx.read_into(lba + done, count, [view])
        if pattern is None:
            want = buffers.region(expected, done * bs, count * bs)
            offset = _first_difference(want, view)
            if offset is not None:
                raise sense.miscompare(done * bs + offset)
        else:
            for i in range(count):
                offset = _first_difference(pattern, view[i * bs:(i + 1) * bs])
                if offset is not None:
                    # BYTCHK=11b: the Data-Out is one block; the offset counts within it.
                    raise sense.miscompare(offset)
        done += count


def verify(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """VERIFY (10)/(12)/(16) (SBC-3/SBC-4 VERIFY commands). BYTCHK (byte 1 bits 2-1):
    00b check the medium (read it: a failing mirror answers MEDIUM ERROR);
    01b compare the Data-Out (n blocks) with the medium;
    11b compare one Data-Out block with every block; 10b is reserved → INVALID FIELD IN CDB.
    """
    rng = block_range(cmd.cdb)
    check_no_protection(cmd.cdb)
    bytchk = (cmd.cdb[1] >> 1) & 0x03
    if bytchk == 0b10:
        raise sense.invalid_field_in_cdb(1, 2, "BYTCHK 10b is reserved")
    if bytchk and rng.nblocks > ctx.limits.max_transfer_blocks(ctx.block_size):
        raise sense.invalid_field_in_cdb(rng.length_byte, None,
                                         "verification length above MAXIMUM TRANSFER LENGTH")
    check_range(rng.lba, rng.nblocks, ctx.num_blocks)
    if rng.nblocks == 0:
        return GOOD       # SBC-3 VERIFY: zero VERIFICATION LENGTH is not an error
    if bytchk == 0b01:
        check_data_out(cmd, rng.nblocks * ctx.block_size)
    elif bytchk == 0b11:
        check_data_out(cmd, ctx.block_size)
    data = buffers.byte_views(cmd.data)
    if bytchk:
        _compare_with_medium(ctx, rng.lba, rng.nblocks, data, bytchk == 0b11)
    else:
        # Medium check: read everything back; nothing to compare with.
        _read_through(ctx, rng.lba, rng.nblocks)
    return GOOD


def _read_through(ctx: Context, lba: int, nblocks: int) -> None:
    bs = ctx.block_size
    chunk_blocks = _chunk_blocks(ctx)
    scratch = memoryview(bytearray(min(nblocks, chunk_blocks) * bs))
    for start in range(0, nblocks, chunk_blocks):
        count = min(chunk_blocks, nblocks - start)
        ctx.read_into(lba + start, count, [scratch[: count * bs]])


def write_and_verify(ctx: Context, cmd: ScsiCommand) -> ScsiResult:
    """WRITE AND VERIFY (10)/(12)/(16) (SBC-3 WRITE AND VERIFY commands): write, then verify the medium.

    The write goes to the medium (committed durably now, not batched) before the verify
    reads it back; BYTCHK=1 compares the read-back with the Data-Out, BYTCHK=0 only checks
    that it reads. Bit 2 (BYTCHK 1x) is reserved for this command.
    """
    rng = _decode(ctx, cmd)
    if cmd.cdb[1] & 0x04:
        raise sense.invalid_field_in_cdb(1, 2, "BYTCHK 1xb is reserved")
    nbytes = rng.nblocks * ctx.block_size
    check_data_out(cmd, nbytes)
    if not nbytes:
        return GOOD
    data = buffers.byte_views(cmd.data)
    ctx.barrier()
    ctx.volume.submit(write_ops(rng.lba, data, nbytes, ctx.block_size), fua=True)
    if cmd.cdb[1] & 0x02:
        _compare_with_medium(ctx, rng.lba, rng.nblocks, data, repeat_one_block=False)
    else:
        _read_through(ctx, rng.lba, rng.nblocks)
    return GOOD


READ_OPCODES: Final = (0x08, 0x28, 0xA8, 0x88)
WRITE_OPCODES: Final = (0x0A, 0x2A, 0xAA, 0x8A)
VERIFY_OPCODES: Final = (0x2F, 0xAF, 0x8F)
WRITE_AND_VERIFY_OPCODES: Final = (0x2E, 0xAE, 0x8E)
