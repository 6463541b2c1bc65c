"""READ CAPACITY (10)/(16), MODE SENSE (6)/(10), MODE SELECT (6)/(10)."""

from __future__ import annotations

import pytest

from appliance.scsi import capacity
from tests.unit.scsi.conftest import NUM_BLOCKS
from tests.unit.scsi.helpers import assert_check, run

RC10 = bytes([0x25] + [0] * 9)


@pytest.fixture
def volume(reused_volume):
    """Nothing here depends on block contents: one volume serves the whole module."""
    return reused_volume


def rc16(alloc: int = 32, sa: int = 0x10) -> bytes:
    return bytes([0x9E, sa]) + bytes(8) + alloc.to_bytes(4, "big") + bytes(2)


def test_read_capacity_10(disk):
    result, data = run(disk, RC10, in_len=8)
    assert result.good and data == (NUM_BLOCKS - 1).to_bytes(4, "big") + (512).to_bytes(4, "big")


def test_read_capacity_10_beyond_32_bits_says_use_16():
    data = capacity.read_capacity_10(RC10, 1 << 33, 512)
    assert data == b"\xff\xff\xff\xff" + (512).to_bytes(4, "big")


def test_read_capacity_10_lba_without_pmi(disk):
    result, _ = run(disk, bytes([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]), in_len=8)
    assert_check(result, 5, 0x24, 0, cdb_field=(2, None))


def test_read_capacity_16(disk):
    result, data = run(disk, rc16(), in_len=32)
    expected = bytearray(32)
    expected[0:8] = (NUM_BLOCKS - 1).to_bytes(8, "big")
    expected[8:12] = (512).to_bytes(4, "big")
    expected[13] = 3            # 8 logical blocks per 4096-byte physical block
    expected[14] = 0xC0         # LBPME | LBPRZ
    assert result.good and data == bytes(expected)


def test_read_capacity_16_truncated(disk):
    result, data = run(disk, rc16(alloc=12), in_len=32)
    assert result.read_len == 12 and data[8:12] == (512).to_bytes(4, "big")


def test_service_action_in_other_than_read_capacity(disk):
    result, _ = run(disk, rc16(sa=0x13), in_len=32)
    assert_check(result, 5, 0x24, 0, cdb_field=(1, 4))


# --- MODE SENSE ---------------------------------------------------------------------------

RW_RECOVERY = bytes([0x01, 0x0A]) + bytes(10)
CACHING_WCE = bytes([0x08, 0x12, 0x04]) + bytes(17)
CACHING_WT = bytes([0x08, 0x12, 0x00]) + bytes(17)
CONTROL = bytes([0x0A, 0x0A, 0x02, 0x10, 0, 0x40, 0, 0, 0xFF, 0xFF, 0, 0])


def ms6(page: int, dbd: bool = True, alloc: int = 255, subpage: int = 0) -> bytes:
    return bytes([0x1A, 0x08 if dbd else 0, page, subpage, alloc, 0])


def ms10(page: int, dbd: bool = True, llbaa: bool = False, alloc: int = 512) -> bytes:
    flags = (0x08 if dbd else 0) | (0x10 if llbaa else 0)
    return bytes([0x5A, flags, page, 0, 0, 0, 0, alloc >> 8, alloc & 0xFF, 0])


def test_mode_sense_6_caching_page(disk):
    result, data = run(disk, ms6(0x08), in_len=255)
    assert result.good
    assert data == bytes([3 + 20, 0, 0x10, 0]) + CACHING_WCE   # DPOFUA, no descriptor


def test_mode_sense_6_all_pages_with_block_descriptor(disk):
    _, data = run(disk, ms6(0x3F, dbd=False), in_len=255)
    descriptor = NUM_BLOCKS.to_bytes(4, "big") + b"\x00" + (512).to_bytes(3, "big")
    pages = RW_RECOVERY + CACHING_WCE + CONTROL
    assert data == bytes([3 + 8 + len(pages), 0, 0x10, 8]) + descriptor + pages


