"""Finding TCMU UIO devices: parse their names, scan sysfs, watch udev for add/remove."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyudev

log = logging.getLogger(__name__)

UIO_NAME_PREFIX = "tcm-user"


@dataclass(frozen=True, slots=True)
class TcmuName:
    """`tcm-user/<hba>/<name>/<subtype>/<cfgstring>` (the cfgstring may contain '/')."""

    hba: int
    name: str
    subtype: str | None
    cfgstring: str

    @property
    def dev_config(self) -> str:
        return f"{self.subtype}/{self.cfgstring}" if self.subtype is not None else ""

    def configfs_dir(self, configfs_core: Path) -> Path:
        """/sys/kernel/config/target/core/user_<hba>/<name>"""
        return configfs_core / f"user_{self.hba}" / self.name


def parse_uio_name(uio_name: str) -> TcmuName | None:
    """None for UIO devices that are not TCMU's; ValueError for a malformed TCMU name."""
    parts = uio_name.split("/", 4)
    if parts[0] != UIO_NAME_PREFIX:
        return None
    if len(parts) < 3:
        raise ValueError(f"TCMU UIO name {uio_name!r} lacks <hba>/<name>")
    try:
        hba = int(parts[1])
    except ValueError as err:
        raise ValueError(f"TCMU UIO name {uio_name!r}: HBA {parts[1]!r} is not a number") from err
    subtype = parts[3] if len(parts) > 3 else None
    cfgstring = parts[4] if len(parts) > 4 else ""
    return TcmuName(hba, parts[2], subtype, cfgstring)


def scan_uio(sysfs_class_uio: Path) -> dict[int, str]:
    """{minor: name} of every TCMU UIO device present now."""
    found: dict[int, str] = {}
    if not sysfs_class_uio.is_dir():
        return found
    for entry in sorted(sysfs_class_uio.glob("uio*")):
        try:
            name = (entry / "name").read_text().rstrip("\n")
            minor = int(entry.name.removeprefix("uio"))
        except (OSError, ValueError):
            continue  # vanished while scanning, or not uioN
        if name.startswith(UIO_NAME_PREFIX + "/"):
            found[minor] = name
    return found


UdevCallback = Callable[[str, int, str], None]  # (action "add"|"remove", minor, uio name)


class UdevWatcher:
    """Calls back on uio devices appearing and disappearing (pyudev netlink monitor)."""

    def __init__(self, callback: UdevCallback) -> None:
        self._callback = callback
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context)
        self._monitor.filter_by(subsystem="uio")
        self._monitor.start()
        self._names: dict[int, str] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            device = self._monitor.poll(timeout=0.5)
            if device is None:
                continue
            try:
                self._dispatch(device)
            except Exception:
                log.exception("udev event for %s failed", device.sys_path)

    def _dispatch(self, device: pyudev.Device) -> None:
        minor = int(device.sys_name.removeprefix("uio"))
        if device.action == "add":
            name = (device.attributes.asstring("name") or "").rstrip("\n")
            if name.startswith(UIO_NAME_PREFIX + "/"):
                self._names[minor] = name
                self._callback("add", minor, name)
        elif device.action == "remove" and minor in self._names:
            self._callback("remove", minor, self._names.pop(minor))

    def stop(self) -> None:
        self._stop.set()
