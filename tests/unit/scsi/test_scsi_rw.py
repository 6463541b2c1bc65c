"""READ / WRITE (6, 10, 12, 16), VERIFY, WRITE AND VERIFY: data, ranges, buffers, errors."""

from __future__ import annotations

import pytest

from appliance.scsi import DiskIdentity, DiskLimits, ScsiDisk
from tests.unit.scsi.conftest import NUM_BLOCKS, SERIAL, medium
from tests.unit.scsi.helpers import (
    assert_check,
    information,
    pattern,
    read10,
    run,
    rw6,
    rw10,
    rw12,
    rw16,
    write10,
)

BS = 512
READS = {6: (rw6, 0x08), 10: (rw10, 0x28), 12: (rw12, 0xA8), 16: (rw16, 0x88)}
WRITES = {6: (rw6, 0x0A), 10: (rw10, 0x2A), 12: (rw12, 0xAA), 16: (rw16, 0x8A)}


@pytest.mark.parametrize("size", [6, 10, 12, 16])
def test_write_then_read_every_cdb_size(disk, size):
    build_w, op_w = WRITES[size]
    build_r, op_r = READS[size]
    data = pattern(3 * BS, seed=size)
    assert run(disk, build_w(op_w, 100, 3), out=data)[0].good
    result, back = run(disk, build_r(op_r, 100, 3), in_len=3 * BS)
    assert result.good and result.read_len is None and back == data
    # Neighbours untouched.
    assert run(disk, read10(99, 1), in_len=BS)[1] == bytes(BS)
    assert run(disk, read10(103, 1), in_len=BS)[1] == bytes(BS)


def test_six_byte_length_zero_means_256_blocks(volume):
    disk = ScsiDisk(volume, DiskIdentity(SERIAL), DiskLimits(max_transfer_bytes=256 * BS))
    data = pattern(256 * BS)
    assert run(disk, rw6(0x0A, 1000, 0), out=data)[0].good
    assert medium(volume, 1000, 256) == data
    result, back = run(disk, rw6(0x08, 1000, 0), in_len=256 * BS)
    assert result.good and back == data


def test_six_byte_lba_is_21_bits(disk, volume):
    cdb = bytes([0x0A, 0xE0 | 0x00, 0x07, 0xD0, 1, 0])   # top 3 bits of byte 1 ignored
    assert run(disk, cdb, out=pattern(BS))[0].good
    assert medium(volume, 2000, 1) == pattern(BS)


def test_zero_length_transfers_are_good(disk, volume, calls):
    assert run(disk, write10(5, 0), out=b"")[0].good
    assert run(disk, read10(NUM_BLOCKS, 0), in_len=0)[0].good   # at the capacity: allowed
    assert calls.submits == []


@pytest.mark.parametrize("lba,n", [(NUM_BLOCKS, 1), (NUM_BLOCKS - 1, 2), (NUM_BLOCKS + 1, 0),
                                   (2**32 - 1, 1)])
def test_lba_out_of_range(disk, volume, lba, n, calls):
    assert_check(run(disk, read10(lba, n), in_len=n * BS)[0], 5, 0x21, 0)
    assert_check(run(disk, write10(lba, n), out=bytes(n * BS))[0], 5, 0x21, 0)
    assert calls.submits == []


def test_lba_out_of_range_16_byte_overflow(disk):
    assert_check(run(disk, rw16(0x88, 2**64 - 1, 2), in_len=2 * BS)[0], 5, 0x21, 0)


def test_fua_and_write_cache(disk, volume, calls):
    run(disk, write10(0, 1), out=bytes(BS))
    run(disk, write10(0, 1, flags=0x08), out=bytes(BS))
    volume.write_cache_enabled = False
    run(disk, write10(0, 1), out=bytes(BS))
    assert [fua for _, fua in calls.submits] == [False, True, True]


def test_protection_bits_refused(disk):
    assert_check(run(disk, read10(0, 1, flags=0x20), in_len=BS)[0], 5, 0x24, 0,
                 cdb_field=(1, 7))
    assert_check(run(disk, write10(0, 1, flags=0x40), out=bytes(BS))[0], 5, 0x24, 0,
                 cdb_field=(1, 7))


def test_transfer_above_maximum_transfer_length(disk):
    result, _ = run(disk, read10(0, 129), in_len=129 * BS)
    assert_check(result, 5, 0x24, 0, cdb_field=(7, None))
    result, _ = run(disk, rw16(0x8A, 0, 129), out=bytes(129 * BS))
    assert_check(result, 5, 0x24, 0, cdb_field=(10, None))


def test_short_and_long_buffers(disk, volume, calls):
    # Data-Out must match exactly (LIO's own rule for write data CDBs).
    assert_check(run(disk, write10(0, 2), out=bytes(BS))[0], 5, 0x0E, 0x03)
    assert_check(run(disk, write10(0, 1), out=bytes(2 * BS))[0], 5, 0x0E, 0x03)
    # Data-In shorter than the transfer: refused, not truncated silently.
    assert_check(run(disk, read10(0, 2), in_len=BS)[0], 5, 0x0E, 0x03)
    assert_check(run(disk, read10(0, 1), in_len=0)[0], 5, 0x0E, 0x03)
    assert calls.submits == []


