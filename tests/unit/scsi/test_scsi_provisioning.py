"""UNMAP and WRITE SAME (10)/(16): parameter lists, limits, and what reads back."""

from __future__ import annotations

import struct

import pytest

from appliance.journal import OpKind
from tests.unit.scsi.conftest import NUM_BLOCKS, medium
from tests.unit.scsi.helpers import assert_check, pattern, read10, run, write10

BS = 512


def unmap_cdb(param_len: int, anchor: bool = False) -> bytes:
    return bytes([0x42, 1 if anchor else 0, 0, 0, 0, 0, 0]) + struct.pack(">HB", param_len, 0)


def unmap_params(*ranges: tuple[int, int], bd_len: int | None = None) -> bytes:
    descriptors = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    bd = len(descriptors) if bd_len is None else bd_len
    return struct.pack(">HH4x", 6 + len(descriptors), bd) + descriptors


def fill(disk, lba: int, n: int) -> bytes:
    data = pattern(n * BS, seed=lba)
    assert run(disk, write10(lba, n), out=data)[0].good
    return data


def test_unmap_reads_back_zeros(disk, volume, calls):
    data = fill(disk, 10, 20)
    params = unmap_params((12, 3), (20, 0), (25, 2))
    assert run(disk, unmap_cdb(len(params)), out=params)[0].good
    _, back = run(disk, read10(10, 20), in_len=20 * BS)
    expected = bytearray(data)
    expected[2 * BS:5 * BS] = bytes(3 * BS)
    expected[15 * BS:17 * BS] = bytes(2 * BS)
    assert back == bytes(expected)
    ops, fua = calls.submits[-1]
    assert [(op.kind, op.lba, op.nblocks) for op in ops] == [(OpKind.UNMAP, 12, 3),
                                                            (OpKind.UNMAP, 25, 2)]
    assert fua is False


def test_unmap_zero_length_and_empty_lists(disk, volume, calls):
    assert run(disk, unmap_cdb(0), out=b"")[0].good
    params = unmap_params()
    assert run(disk, unmap_cdb(len(params)), out=params)[0].good
    assert calls.submits == []


def test_unmap_truncated_descriptor_ignored(disk, volume, calls):
    params = unmap_params((0, 1)) + bytes(10)
    params = params[:2] + struct.pack(">H", 26) + params[4:]
    assert run(disk, unmap_cdb(len(params)), out=params)[0].good
    assert [(op.lba, op.nblocks) for op in calls.submits[-1][0]] == [(0, 1)]


def test_unmap_block_descriptor_length_beyond_list_uses_what_was_sent(disk, volume, calls):
    params = unmap_params((4, 4), bd_len=160)
    assert run(disk, unmap_cdb(len(params)), out=params)[0].good
    assert [(op.lba, op.nblocks) for op in calls.submits[-1][0]] == [(4, 4)]


def test_unmap_errors(disk, volume):
    fill(disk, 0, 8)
    before = medium(volume, 0, 16)
    short = bytes(7)
    assert_check(run(disk, unmap_cdb(7), out=short)[0], 5, 0x1A, 0)
    p = unmap_params((0, 1))
    assert_check(run(disk, unmap_cdb(len(p), anchor=True), out=p)[0], 5, 0x24, 0,
                 cdb_field=(1, 0))
    p = unmap_params(*[(i, 1) for i in range(5)])                    # 5 > 4 descriptors
    assert_check(run(disk, unmap_cdb(len(p)), out=p)[0], 5, 0x26, 0, param_field=(2, None))
    p = unmap_params((0, 1000), (1000, 25))                           # 1025 > 1024 blocks
    assert_check(run(disk, unmap_cdb(len(p)), out=p)[0], 5, 0x26, 0, param_field=(32, None))
    p = unmap_params((0, 1), (NUM_BLOCKS - 1, 2))                     # second out of range
    assert_check(run(disk, unmap_cdb(len(p)), out=p)[0], 5, 0x21, 0)
    assert_check(run(disk, unmap_cdb(len(p) + 16), out=p)[0], 5, 0x0E, 0x03)
    assert medium(volume, 0, 16) == before                              # nothing deallocated


