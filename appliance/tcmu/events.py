"""The TCM-USER netlink commands and the device event the daemon acts on.

Kept apart from `netlink`, which needs pyroute2, so that the device manager (and its tests)
depend only on these types, not on the netlink socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TcmuGenlCmd(enum.IntEnum):
    """enum tcmu_genl_cmd"""

    ADDED_DEVICE = 1
    REMOVED_DEVICE = 2
    RECONFIG_DEVICE = 3
    ADDED_DEVICE_DONE = 4
    REMOVED_DEVICE_DONE = 5
    RECONFIG_DEVICE_DONE = 6
    SET_FEATURES = 7


REPLY_FOR = {
    TcmuGenlCmd.ADDED_DEVICE: TcmuGenlCmd.ADDED_DEVICE_DONE,
    TcmuGenlCmd.REMOVED_DEVICE: TcmuGenlCmd.REMOVED_DEVICE_DONE,
    TcmuGenlCmd.RECONFIG_DEVICE: TcmuGenlCmd.RECONFIG_DEVICE_DONE,
}


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One kernel → user event."""

    cmd: TcmuGenlCmd
    device: str            # UIO name: tcm-user/<hba>/<name>/<dev_config>
    minor: int             # N of /dev/uioN
    device_id: int         # se_dev.dev_index; echoed in the reply
    dev_cfg: str | None = None
    dev_size: int | None = None
    writecache: int | None = None
