"""The handler's per-volume `io` counters on its control socket, after a counted workload through
the simulated TCMU ring, the real device loop, ScsiDisk and Volume: exact ops and bytes per
class, one latency sample per command; a handler restart (a new open) starts at zero."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from one_volume_handler import one_volume

from appliance.control.client import call
from appliance.tcmu.daemon import HandlerDaemon
from appliance.tcmu.io_stats import LATENCY_BOUNDS_S
from appliance.tcmu.sim import SimKernel

pytestmark = pytest.mark.integration

BS = 512


def rw(op: int, lba: int, n: int) -> bytes:
    """READ/WRITE/WRITE AND VERIFY CDBs of every length (tests/integration/tcmu/test_sim_commands)."""
    if op in (0x08, 0x0A):
        return struct.pack(">BBHBB", op, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)
    if op in (0x28, 0x2A, 0x2E):
        return struct.pack(">BBIBHB", op, 0, lba, 0, n, 0)
    if op in (0xA8, 0xAA, 0xAE):
        return struct.pack(">BBIIBB", op, 0, lba, n, 0, 0)
    return struct.pack(">BBQIBB", op, 0, lba, n, 0, 0)


def workload() -> list[tuple[str, bytes, bytes, int]]:
    """(class, cdb, data-out, data-in length) of every command the test sends."""
    writes = [("write", rw(op, 64 * i, nblocks), os.urandom(nblocks * BS), 0)
              for i, (op, nblocks) in enumerate([(0x0A, 1), (0x2A, 8), (0xAA, 3), (0x8A, 16),
                                                 (0x2A, 2048), (0x2E, 2), (0xAE, 1),
                                                 (0x8E, 4)])]
    writes.append(("write", b"\x41\x00" + struct.pack(">I", 1000) + b"\x00"
                   + struct.pack(">H", 16) + b"\x00", os.urandom(BS), 0))          # WRITE SAME(10)
    writes.append(("write", b"\x93\x00" + struct.pack(">QI", 1100, 8) + b"\x00\x00",
                   os.urandom(BS), 0))                                          # WRITE SAME(16)
    params = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 1000, 8)
    writes.append(("write", b"\x42" + bytes(6) + struct.pack(">H", len(params)) + b"\x00",
                   params, 0))                                                  # UNMAP
    reads = [("read", rw(op, 64 * i, nblocks), b"", nblocks * BS)
             for i, (op, nblocks) in enumerate([(0x08, 1), (0x28, 8), (0xA8, 3), (0x88, 16),
                                                (0x28, 2048), (0x28, 1), (0x88, 7)])]
    others = [("other", bytes(6), b"", 0),                                      # TEST UNIT READY
              ("other", b"\x12\x00\x00\x00\xff\x00", b"", 255),                 # INQUIRY
              ("other", b"\x25" + bytes(9), b"", 8),                            # READ CAPACITY(10)
              ("other", b"\x35" + bytes(9), b"", 0),                            # SYNCHRONIZE CACHE
              ("other", b"\x1a\x00\x08\x00\xff\x00", b"", 255),                 # MODE SENSE(6)
              ("other", rw(0x2F, 0, 8), b"", 0)]                                # VERIFY(10)
    return writes + reads + others


def _caw(kernel: SimKernel) -> tuple[str, bytes, bytes, int]:
    """COMPARE AND WRITE of block 3000 (zeros, never written) with new data: 2 blocks out."""
    cdb = b"\x89" + bytes(1) + struct.pack(">Q", 3000) + bytes(3) + b"\x01" + bytes(2)
    return ("write", cdb, bytes(BS) + os.urandom(BS), 0)


def test_status_io_counts_a_known_workload_exactly(tmp_path: Path) -> None:
    vol1 = one_volume(tmp_path, data_blocks=1024)
    kernel = vol1.kernel
    commands = [*workload(), _caw(kernel)]
    statuses: dict[str, dict] = {}

    def send_all() -> None:
        # One at a time and a batch of several: the histogram gets a sample per command.
        for kind, cdb, out, in_len in commands[:10]:
            (res,) = kernel.wait_for([kernel.submit(cdb, out, in_len)], timeout=20)
            assert res.status == 0, f"{kind} {cdb.hex()} failed: {res.status:#x} {res.sense!r}"
        with kernel.plugged():
            tickets = [kernel.submit(cdb, out, in_len) for _, cdb, out, in_len in commands[10:]]
        for (kind, cdb, _, _), res in zip(commands[10:], kernel.wait_for(tickets, timeout=20),
                                          strict=True):
            assert res.status == 0, f"{kind} {cdb.hex()} failed: {res.status:#x} {res.sense!r}"

    async def first_life(daemon: HandlerDaemon) -> None:
        statuses["before"] = await asyncio.to_thread(call, vol1.socket, "status")
        await asyncio.to_thread(send_all)
        statuses["after"] = await asyncio.to_thread(call, vol1.socket, "status")

    async def second_life(daemon: HandlerDaemon) -> None:
        (res,) = await asyncio.to_thread(kernel.wait_for, [kernel.submit(rw(0x28, 0, 4), b"",
                                                                          4 * BS)])
        assert res.status == 0
        statuses["restarted"] = await asyncio.to_thread(call, vol1.socket, "status")

    try:
        vol1.run(first_life)
        vol1.run(second_life)
    finally:
        kernel.close()

    zero = {"read_ops": 0, "read_bytes": 0, "write_ops": 0, "write_bytes": 0, "other_ops": 0,
            "latency_bounds_s": list(LATENCY_BOUNDS_S), "latency_counts": [0] * 17,
            "latency_sum_s": 0.0, "latency_count": 0}
    assert statuses["before"]["volumes"]["vol1"]["io"] == zero

    vol = statuses["after"]["volumes"]["vol1"]
    assert vol["state"] == "journaling" and vol["cfgstring"].startswith("mirror=")  # unchanged
    io = vol["io"]
    expected = {kind: [c for c in commands if c[0] == kind] for kind in ("read", "write", "other")}
    assert len(expected["read"]) == 7 and len(expected["write"]) == 12
    assert len(expected["other"]) == 6
    assert io["read_ops"] == 7
    assert io["read_bytes"] == sum(in_len for _, _, _, in_len in expected["read"])
    assert io["write_ops"] == 12
    assert io["write_bytes"] == sum(len(out) for _, _, out, _ in expected["write"])
    assert io["write_bytes"] == (1 + 8 + 3 + 16 + 2048 + 2 + 1 + 4 + 1 + 1 + 2) * BS + 24
    assert io["other_ops"] == 6
    assert io["latency_count"] == len(commands) == 25 == sum(io["latency_counts"])
    assert io["latency_bounds_s"] == list(LATENCY_BOUNDS_S)
    assert len(io["latency_counts"]) == len(LATENCY_BOUNDS_S) + 1
    assert 0 < io["latency_sum_s"] < 25 * 20
    assert set(io) == set(zero)

    io = statuses["restarted"]["volumes"]["vol1"]["io"]
    assert (io["read_ops"], io["read_bytes"], io["write_ops"], io["other_ops"]) == (1, 2048, 0, 0)
    assert io["latency_count"] == 1
