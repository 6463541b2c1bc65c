"""Helpers of the TCMU tests: a simulated device with its loop thread and a tiny in-memory disk."""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.tcmu.device import TcmuDevice
from appliance.tcmu.sim import SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio

BLOCK = 512


@dataclass
class ScsiCommand:
    """Same fields as appliance.scsi.ScsiCommand (kept local: the unit tier tests the ring
    without the SCSI package)."""

    cdb: bytes
    data: Sequence[memoryview] = ()
    bidi_in: Sequence[memoryview] = ()


@dataclass
class ScsiResult:
    status: int
    sense: bytes = b""
    read_len: int | None = None


def rw10(op: int, lba: int, nblocks: int) -> bytes:
    return struct.pack(">BBIBHB", op, 0, lba, 0, nblocks, 0)


class MemDisk:
    """READ(10)/WRITE(10) over a bytearray; records every batch it was given."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.disk = bytearray(size)
        self.batches: list[int] = []

    def execute(self, cmds: list[ScsiCommand]) -> list[ScsiResult]:
        self.batches.append(len(cmds))
        results = []
        for cmd in cmds:
            (lba,) = struct.unpack_from(">I", cmd.cdb, 2)
            off = lba * BLOCK
            for buf in cmd.data:
                if cmd.cdb[0] == 0x2A:
                    self.disk[off: off + len(buf)] = buf
                elif cmd.cdb[0] == 0x28:
                    buf[:] = self.disk[off: off + len(buf)]
                off += len(buf)
            results.append(ScsiResult(0))
        return results


class Served:
    """A SimKernel with a TcmuDevice loop on a thread."""

    def __init__(self, directory: Path, executor, config: SimConfig, spin_us: int = 0) -> None:
        self.kernel = SimKernel(directory, config)
        self.uio = SimUio(directory)
        self.device = TcmuDevice(self.uio, executor, command_class=ScsiCommand,
                                 poll_interval=0.05, spin_us=spin_us)
        self.thread = threading.Thread(target=self.device.run, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        return self

    def close(self) -> None:
        self.device.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "device loop did not stop"
        self.device.close()
        self.uio.close()
        self.kernel.close()
