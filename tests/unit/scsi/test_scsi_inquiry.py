"""INQUIRY standard data and VPD pages, byte for byte."""

from __future__ import annotations

import pytest

from appliance.scsi import DiskIdentity
from tests.unit.scsi.conftest import SERIAL
from tests.unit.scsi.helpers import assert_check, run

SERIAL_B = SERIAL.encode()


@pytest.fixture
def volume(reused_volume):
    """Nothing here depends on block contents: one volume serves the whole module."""
    return reused_volume


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return bytes([0x12, evpd, page, alloc >> 8, alloc & 0xFF, 0])


def test_standard_inquiry_bytes(disk):
    result, data = run(disk, inquiry(), in_len=255)
    assert result.good and result.read_len == 96
    assert data == (bytes([0x00, 0x00, 0x06, 0x02, 91, 0x00, 0x00, 0x02])
                    + b"LIO-ORG " + b"TCMU device     " + b"0002" + bytes(22)
                    + bytes.fromhex("00a0 0460 04c0") + bytes(32))


def test_standard_inquiry_truncated_to_allocation_length(disk):
    result, data = run(disk, inquiry(alloc=5), in_len=64)
    # ADDITIONAL LENGTH still says 91: truncation does not change length fields.
    assert result.read_len == 5 and data == bytes([0, 0, 6, 0x02, 91])


def test_buffer_smaller_than_allocation_length_fills_what_fits(disk):
    result, data = run(disk, inquiry(alloc=255), in_len=8)
    assert result.good and result.read_len is None and data == bytes([0, 0, 6, 0x02, 91, 0, 0, 2])


def test_allocation_length_zero_transfers_nothing(disk):
    result, data = run(disk, inquiry(alloc=0), in_len=16)
    assert result.good and result.read_len == 0 and data == b""


def test_vpd_supported_pages(disk):
    result, data = run(disk, inquiry(1, 0x00), in_len=255)
    assert data == bytes([0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])


def test_vpd_unit_serial(disk):
    _, data = run(disk, inquiry(1, 0x80), in_len=255)
    assert data == bytes([0, 0x80, 0, len(SERIAL_B) + 1]) + SERIAL_B + b"\0"


NAA = bytes.fromhex("6001405a1b2c3d4e5f64789abcdef012")


def test_vpd_device_identification(disk):
    _, data = run(disk, inquiry(1, 0x83), in_len=255)
    t10 = b"LIO-ORG " + SERIAL_B + b"\0"
    body = bytes([0x02, 0x01, 0, len(t10)]) + t10 + bytes([0x01, 0x03, 0, 16]) + NAA
    assert data == bytes([0, 0x83, 0, len(body)]) + body


def test_naa_matches_the_kernel_derivation():
    # spc_gen_naa_6h_vendor_specific: 6 | OUI 001405 | hex nibbles of the serial, '-' skipped.
    assert DiskIdentity(SERIAL).naa_designator() == NAA
    # Fewer than 25 hex digits are zero-padded; non-hex characters are skipped.
    assert DiskIdentity("xyz-12").naa_designator() == bytes.fromhex(
        "60014051" "20000000000000000000000000")[:16]


def test_identity_is_stable_and_distinct():
    a, b = DiskIdentity(SERIAL), DiskIdentity(SERIAL.replace("a1", "a2"))
    assert a.naa_designator() == DiskIdentity(SERIAL).naa_designator()
    assert a.naa_designator() != b.naa_designator()


@pytest.mark.parametrize("serial", ["", "has space", "x" * 255, "é"])
def test_identity_rejects_bad_serials(serial):
    with pytest.raises(ValueError):
        DiskIdentity(serial)


def test_vpd_block_limits(disk):
    _, data = run(disk, inquiry(1, 0xB0), in_len=255)
    expected = bytearray(64)
    expected[1], expected[3] = 0xB0, 0x3C
    expected[4] = 0x01                                   # WSNZ
    expected[5] = 8                                      # MAX COMPARE AND WRITE LENGTH
    expected[6:8] = (8).to_bytes(2, "big")               # 4096 / 512 granularity
    expected[8:12] = (128).to_bytes(4, "big")            # 64 KiB / 512
    expected[20:24] = (1024).to_bytes(4, "big")          # MAX UNMAP LBA COUNT
    expected[24:28] = (4).to_bytes(4, "big")             # MAX UNMAP DESCRIPTORS
    expected[28:32] = (8).to_bytes(4, "big")             # OPTIMAL UNMAP GRANULARITY
    expected[32:36] = bytes([0x80, 0, 0, 0])             # UGAVALID, alignment 0
    expected[36:44] = (1024).to_bytes(8, "big")          # MAX WRITE SAME LENGTH
    assert data == bytes(expected)


def test_vpd_block_device_characteristics(disk):
    _, data = run(disk, inquiry(1, 0xB1), in_len=255)
    assert data == bytes([0, 0xB1, 0, 0x3C]) + bytes(0x3C)


def test_vpd_logical_block_provisioning(disk):
    _, data = run(disk, inquiry(1, 0xB2), in_len=255)
    assert data == bytes([0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0])


def test_unknown_vpd_page(disk):
    result, _ = run(disk, inquiry(1, 0x86), in_len=255)
    assert_check(result, 5, 0x24, 0, cdb_field=(2, None))


def test_page_code_without_evpd(disk):
    result, _ = run(disk, inquiry(0, 0x80), in_len=255)
    assert_check(result, 5, 0x24, 0, cdb_field=(2, None))


def test_cmddt_refused(disk):
    result, _ = run(disk, inquiry(2, 0), in_len=255)
    assert_check(result, 5, 0x24, 0, cdb_field=(1, 1))


def test_short_cdb(disk):
    result, _ = run(disk, bytes([0x12, 0, 0]), in_len=255)
    assert_check(result, 5, 0x24, 0, cdb_field=(0, None))
