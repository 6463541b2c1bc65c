"""Struct offsets and entry encoding against the 6.1 header
(include/uapi/linux/target_core_user.h)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.tcmu import layout


def test_offsets_match_the_6_1_header() -> None:
    # struct tcmu_mailbox
    assert (layout.MB_VERSION, layout.MB_FLAGS, layout.MB_CMDR_OFF, layout.MB_CMDR_SIZE,
            layout.MB_CMD_HEAD, layout.MB_CMD_TAIL, layout.MAILBOX_SIZE) == (0, 2, 4, 8, 12, 64, 128)
    # struct tcmu_cmd_entry_hdr
    assert (layout.HDR_LEN_OP, layout.HDR_CMD_ID, layout.HDR_KFLAGS, layout.HDR_UFLAGS,
            layout.HDR_SIZE) == (0, 4, 6, 7, 8)
    # req arm: cdb_off at 24 because the inner struct is not packed
    assert (layout.REQ_IOV_CNT, layout.REQ_IOV_BIDI_CNT, layout.REQ_IOV_DIF_CNT,
            layout.REQ_CDB_OFF, layout.REQ_IOV) == (8, 12, 16, 24, 48)
    # rsp arm aliases the same bytes
    assert (layout.RSP_SCSI_STATUS, layout.RSP_READ_LEN, layout.RSP_SENSE,
            layout.SENSE_BUFFERSIZE) == (8, 12, 16, 96)
    assert layout.RSP_SENSE + layout.SENSE_BUFFERSIZE == layout.CMD_ENTRY_SIZE == 112
    assert (layout.TMR_TYPE, layout.TMR_CMD_CNT, layout.TMR_CMD_IDS) == (8, 12, 32)
    assert (layout.OP_PAD, layout.OP_CMD, layout.OP_TMR) == (0, 1, 2)
    assert (layout.UFLAG_UNKNOWN_OP, layout.UFLAG_READ_LEN, layout.UFLAG_KEEP_BUF) == (1, 2, 4)
    assert layout.ALL_CAPS == 0xF


@pytest.mark.parametrize(("cdb", "length"), [
    (b"\x00", 6), (b"\x28", 10), (b"\x5a", 10), (b"\xa8", 12), (b"\x88", 16),
    (b"\x7f\0\0\0\0\0\0\x18", 32), (b"\xe0", 10),
])
def test_scsi_command_size(cdb: bytes, length: int) -> None:
    assert layout.scsi_command_size(cdb.ljust(8, b"\0")) == length


def test_entry_sizes() -> None:
    assert layout.cmd_entry_size(1, 10) == 128          # READ(10), one iovec: 112 + 16
    assert layout.cmd_entry_size(0, 6) == 120           # TEST UNIT READY: 112 + 8
    assert layout.cmd_entry_size(5, 16) == 48 + 80 + 16
    assert layout.tmr_entry_size(3) == 40


def test_mailbox_round_trip_and_check() -> None:
    region = memoryview(bytearray(4096))
    layout.write_mailbox(region, cmdr_off=128, cmdr_size=4096 - 128 - 1024)
    mb = layout.read_mailbox(region)
    assert mb == layout.Mailbox(2, 0xF, 128, 4096 - 128 - 1024)
    layout.check_mailbox(mb, 4096)
    struct.pack_into("<H", region, 0, 1)
    with pytest.raises(layout.LayoutError, match="version 1"):
        layout.check_mailbox(layout.read_mailbox(region), 4096)


@settings(max_examples=40, deadline=None)
@given(cdb=st.sampled_from([b"\x28" + bytes(9), b"\x8a" + bytes(15), b"\x12" + bytes(5)]),
       iovecs=st.lists(st.tuples(st.integers(4096, 8000), st.integers(0, 100)), max_size=6),
       bidi=st.integers(0, 6), cmd_id=st.integers(1, 0xFFFF))
def test_cmd_entry_round_trip(cdb: bytes, iovecs: list, bidi: int, cmd_id: int) -> None:
    bidi = min(bidi, len(iovecs))
    region = memoryview(bytearray(8192))
    length = layout.write_cmd_request(region, 200, cmd_id=cmd_id, cdb=cdb, iovecs=iovecs,
                                      bidi_count=bidi)
    assert length == layout.cmd_entry_size(len(iovecs), len(cdb))
    hdr = layout.read_header(region, 200)
    assert (hdr.op, hdr.length, hdr.cmd_id) == (layout.OP_CMD, length, cmd_id)
    req = layout.read_cmd_request(region, 200, len(region))
    assert req == layout.CmdRequest(cmd_id, cdb, tuple(iovecs), bidi)
    # cdb_off is relative to the region start, right after the base entry
    (cdb_off,) = struct.unpack_from("<Q", region, 200 + layout.REQ_CDB_OFF)
    assert cdb_off == 200 + layout.cmd_entry_base_size(len(iovecs))


def test_response_overwrites_the_request() -> None:
    """rsp aliases req: after writing a response the iovec count and cdb_off are gone."""
    region = memoryview(bytearray(4096))
    layout.write_cmd_request(region, 0, cmd_id=7, cdb=b"\x28" + bytes(9), iovecs=[(3000, 512)])
    layout.write_response(region, 0, status=2, sense=b"\x70\0\x05" + bytes(15), read_len=100)
    assert struct.unpack_from("<I", region, layout.REQ_IOV_CNT)[0] != 1
    assert layout.read_response(region, 0)[0] == 2
    assert layout.read_response(region, 0)[2] == 100
    assert layout.read_header(region, 0).uflags & layout.UFLAG_READ_LEN


def test_corrupt_entries_are_refused() -> None:
    region = memoryview(bytearray(4096))
    layout.write_cmd_request(region, 0, cmd_id=1, cdb=b"\x28" + bytes(9), iovecs=[(4000, 512)])
    with pytest.raises(layout.LayoutError, match="outside the data area"):
        layout.read_cmd_request(region, 0, len(region))
    layout.write_cmd_request(region, 0, cmd_id=1, cdb=b"\x28" + bytes(9), iovecs=[(64, 512)])
    with pytest.raises(layout.LayoutError, match="outside the data area"):  # over the ring
        layout.read_cmd_request(region, 0, len(region), data_off=2048)
    layout.write_cmd_request(region, 0, cmd_id=1, cdb=b"\x28" + bytes(9), iovecs=[(1000, 8)])
    struct.pack_into("<I", region, layout.REQ_IOV_CNT, 50)
    with pytest.raises(layout.LayoutError, match="do not fit"):
        layout.read_cmd_request(region, 0, len(region))
    with pytest.raises(layout.LayoutError, match="multiple of 8"):
        layout.write_header(region, 0, length=13, op=layout.OP_PAD)
