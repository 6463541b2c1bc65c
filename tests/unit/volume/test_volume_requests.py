"""check_ops: the inline check of a plain WRITE and the full check agree, and the payload it
returns is what the journal and the on-flush overlay carry."""

from __future__ import annotations

import array

import pytest

from appliance.compiled import COMPILED, module_form
from appliance.journal import InvalidRequest, OpKind, WriteOp
from appliance.volume.requests import check_ops

BS = 512
GEOMETRY = {"block_size": BS, "num_blocks": 64, "max_transfer_blocks": 8}


def test_payload_counts_data_bytes_of_every_kind():
    ops = [WriteOp(OpKind.WRITE, 0, 2, bytes(2 * BS)),
           WriteOp(OpKind.WRITE, 2, 1, memoryview(bytearray(BS))),
           WriteOp(OpKind.WRITE_SAME, 10, 30, bytes(BS)),       # beyond the transfer limit
           WriteOp(OpKind.UNMAP, 40, 24, b"")]
    assert check_ops(ops, **GEOMETRY) == 3 * BS + BS


@pytest.mark.parametrize("data", [bytearray(2 * BS), memoryview(bytearray(2 * BS)).cast("I"),
                                  array.array("I", bytes(2 * BS))])
def test_other_buffer_types_take_the_full_check_and_count_bytes(data):
    # Not bytes or a byte memoryview: len() is not the byte count for every type.
    assert check_ops([WriteOp(OpKind.WRITE, 4, 2, data)], **GEOMETRY) == 2 * BS


@pytest.mark.parametrize("op, message", [
    (WriteOp(OpKind.WRITE, 63, 2, bytes(2 * BS)), "beyond the end"),
    (WriteOp(OpKind.WRITE, 0, 9, bytes(9 * BS)), "exceeds the maximum"),
    (WriteOp(OpKind.WRITE, 0, 2, memoryview(bytes(2 * BS + 4))), "carries 1028 bytes"),
    (WriteOp(OpKind.WRITE, 0, 1, array.array("I", bytes(BS // 2))), "carries 256 bytes"),
])
def test_a_bad_write_is_named_by_its_index(op, message):
    with pytest.raises(InvalidRequest, match=rf"op 1: .*{message}"):
        check_ops([WriteOp(OpKind.WRITE, 0, 1, bytes(BS)), op], **GEOMETRY)


def test_a_non_integer_lba_is_refused_in_either_form():
    """Compiled, WriteOp's typed constructor refuses it (nothing to check later);
    interpreted, the op is made and check_ops names it."""
    if module_form("appliance.journal.model") == COMPILED:
        with pytest.raises(TypeError, match="int object expected; got float"):
            WriteOp(OpKind.WRITE, 0.0, 1, bytes(BS))
        return
    with pytest.raises(InvalidRequest, match="op 1: .*must be integers"):
        check_ops([WriteOp(OpKind.WRITE, 0, 1, bytes(BS)),
                   WriteOp(OpKind.WRITE, 0.0, 1, bytes(BS))], **GEOMETRY)
