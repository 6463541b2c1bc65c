"""Every command kind through the simulated kernel ring, the real device loop and ScsiDisk."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tcmu_stack import SERIAL, Stack, open_stack

from appliance.tcmu.sim import SimResult

pytestmark = pytest.mark.integration

BLOCKS = 8192
BS = 512


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = open_stack(tmp_path, num_blocks=BLOCKS)
    yield s
    s.close()


def run(s: Stack, cdb: bytes, data_out: bytes = b"", data_in_len: int = 0) -> SimResult:
    (res,) = s.kernel.wait_for([s.kernel.submit(cdb, data_out, data_in_len)], timeout=10)
    return res


def key_asc(res: SimResult) -> tuple[int, int, int]:
    assert res.status == 0x02, f"expected CHECK CONDITION, got {res.status:#x}"
    return res.sense[2] & 0x0F, res.sense[12], res.sense[13]


def rw(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    if op in (0x08, 0x0A):
        return struct.pack(">BBHBB", op, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)
    if op in (0x28, 0x2A, 0x2E, 0x2F):
        return struct.pack(">BBIBHB", op, flags, lba, 0, n, 0)
    if op in (0xA8, 0xAA):
        return struct.pack(">BBIIBB", op, flags, lba, n, 0, 0)
    return struct.pack(">BBQIBB", op, flags, lba, n, 0, 0)


def test_test_unit_ready_and_inquiry(stack: Stack) -> None:
    assert run(stack, bytes(6)).status == 0
    res = run(stack, b"\x12\x00\x00\x00\xff\x00", data_in_len=255)
    assert res.status == 0
    std = res.data_in
    assert std[0] == 0x00 and std[8:16] == b"LIO-ORG " and std[16:32] == b"TCMU device     "
    assert len(std) == std[4] + 5  # READ_LEN: no stale bytes past the standard data
    res = run(stack, b"\x12\x01\x80\x00\xff\x00", data_in_len=255)
    assert res.data_in[1] == 0x80 and SERIAL.encode() in res.data_in
    res = run(stack, b"\x12\x01\x00\x00\xff\x00", data_in_len=255)
    assert set(res.data_in[4:]) >= {0x00, 0x80, 0x83, 0xB0}
    assert key_asc(run(stack, b"\x12\x00\x80\x00\xff\x00", data_in_len=255)) == (5, 0x24, 0)


def test_read_capacity(stack: Stack) -> None:
    res = run(stack, b"\x25" + bytes(9), data_in_len=8)
    assert struct.unpack(">II", res.data_in) == (BLOCKS - 1, BS)
    res = run(stack, b"\x9e\x10" + bytes(8) + b"\x00\x00\x00\x20" + bytes(2), data_in_len=32)
    last, bs = struct.unpack_from(">QI", res.data_in)
    assert (last, bs) == (BLOCKS - 1, BS)


@pytest.mark.parametrize("op_w,op_r", [(0x0A, 0x08), (0x2A, 0x28), (0xAA, 0xA8), (0x8A, 0x88)])
def test_write_read_every_size(stack: Stack, op_w: int, op_r: int) -> None:
    data = os.urandom(8 * BS)
    assert run(stack, rw(op_w, 100, 8), data).status == 0
    assert run(stack, rw(op_r, 100, 8), data_in_len=len(data)).data_in == data


def test_fua_write_and_sync_cache(stack: Stack) -> None:
    data = os.urandom(BS)
    assert run(stack, rw(0x2A, 7, 1, flags=0x08), data).status == 0
    assert run(stack, b"\x35" + bytes(9)).status == 0
    assert run(stack, b"\x91" + bytes(15)).status == 0
    assert run(stack, rw(0x28, 7, 1), data_in_len=BS).data_in == data


def test_write_same_unmap_and_verify(stack: Stack) -> None:
    pattern = os.urandom(BS)
    assert run(stack, b"\x41\x00" + struct.pack(">I", 200) + b"\x00" + struct.pack(">H", 16)
               + b"\x00", pattern).status == 0
    assert run(stack, rw(0x28, 200, 16), data_in_len=16 * BS).data_in == pattern * 16
    params = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 200, 8)
    assert run(stack, b"\x42" + bytes(6) + struct.pack(">H", len(params)) + b"\x00",
               params).status == 0
    assert run(stack, rw(0x28, 200, 16), data_in_len=16 * BS).data_in == bytes(8 * BS) + pattern * 8
    assert run(stack, rw(0x2F, 200, 16)).status == 0                       # VERIFY, BYTCHK=0
    data = os.urandom(2 * BS)
    assert run(stack, rw(0x2E, 300, 2), data).status == 0                  # WRITE AND VERIFY
    assert run(stack, rw(0x28, 300, 2), data_in_len=2 * BS).data_in == data


def test_compare_and_write(stack: Stack) -> None:
    old, new = os.urandom(BS), os.urandom(BS)
    run(stack, rw(0x2A, 50, 1), old)
    caw = b"\x89" + bytes(1) + struct.pack(">Q", 50) + bytes(3) + b"\x01" + bytes(2)
    assert run(stack, caw, old + new).status == 0
    assert run(stack, rw(0x28, 50, 1), data_in_len=BS).data_in == new
    wrong = bytearray(new)
    wrong[37] ^= 0xFF
    res = run(stack, caw, bytes(wrong) + old)
    assert key_asc(res) == (0x0E, 0x1D, 0x00)
    assert res.sense[0] & 0x80 and struct.unpack(">I", res.sense[3:7])[0] == 37
    assert run(stack, rw(0x28, 50, 1), data_in_len=BS).data_in == new      # nothing written


def test_mode_sense_caching_page(stack: Stack) -> None:
    res = run(stack, b"\x1a\x00\x08\x00\xff\x00", data_in_len=255)
    assert res.status == 0
    page = res.data_in[4 + res.data_in[3]:]  # after the header and any block descriptor
    assert page[0] & 0x3F == 0x08 and page[2] & 0x04  # WCE


def test_errors_carry_the_right_sense(stack: Stack) -> None:
    assert key_asc(run(stack, b"\xc7" + bytes(9))) == (5, 0x20, 0)                 # bad opcode
    assert key_asc(run(stack, rw(0x28, BLOCKS - 1, 2), data_in_len=2 * BS)) == (5, 0x21, 0)
    assert key_asc(run(stack, rw(0x88, 1 << 40, 1), data_in_len=BS)) == (5, 0x21, 0)
    assert key_asc(run(stack, rw(0x28, 0, 1, flags=0xE0), data_in_len=BS))[0] == 5  # RDPROTECT


def test_short_and_oversized_buffers_are_refused_without_writing(stack: Stack) -> None:
    before = run(stack, rw(0x28, 10, 4), data_in_len=4 * BS).data_in
    res = run(stack, rw(0x2A, 10, 4), os.urandom(2 * BS))       # 4 blocks promised, 2 sent
    assert res.status == 0x02
    res = run(stack, rw(0x2A, 10, 1), os.urandom(3 * BS))       # 1 block promised, 3 sent
    assert res.status == 0x02
    assert run(stack, rw(0x28, 10, 4), data_in_len=4 * BS).data_in == before


def test_malformed_cdbs_never_stop_the_handler(stack: Stack) -> None:
    rng = __import__("random").Random(7)
    for _ in range(300):
        op = rng.choice([0x00, 0x03, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x35, 0x41, 0x42, 0x5A,
                         0x89, 0x9E, 0xA8, 0x7F, 0xFF])
        cdb = bytes([op]) + rng.randbytes(31)
        out = rng.randbytes(rng.choice([0, 512, 1024])) if rng.random() < 0.5 else b""
        res = run(stack, cdb, out, 0 if out else rng.choice([0, 512, 4096]))
        assert res.status in (0x00, 0x02), res
        if res.status == 0x02:
            assert res.sense[0] & 0x7F == 0x70 and res.sense[2] & 0x0F in (2, 3, 4, 5, 6, 0xE)
    assert run(stack, bytes(6)).status == 0
