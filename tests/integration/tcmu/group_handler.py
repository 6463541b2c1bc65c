"""The real handler daemon serving several `user:mirror` devices on ring simulations, one
ring per device: what the tests of consistency groups in the handler share. Devices are
made (sysfs uio entry, configfs backstore) before the daemon starts (it adopts them) or
while it runs (the test adds them as udev would)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from one_volume_handler import run_handler

from appliance.control.client import call
from appliance.tcmu.daemon import HandlerConfig, HandlerDaemon
from appliance.tcmu.sim import SimConfig, SimKernel


def write10(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, nblocks, 0)


def read10(lba: int, nblocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, nblocks, 0)


READ_CAPACITY10 = b"\x25" + bytes(9)


@dataclass
class Device:
    minor: int
    name: str
    cfg: str                      # the full dev_config, "mirror/..."
    kernel: SimKernel
    hba: int = 1

    @property
    def uio_name(self) -> str:
        return f"tcm-user/{self.hba}/{self.name}/{self.cfg}"

    def run(self, cdb: bytes, out: bytes = b"", data_in: int = 0):
        return self.kernel.wait_for([self.kernel.submit(cdb, out, data_in)], timeout=20)[0]


@dataclass
class Site:
    tmp: Path
    config: HandlerConfig
    devices: dict[int, Device] = field(default_factory=dict)

    @property
    def groups_dir(self) -> Path:
        return self.config.groups_dir

    def device(self, minor: int, name: str, cfg: str, size: int, *, hba: int = 1,
               block_size: int = 512) -> Device:
        """A backstore user_<hba>/<name> of `size` bytes and its uio<minor>."""
        uio = self.tmp / "class_uio" / f"uio{minor}"
        (uio / "maps" / "map0").mkdir(parents=True)
        (uio / "name").write_text(f"tcm-user/{hba}/{name}/{cfg}\n")
        backstore = self.tmp / "core" / f"user_{hba}" / name
        for sub in ("action", "attrib", "wwn"):
            (backstore / sub).mkdir(parents=True)
        (backstore / "info").write_text(
            f"Status: ACTIVATED  Max Queue Depth: 128  SectorSize: {block_size}  "
            f"HwMaxSectors: 128\n        Config: {cfg} Size: {size} MaxDataAreaMB: 8 "
            "DataPagesPerBlk: 1 CmdRingSizeMB: 8\n")
        (backstore / "wwn" / "vpd_unit_serial").write_text("T10 VPD Unit Serial Number: \n")
        (backstore / "attrib" / "hw_block_size").write_text(f"{block_size}\n")
        (backstore / "attrib" / "hw_max_sectors").write_text("256\n")
        kernel = SimKernel(self.tmp / f"ring{minor}",
                           SimConfig(ring_bytes=1 << 20, data_blocks=256))
        dev = Device(minor, name, cfg, kernel, hba)
        self.devices[minor] = dev
        return dev

    def run(self, body: Callable[[HandlerDaemon], Awaitable[None]]) -> None:
        """One life of the handler (adopting the devices made so far) and its control
        socket."""
        run_handler(self.config, lambda minor: self.tmp / f"ring{minor}", body)

    def run_logged(self, body: Callable[[HandlerDaemon], Awaitable[None]]) -> str:
        """``run`` keeping every message logged meanwhile (the refusals' text an admin
        reads); the site is closed after it."""
        lines = _Lines()
        logging.getLogger().addHandler(lines)
        try:
            self.run(body)
        finally:
            logging.getLogger().removeHandler(lines)
            self.close()
        return "\n".join(lines.messages)

    async def ctl(self, cmd: str, **args) -> dict:
        return await asyncio.to_thread(call, self.config.control_socket, cmd, args)

    def close(self) -> None:
        for dev in self.devices.values():
            dev.kernel.close()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def site(tmp_path: Path) -> Site:
    (tmp_path / "params").mkdir()
    (tmp_path / "groups").mkdir()
    (tmp_path / "class_uio").mkdir()
    (tmp_path / "core").mkdir()
    config = HandlerConfig(sysfs_class_uio=tmp_path / "class_uio", dev_dir=tmp_path / "dev",
                           configfs_core=tmp_path / "core", module_parameters=tmp_path / "params",
                           dbus="none", netlink=False, udev=False, poll_interval=0.05,
                           control_socket=tmp_path / "handler.sock",
                           groups_dir=tmp_path / "groups")
    return Site(tmp_path, config)
