"""A TCMU device node /dev/uioN as a RingTransport.

One opener at a time (the kernel answers EBUSY), the mapping length must equal
maps/map0/size exactly (printed in hex), read and write are exactly 4 bytes
(drivers/target/target_core_user.c `tcmu_open`, `tcmu_mmap`; drivers/uio/uio.c).
"""

from __future__ import annotations

import errno
import mmap
import os
import select
from dataclasses import dataclass
from pathlib import Path

from appliance.tcmu import layout


class UioError(OSError):
    """The UIO device cannot be used as a TCMU ring."""


@dataclass(frozen=True, slots=True)
class UioInfo:
    minor: int
    name: str        # tcm-user/<hba>/<name>/<dev_config>
    version: str
    map_size: int
    dev_path: Path


def read_uio_info(sysfs_uio: Path, dev_dir: Path) -> UioInfo:
    """Read /sys/class/uio/uioN/{name,version,maps/map0/size}."""
    try:
        minor = int(sysfs_uio.name.removeprefix("uio"))
        name = (sysfs_uio / "name").read_text().rstrip("\n")
        version = (sysfs_uio / "version").read_text().strip()
        map_size = int((sysfs_uio / "maps" / "map0" / "size").read_text().strip(), 0)
    except (OSError, ValueError) as err:
        raise UioError(errno.ENODEV, f"{sysfs_uio} is not a usable UIO device") from err
    return UioInfo(minor, name, version, map_size, dev_dir / f"uio{minor}")


class UioDevice:
    def __init__(self, info: UioInfo) -> None:
        if info.version != str(layout.MAILBOX_VERSION):
            raise UioError(errno.EPROTO, f"{info.dev_path}: TCMU version {info.version!r}, "
                           f"expected {layout.MAILBOX_VERSION}")
        self.info = info
        try:
            self._fd = os.open(info.dev_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise UioError(err.errno, f"cannot open {info.dev_path} (another TCMU daemon, "
                           "such as tcmu-runner, may hold it)") from err
        try:
            self._mm = mmap.mmap(self._fd, info.map_size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        except OSError as err:
            os.close(self._fd)
            raise UioError(err.errno, f"mmap of {info.map_size:#x} bytes of {info.dev_path} "
                           "failed") from err
        self.region = memoryview(self._mm)
        # Registered once: select.select built three lists and an fd_set on every wait.
        # A device the kernel removed polls as an error, which the read then raises (EIO).
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        try:
            layout.check_mailbox(layout.read_mailbox(self.region), info.map_size)
        except layout.LayoutError as err:
            self.close()
            raise UioError(errno.EPROTO, f"{info.dev_path}: {err}") from err

    def wait(self, timeout: float) -> bool:
        if not self._poller.poll(timeout * 1000.0):
            return False
        try:
            os.read(self._fd, 4)  # clears the event; any other size is EINVAL
        except BlockingIOError:
            return False
        return True

    def poke(self) -> None:
        os.write(self._fd, b"\0\0\0\0")

    def close(self) -> None:
        self.region.release()
        self._mm.close()
        os.close(self._fd)
