"""The few configfs files of a `user` backstore the daemon reads and writes
(drivers/target/target_core_user.c: `tcmu_attrib_attrs`, `tcmu_action_attrs`).

Never called from the netlink thread for a device whose reply is pending: those writes can wait
on the kernel's netlink reply wait (`tcmu_wait_genl_cmd_reply`, uninterruptible).
"""

from __future__ import annotations

import re
from pathlib import Path

_SIZE_RE = re.compile(r"\bSize: (\d+)")
_SERIAL_PREFIX = "T10 VPD Unit Serial Number:"


class ConfigfsError(OSError):
    """A configfs attribute could not be read or written."""


class BackstoreControl:
    """`/sys/kernel/config/target/core/user_<hba>/<name>`"""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, rel: str, value: str) -> None:
        try:
            (self.path / rel).write_text(value)
        except OSError as err:
            raise ConfigfsError(err.errno, f"writing {value!r} to {self.path / rel} failed") from err

    def _read(self, rel: str) -> str:
        try:
            return (self.path / rel).read_text()
        except OSError as err:
            raise ConfigfsError(err.errno, f"reading {self.path / rel} failed") from err

    def disable_cmd_time_out(self) -> None:
        """`attrib/cmd_time_out` = 0: commands wait in the ring for the handler instead of being
        failed to the host (NOT READY) after 30 s, so a handler restart that takes longer
        (slow start, loaded machine) costs the host latency, not I/O errors; aborts and LUN
        resets then wait for the handler too (as ceph-iscsi configures it). The kernel
        accepts it only before the device is exported (EINVAL afterwards;
        target_core_user.c `tcmu_cmd_time_out_store`)."""
        self._write("attrib/cmd_time_out", "0")

    def block_dev(self, blocked: bool) -> None:
        self._write("action/block_dev", "1" if blocked else "0")

    def reset_ring(self, mode: int = 1) -> None:
        self._write("action/reset_ring", str(mode))

    def dev_size(self) -> int:
        """Bytes, from `info` ("... Size: <n> ..."), as rtslib parses it."""
        match = _SIZE_RE.search(self._read("info"))
        if not match:
            raise ConfigfsError(0, f"{self.path}/info has no 'Size:'")
        return int(match.group(1))

    def hw_block_size(self) -> int:
        return int(self._read("attrib/hw_block_size").strip())

    def unit_serial(self) -> str | None:
        """wwn/vpd_unit_serial without its label; None while not yet set (set after enable)."""
        text = self._read("wwn/vpd_unit_serial").strip()
        serial = text.removeprefix(_SERIAL_PREFIX).strip()
        return serial or None

    def hw_max_sectors(self) -> int:
        return int(self._read("attrib/hw_max_sectors").strip())