def test_mode_sense_10_long_lba_descriptor(disk):
    _, data = run(disk, ms10(0x0A, dbd=False, llbaa=True), in_len=512)
    descriptor = NUM_BLOCKS.to_bytes(8, "big") + bytes(4) + (512).to_bytes(4, "big")
    total = 8 + 16 + 12
    assert data == ((total - 2).to_bytes(2, "big") + bytes([0, 0x10, 0x01, 0, 0, 16])
                    + descriptor + CONTROL)


def test_mode_sense_10_error_recovery_page(disk):
    _, data = run(disk, ms10(0x01), in_len=512)
    assert data == (18).to_bytes(2, "big") + bytes([0, 0x10, 0, 0, 0, 0]) + RW_RECOVERY


def test_mode_sense_truncation_keeps_the_length_field(disk):
    result, data = run(disk, ms6(0x3F, alloc=10), in_len=255)
    assert result.read_len == 10 and data[0] == 3 + 44 and data[4:10] == RW_RECOVERY[:6]


def test_mode_sense_changeable_and_default_values(disk, volume):
    _, changeable = run(disk, ms6(0x40 | 0x08), in_len=255)
    assert changeable[4:] == bytes([0x08, 0x12, 0x04]) + bytes(17)
    _, control_mask = run(disk, ms6(0x40 | 0x0A), in_len=255)
    assert control_mask[4:] == bytes([0x0A, 0x0A]) + bytes(10)
    volume.write_cache_enabled = False
    _, default = run(disk, ms6(0x80 | 0x08), in_len=255)
    assert default[4:] == CACHING_WCE            # what the volume was opened with
    _, current = run(disk, ms6(0x08), in_len=255)
    assert current[4:] == CACHING_WT


def test_mode_sense_saved_values_not_supported(disk):
    result, _ = run(disk, ms6(0xC0 | 0x08), in_len=255)
    assert_check(result, 5, 0x39, 0)


@pytest.mark.parametrize("page,subpage,field", [(0x1C, 0, (2, 5)), (0x08, 1, (3, None)),
                                                (0x3F, 1, (3, None))])
def test_mode_sense_unknown_page_or_subpage(disk, page, subpage, field):
    result, _ = run(disk, ms6(page, subpage=subpage), in_len=255)
    assert_check(result, 5, 0x24, 0, cdb_field=field)


def test_mode_sense_all_pages_and_subpages(disk):
    result, data = run(disk, ms6(0x3F, subpage=0xFF), in_len=255)
    assert result.good and data[4:] == RW_RECOVERY + CACHING_WCE + CONTROL


# --- MODE SELECT --------------------------------------------------------------------------

def msel6(length: int, pf: bool = True, sp: bool = False) -> bytes:
    return bytes([0x15, (0x10 if pf else 0) | (0x01 if sp else 0), 0, 0, length, 0])


def msel10(length: int) -> bytes:
    return bytes([0x55, 0x10, 0, 0, 0, 0, 0, length >> 8, length & 0xFF, 0])


def test_mode_select_toggles_wce_then_mode_sense_reports_it(disk, volume):
    params = bytes(4) + CACHING_WT
    result, _ = run(disk, msel6(len(params)), out=params)
    assert result.good and volume.write_cache_enabled is False
    _, data = run(disk, ms6(0x08), in_len=255)
    assert data[4:] == CACHING_WT
    params10 = bytes(8) + CACHING_WCE
    result, _ = run(disk, msel10(len(params10)), out=params10)
    assert result.good and volume.write_cache_enabled is True
    _, data = run(disk, ms10(0x08), in_len=512)
    assert data[8:] == CACHING_WCE


def test_mode_select_with_unchanged_pages_and_block_descriptor(disk, volume):
    descriptor = NUM_BLOCKS.to_bytes(4, "big") + b"\x00" + (512).to_bytes(3, "big")
    params = bytes([0, 0, 0, 8]) + descriptor + RW_RECOVERY + CACHING_WCE + CONTROL
    result, _ = run(disk, msel6(len(params)), out=params)
    assert result.good and volume.write_cache_enabled is True


