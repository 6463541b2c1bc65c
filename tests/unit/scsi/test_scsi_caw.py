"""COMPARE AND WRITE: success, miscompare offset, limits, buffers."""

from __future__ import annotations

import struct

import pytest

from tests.unit.scsi.conftest import NUM_BLOCKS
from tests.unit.scsi.helpers import assert_check, information, pattern, read10, run, write10

BS = 512


def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, n, 0, 0)


def test_compare_and_write_success(disk, volume):
    old = pattern(2 * BS, seed=1)
    new = pattern(2 * BS, seed=2)
    run(disk, write10(30, 2), out=old)
    result, _ = run(disk, caw(30, 2), out=old + new, split=BS)   # verify/write in 4 iovecs
    assert result.good
    assert run(disk, read10(30, 2), in_len=2 * BS)[1] == new


@pytest.mark.parametrize("offset", [0, 1, BS - 1, BS, 2 * BS - 1])
def test_miscompare_reports_offset_and_writes_nothing(disk, offset):
    old = pattern(2 * BS, seed=1)
    run(disk, write10(30, 2), out=old)
    wrong = bytearray(old)
    wrong[offset] ^= 0x5A
    result, _ = run(disk, caw(30, 2), out=bytes(wrong) + bytes(2 * BS))
    assert_check(result, 0xE, 0x1D, 0)
    assert information(result) == offset
    assert result.sense[0] & 0x80       # VALID
    assert run(disk, read10(30, 2), in_len=2 * BS)[1] == old


def test_fua_and_wce(disk, volume, calls):
    run(disk, caw(0, 1, flags=0x08), out=bytes(2 * BS))
    run(disk, caw(0, 1), out=bytes(2 * BS))
    assert [fua for _, fua in calls.submits] == [True, False]


def test_caw_errors(disk, volume, calls, faults):
    assert run(disk, caw(0, 0), out=b"")[0].good
    # 256 blocks wrapped to 0 in the one-byte count, with 2 x 256 blocks of Data-Out
    assert_check(run(disk, caw(0, 0), out=bytes(512 * BS))[0], 5, 0x24, 0, cdb_field=(13, None))
    assert_check(run(disk, caw(0, 9), out=bytes(18 * BS))[0], 5, 0x24, 0, cdb_field=(13, None))
    assert_check(run(disk, caw(NUM_BLOCKS - 1, 2), out=bytes(4 * BS))[0], 5, 0x21, 0)
    assert_check(run(disk, caw(0, 2), out=bytes(3 * BS))[0], 5, 0x0E, 0x03)
    assert_check(run(disk, caw(0, 1, flags=0x20), out=bytes(2 * BS))[0], 5, 0x24, 0,
                 cdb_field=(1, 7))
    faults.reads = True
    assert_check(run(disk, caw(0, 1), out=bytes(2 * BS))[0], 3, 0x11, 0)
    assert calls.submits == []
