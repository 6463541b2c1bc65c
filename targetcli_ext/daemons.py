"""Ask the local daemons for their status over their control sockets (JSON, never their files).

The collection itself lives in ``appliance.control.site_status`` (the exporter and
appliancectl use it too); this module keeps the shell's names for it and adds
``snapshot_of``, the snapshot of one daemon's status for its human form.
"""

from __future__ import annotations

from pathlib import Path

from appliance.control.site_status import (
    TRANSMITTER_PREFIX,
    Caller,
    DaemonSockets,
    collect,
    empty_snapshot,
)

__all__ = ["TRANSMITTER_PREFIX", "Caller", "DaemonSockets", "collect", "snapshot_of"]


def snapshot_of(status: dict, socket: Path) -> dict:
    """The snapshot of one daemon's status (``appliancectl --socket ... status``)."""
    snap = empty_snapshot()
    role = status.get("role") if isinstance(status, dict) else None
    if role == "transmitter":
        name = socket.name
        if name.startswith(TRANSMITTER_PREFIX) and name.endswith(".sock"):
            name = name[len(TRANSMITTER_PREFIX):-len(".sock")]
        snap["transmitters"][name] = status
    elif role in ("handler", "receiver"):
        snap[role] = status
    else:
        raise ValueError(f"{socket} answered a status of role {role!r}, which has no human "
                         f"form: use --json")
    return snap