def test_long_read_buffer_gets_read_len_and_no_stale_bytes(disk):
    run(disk, write10(7, 1), out=pattern(BS))
    result, back = run(disk, read10(7, 1), in_len=3 * BS)   # helper checks the zeroed tail
    assert result.good and result.read_len == BS and back == pattern(BS)


@pytest.mark.parametrize("split", [512, 4096, 700, 100, 1])
def test_scattered_buffers(disk, volume, split):
    data = pattern(16 * BS, seed=split)
    assert run(disk, write10(40, 16), out=data, split=split)[0].good
    assert medium(volume, 40, 16) == data
    result, back = run(disk, read10(40, 16), in_len=16 * BS, split=split)
    assert result.good and back == data


def test_block_aligned_buffers_are_passed_without_copies(disk, volume, calls):
    # Four 2 KiB iovecs → four WriteOps whose data are views of the ring buffers.
    from appliance.scsi import ScsiCommand
    bufs = [memoryview(bytearray(pattern(2048, seed=i))) for i in range(4)]
    assert disk.execute([ScsiCommand(write10(8, 16), bufs)])[0].good
    (ops, _), = calls.submits
    assert [(op.lba, op.nblocks) for op in ops] == [(8, 4), (12, 4), (16, 4), (20, 4)]
    assert all(op.data.obj is buf.obj for op, buf in zip(ops, bufs, strict=True))


def test_medium_errors(disk, volume, faults):
    faults.reads = True
    assert_check(run(disk, read10(0, 1), in_len=BS)[0], 3, 0x11, 0)
    faults.writes = True
    assert_check(run(disk, write10(0, 1), out=bytes(BS))[0], 3, 0x0C, 0)


# --- VERIFY -------------------------------------------------------------------------------

def verify(size: int, lba: int, n: int, bytchk: int) -> bytes:
    build, op = {10: (rw10, 0x2F), 12: (rw12, 0xAF), 16: (rw16, 0x8F)}[size]
    return build(op, lba, n, flags=bytchk << 1)


@pytest.mark.parametrize("size", [10, 12, 16])
def test_verify_bytchk_modes(disk, size):
    data = pattern(4 * BS)
    run(disk, write10(200, 4), out=data)
    assert run(disk, verify(size, 200, 4, 0), out=b"")[0].good
    assert run(disk, verify(size, 200, 4, 1), out=data)[0].good
    bad = bytearray(data)
    bad[3 * BS + 17] ^= 0xFF
    result, _ = run(disk, verify(size, 200, 4, 1), out=bytes(bad))
    assert_check(result, 0xE, 0x1D, 0)
    assert information(result) == 3 * BS + 17
    # BYTCHK=11b: one block compared with each of the blocks.
    run(disk, rw16(0x93, 300, 5), out=data[:BS])      # WRITE SAME: 5 copies
    assert run(disk, verify(size, 300, 5, 3), out=data[:BS])[0].good
    result, _ = run(disk, verify(size, 299, 2, 3), out=data[:BS])
    assert_check(result, 0xE, 0x1D, 0)
    assert information(result) == 0


def test_verify_errors(disk, volume, faults):
    assert_check(run(disk, verify(10, 0, 1, 2), out=b"")[0], 5, 0x24, 0, cdb_field=(1, 2))
    assert_check(run(disk, verify(10, NUM_BLOCKS, 1, 0), out=b"")[0], 5, 0x21, 0)
    assert_check(run(disk, verify(10, 0, 2, 1), out=bytes(BS))[0], 5, 0x0E, 0x03)
    assert run(disk, verify(10, 0, 0, 1), out=b"")[0].good
    faults.reads = True
    assert_check(run(disk, verify(16, 0, 4, 0), out=b"")[0], 3, 0x11, 0)


def test_verify_without_bytchk_may_exceed_max_transfer(disk):
    assert run(disk, verify(16, 0, NUM_BLOCKS, 0), out=b"")[0].good


# --- WRITE AND VERIFY ---------------------------------------------------------------------

@pytest.mark.parametrize("cdb", [rw10(0x2E, 50, 2, 0x02), rw12(0xAE, 50, 2, 0x02),
                                 rw16(0x8E, 50, 2, 0x02), rw10(0x2E, 50, 2, 0)])
def test_write_and_verify(disk, volume, cdb, calls):
    data = pattern(2 * BS, seed=cdb[0])
    assert run(disk, cdb, out=data)[0].good
    assert medium(volume, 50, 2) == data
    assert calls.submits[-1][1] is True        # written to the medium, not cached


def test_write_and_verify_errors(disk, volume, faults):
    assert_check(run(disk, rw10(0x2E, 0, 1, 0x04), out=bytes(BS))[0], 5, 0x24, 0,
                 cdb_field=(1, 2))
    assert_check(run(disk, rw10(0x2E, NUM_BLOCKS, 1, 0x02), out=bytes(BS))[0], 5, 0x21, 0)
    faults.writes = True
    assert_check(run(disk, rw10(0x2E, 0, 1, 0x02), out=bytes(BS))[0], 3, 0x0C, 0)
