"""Host write batches before anything is written: validation, and cutting a batch bigger than
one journal append takes (pure functions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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

    Returns the data bytes the ops carry (the journal payload; what the on-flush overlay
    copies). WRITE SAME and UNMAP may span more than the transfer limit (their payload is one
    block or none), up to the volume. Every host write passes here: a plain WRITE is checked
    inline with no call; anything else goes through `_check_op`, which says what is wrong."""
    if not ops:
        raise InvalidRequest("empty batch")
    write = OpKind.WRITE
    payload = 0
    for i, op in enumerate(ops):
        if type(op) is WriteOp and op.kind is write:
            lba, nblocks, data = op.lba, op.nblocks, op.data
            size = (data.nbytes if type(data) is memoryview
                    else len(data) if type(data) is bytes else -1)
            if (type(lba) is int and type(nblocks) is int and lba >= 0
                    and 0 < nblocks <= max_transfer_blocks and lba + nblocks <= num_blocks
                    and size == nblocks * block_size):
                payload += size
                continue
        payload += _check_op(i, op, block_size, num_blocks, max_transfer_blocks)
    return payload


def _check_op(i: int, op: WriteOp, block_size: int, num_blocks: int,
              max_transfer_blocks: int) -> int:
    """The full check of one op: its payload bytes, or InvalidRequest naming the op."""
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
    return have


def split_batch(ops: Sequence[WriteOp],
                max_bytes: int) -> Iterator[tuple[int, Sequence[WriteOp]]]:
    """(index, ops) groups whose journal payload stays within one append's limit."""
    start, size = 0, 0
    for i, op in enumerate(ops):
        nbytes = memoryview(op.data).nbytes
        if i > start and size + nbytes > max_bytes:
            yield start, ops[start:i]
            start, size = i, 0
        size += nbytes
    yield start, ops[start:]