def ws10(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x41, flags, lba, 0, n, 0)


def ws16(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x93, flags, lba, n, 0, 0)


@pytest.mark.parametrize("build", [ws10, ws16])
def test_write_same_repeats_the_block(disk, volume, build, calls):
    block = pattern(BS, seed=9)
    assert run(disk, build(100, 7), out=block)[0].good
    _, back = run(disk, read10(99, 9), in_len=9 * BS)
    assert back == bytes(BS) + block * 7 + bytes(BS)
    (op,), _ = calls.submits[-1]
    assert (op.kind, op.lba, op.nblocks, bytes(op.data)) == (OpKind.WRITE_SAME, 100, 7, block)


@pytest.mark.parametrize("build", [ws10, ws16])
def test_write_same_unmap_with_zero_block_deallocates(disk, volume, build, calls):
    fill(disk, 100, 7)
    assert run(disk, build(100, 7, flags=0x08), out=bytes(BS))[0].good
    (op,), _ = calls.submits[-1]
    assert (op.kind, op.lba, op.nblocks) == (OpKind.UNMAP, 100, 7)
    assert run(disk, read10(100, 7), in_len=7 * BS)[1] == bytes(7 * BS)


def test_write_same_unmap_with_nonzero_block_writes_it(disk, volume, calls):
    block = pattern(BS)
    assert run(disk, ws16(100, 3, flags=0x08), out=block)[0].good
    assert calls.submits[-1][0][0].kind == OpKind.WRITE_SAME
    assert run(disk, read10(100, 3), in_len=3 * BS)[1] == block * 3


def test_write_same_16_ndob(disk, volume, calls):
    fill(disk, 100, 4)
    assert run(disk, ws16(100, 2, flags=0x01), out=b"")[0].good                # zeros, mapped
    assert calls.submits[-1][0][0].kind == OpKind.WRITE_SAME
    assert run(disk, ws16(102, 2, flags=0x09), out=b"")[0].good                # deallocate
    assert calls.submits[-1][0][0].kind == OpKind.UNMAP
    assert run(disk, read10(100, 4), in_len=4 * BS)[1] == bytes(4 * BS)


def test_write_same_errors(disk, volume, calls):
    block = bytes(BS)
    assert_check(run(disk, ws10(0, 0), out=block)[0], 5, 0x24, 0, cdb_field=(7, None))
    assert_check(run(disk, ws16(0, 0), out=block)[0], 5, 0x24, 0, cdb_field=(10, None))
    assert_check(run(disk, ws16(0, 1025), out=block)[0], 5, 0x24, 0, cdb_field=(10, None))
    assert_check(run(disk, ws10(NUM_BLOCKS - 1, 2), out=block)[0], 5, 0x21, 0)
    assert_check(run(disk, ws10(0, 1, flags=0x10), out=block)[0], 5, 0x24, 0, cdb_field=(1, 4))
    assert_check(run(disk, ws10(0, 1, flags=0x04), out=block)[0], 5, 0x24, 0, cdb_field=(1, 2))
    assert_check(run(disk, ws10(0, 1, flags=0x02), out=block)[0], 5, 0x24, 0, cdb_field=(1, 1))
    assert_check(run(disk, ws10(0, 1, flags=0x20), out=block)[0], 5, 0x24, 0, cdb_field=(1, 7))
    assert_check(run(disk, ws10(0, 1), out=bytes(BS - 1))[0], 5, 0x0E, 0x03)
    assert_check(run(disk, ws10(0, 1), out=bytes(2 * BS))[0], 5, 0x0E, 0x03)
    assert_check(run(disk, ws16(0, 1, flags=0x01), out=block)[0], 5, 0x0E, 0x03)
    assert calls.submits == []