def test_mode_select_ps_bit_is_ignored(disk, volume):
    params = bytes(4) + bytes([0x88]) + CACHING_WT[1:]
    result, _ = run(disk, msel6(len(params)), out=params)
    assert result.good and volume.write_cache_enabled is False


@pytest.mark.parametrize("params,field", [
    (bytes(4) + CONTROL[:3] + b"\x00" + CONTROL[4:], (7, 4)),           # QAM is fixed
    (bytes(4) + bytes([0x08, 0x12, 0x05]) + bytes(17), (6, 0)),         # RCD is fixed
    (bytes(4) + bytes([0x1C, 0x0A]) + bytes(10), (4, 5)),               # unknown page
    (bytes(4) + bytes([0x08, 0x10]) + bytes(16), (5, None)),            # wrong page length
    (bytes(4) + bytes([0x48, 0x12]) + bytes(18), (4, 6)),               # subpage format
    (bytes([0, 0, 0, 4]) + bytes(4), (3, None)),                        # odd descriptor length
    (bytes([0, 0, 0, 8]) + bytes(5) + (4096).to_bytes(3, "big"), (9, None)),  # block length
    (bytes([0, 0, 0, 8]) + (5).to_bytes(4, "big") + b"\0" + (512).to_bytes(3, "big"),
     (4, None)),                                                        # capacity
])
def test_mode_select_invalid_parameter_list(disk, volume, params, field):
    result, _ = run(disk, msel6(len(params)), out=params)
    assert_check(result, 5, 0x26, 0, param_field=field)
    assert volume.write_cache_enabled is True


def test_mode_select_rejected_list_changes_nothing(disk, volume):
    # WCE off in the caching page, but a later page is invalid: nothing is applied.
    params = bytes(4) + CACHING_WT + bytes([0x1C, 0x0A]) + bytes(10)
    result, _ = run(disk, msel6(len(params)), out=params)
    assert_check(result, 5, 0x26, 0, param_field=(24, 5))
    assert volume.write_cache_enabled is True


@pytest.mark.parametrize("params", [bytes(3), bytes(4) + CACHING_WT[:10], bytes(5),
                                    bytes([0, 0, 0, 8]) + bytes(4)])
def test_mode_select_parameter_list_length_error(disk, params):
    result, _ = run(disk, msel6(len(params)), out=params)
    assert_check(result, 5, 0x1A, 0)


def test_mode_select_pf_and_sp(disk):
    params = bytes(4) + CACHING_WT
    assert_check(run(disk, msel6(len(params), pf=False), out=params)[0], 5, 0x24, 0,
                 cdb_field=(1, 4))
    assert_check(run(disk, msel6(len(params), sp=True), out=params)[0], 5, 0x24, 0,
                 cdb_field=(1, 0))


def test_mode_select_zero_length_and_short_buffer(disk, volume):
    assert run(disk, msel6(0), out=b"")[0].good
    result, _ = run(disk, msel6(24), out=bytes(4) + CACHING_WT[:10])
    assert_check(result, 5, 0x0E, 0x03)
    assert volume.write_cache_enabled is True


# --- GET LBA STATUS -----------------------------------------------------------------------

def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return bytes([0x9E, 0x12]) + lba.to_bytes(8, "big") + alloc.to_bytes(4, "big") + bytes(2)


def test_get_lba_status_one_descriptor_to_the_end(disk):
    result, data = run(disk, get_lba_status(100), in_len=24)
    assert result.good
    assert data == ((20).to_bytes(4, "big") + bytes(4) + (100).to_bytes(8, "big")
                    + (NUM_BLOCKS - 100).to_bytes(4, "big") + bytes(4))


def test_get_lba_status_truncated_and_out_of_range(disk):
    result, data = run(disk, get_lba_status(0, alloc=8), in_len=24)
    assert result.read_len == 8 and data == (20).to_bytes(4, "big") + bytes(4)
    assert_check(run(disk, get_lba_status(NUM_BLOCKS), in_len=24)[0], 5, 0x21, 0)
