"""The real handler stack for the TCMU integration tests: ScsiDisk over a volume on tmp files.

`open_stack` uses appliance.volume.Volume (journal + mirror) when it is available; until then
`FileVolume`, a mirror-only stand-in with the same interface, keeps the tests running. Either
way the SCSI layer and the ring code are the real ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import appliance.volume
from appliance.journal.model import OpKind, WriteOp
from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk
from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.device import TcmuDevice
from appliance.tcmu.sim import SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio

REAL_VOLUME = hasattr(appliance.volume, "Volume")
SERIAL = "6c1b8f0e3a524d1e9a7e5f0d6b2c9e41"


class FileVolume:
    """Mirror-only stand-in for appliance.volume.Volume (no journal): pread/pwrite on a file."""

    def __init__(self, path: Path, num_blocks: int, block_size: int = 512) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.write_cache_enabled = True
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, num_blocks * block_size)
        self._lock = threading.Lock()

    def _check(self, lba: int, n: int) -> None:
        from appliance.journal.errors import InvalidRequest
        if lba < 0 or n < 1 or lba + n > self.num_blocks:
            raise InvalidRequest(f"{lba}+{n} outside {self.num_blocks} blocks")

    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        self._check(lba, nblocks)
        os.preadv(self._fd, list(bufs), lba * self.block_size)

    def submit(self, ops: Sequence[WriteOp], *, fua: bool = False) -> None:
        for op in ops:
            self._check(op.lba, op.nblocks)
        bs = self.block_size
        with self._lock:
            for op in ops:
                if op.kind == OpKind.WRITE:
                    os.pwritev(self._fd, [op.data], op.lba * bs)
                elif op.kind == OpKind.WRITE_SAME:
                    os.pwritev(self._fd, [op.data] * op.nblocks, op.lba * bs)
                else:
                    os.pwritev(self._fd, [bytes(op.nblocks * bs)], op.lba * bs)
            if fua:
                os.fdatasync(self._fd)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def compare_and_write(self, lba, verify, data, *, fua=False):
        with self._lock:
            cur = bytearray(len(verify))
            self.read_into(lba, len(verify) // self.block_size, [memoryview(cur)])
            for i, (a, b) in enumerate(zip(cur, bytes(verify), strict=True)):
                if a != b:
                    return i
            os.pwritev(self._fd, [data], lba * self.block_size)
        return None

    def status(self) -> dict:
        return {"state": "journaling"}

    def close(self) -> None:
        os.close(self._fd)


def open_volume(directory: Path, num_blocks: int, block_size: int = 512):
    directory.mkdir(parents=True, exist_ok=True)
    if REAL_VOLUME:
        from appliance.tcmu.backend import VolumeBackend
        config = MirrorConfig(str(directory / "mirror.img"), str(directory / "journal"),
                              journal_size=64 << 20, block_size=block_size)
        return VolumeBackend.open(config, num_blocks * block_size, SERIAL).volume
    return FileVolume(directory / "mirror.img", num_blocks, block_size)


@dataclass
class Stack:
    kernel: SimKernel
    uio: SimUio
    volume: object
    disk: ScsiDisk
    device: TcmuDevice
    thread: threading.Thread

    def close(self) -> None:
        self.device.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "device loop did not stop within 10s"
        self.device.close()
        self.uio.close()
        self.volume.close()
        self.kernel.close()


def open_stack(tmp: Path, *, num_blocks: int = 8192, sim: SimConfig | None = None,
               guard: bool = False) -> Stack:
    """`guard`: data blocks not owned by a live command are PROT_NONE in the handler's mapping
    (a stray access kills the process, as SIGBUS would on a real device)."""
    kernel = SimKernel(tmp / "ring", sim or SimConfig())
    uio = SimUio(tmp / "ring")
    if guard:
        uio.guard_with(kernel)
    volume = open_volume(tmp / "vol", num_blocks)
    disk = ScsiDisk(volume, DiskIdentity(SERIAL))
    device = TcmuDevice(uio, disk, name="it", command_class=ScsiCommand, poll_interval=0.05)
    thread = threading.Thread(target=device.run, name="tcmu-it", daemon=True)
    thread.start()
    return Stack(kernel, uio, volume, disk, device, thread)
