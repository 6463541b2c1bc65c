"""Validation of host write batches before anything is written (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal import InvalidRequest, OpKind, WriteOp


def check_range(lba: int, nblocks: int, num_blocks: int, max_blocks: int) -> None:
    """Raise InvalidRequest unless [lba, lba+nblocks) is inside the volume and small enough."""
    if not isinstance(lba, int) or not isinstance(nblocks, int):
        raise InvalidRequest(f"lba and nblocks must be integers, got {lba!r}, {nblocks!r}")
    if lba < 0 or nblocks < 1:
        raise InvalidRequest(f"invalid range: lba {lba}, {nblocks} blocks")
    if lba + nblocks > num_blocks:
        raise InvalidRequest(f"blocks {lba}..{lba + nblocks - 1} are beyond the end of the "
                             f"volume ({num_blocks} blocks)")
    if nblocks > max_blocks:
        raise InvalidRequest(f"transfer of {nblocks} blocks exceeds the maximum of {max_blocks}")


def check_ops(ops: Sequence[WriteOp], *, block_size: int, num_blocks: int,
              max_transfer_blocks: int) -> int:
    """Validate a whole batch (so a bad op leaves the others unwritten too).

    Returns the payload bytes the batch moves to the mirror. WRITE SAME and UNMAP may span
    more than the transfer limit (their payload is one block or none), up to the volume."""
    if not ops:
        raise InvalidRequest("empty batch")
    total = 0
    for i, op in enumerate(ops):
        if not isinstance(op, WriteOp):
            raise InvalidRequest(f"op {i} is a {type(op).__name__}, not a WriteOp")
        limit = max_transfer_blocks if op.kind == OpKind.WRITE else num_blocks
        try:
            check_range(op.lba, op.nblocks, num_blocks, limit)
            want = {OpKind.WRITE: op.nblocks * block_size, OpKind.WRITE_SAME: block_size,
                    OpKind.UNMAP: 0}.get(op.kind)
            if want is None:
                raise InvalidRequest(f"unknown op kind {op.kind!r}")
            have = memoryview(op.data).nbytes
            if have != want:
                raise InvalidRequest(f"{OpKind(op.kind).name} of {op.nblocks} blocks carries "
                                     f"{have} bytes of data, expected {want}")
        except InvalidRequest as err:
            raise InvalidRequest(f"op {i}: {err}") from None
        total += op.nblocks * block_size
    return total
