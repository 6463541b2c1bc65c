"""Where the shell finds its state and the daemons: one object passed in, never module globals.

The defaults are the appliance's paths; each can be overridden from the environment (the VM
tests and a developer's machine point them elsewhere)::

    APPLIANCE_REPLICATION_DIR   state directory (site.json, site.pem, site.key, peers/, the
                                daemons' generated TOML files)
    APPLIANCE_REPLICAS_DIR      the receiver's state_dir (provisioned replicas)
    APPLIANCE_GROUPS_DIR        the consistency groups' files, as the handler finds them:
                                <group>.group.json, <group>.jnl, <group>.bitmap
    APPLIANCE_RUN_DIR           receiver.sock and transmitter-<name>.sock
    APPLIANCE_HANDLER_SOCKET    the handler's control socket
    APPLIANCE_SAVED_CONFIG      replication.json that saveconfig wrote and boot restores
                                (default: beside LIO's saveconfig.json)
    TARGETCLI_HOME              targetcli's preferences directory (as stock targetcli)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from targetcli_ext.daemon_config import Layout
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.model import DEFAULT_STATE_DIR

SAVED_FILE = "replication.json"
# Debian's targetcli-fb and rtslib-fb keep LIO's saveconfig.json here (on the appliance a
# bind mount of the state disk); saveconfig writes replication.json beside it.
DEFAULT_SAVED_CONFIG = Path("/etc/rtslib-fb-target") / SAVED_FILE


@dataclass(frozen=True)
class ShellConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    replicas_dir: Path = Path("/var/lib/appliance/replicas")
    groups_dir: Path = Path("/var/lib/appliance/groups")
    sockets: DaemonSockets = field(default_factory=DaemonSockets)
    # Stock targetcli's lock: one configuration command at a time, ours or stock targetcli's.
    lock_file: Path = Path("/var/run/targetcli.lock")
    prefs_dir: str = "~/.targetcli"
    status_timeout_s: float = 3.0
    # A command a daemon carries out before it answers (pause-journal flushes the cached
    # writes, rollback applies the undo log, promote and demote sync the replica): it may take
    # long on a busy appliance, and a timeout would report a failure while it goes on.
    command_timeout_s: float = 300.0
    # Fetching a peer's certificate to pair with it: how long to wait for its receiver.
    fetch_timeout_s: float = 5.0
    saved_config: Path = DEFAULT_SAVED_CONFIG

    @property
    def layout(self) -> Layout:
        return Layout(self.state_dir, self.replicas_dir, self.sockets.run_dir,
                      self.groups_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ShellConfig:
        base = cls()
        sockets = DaemonSockets(
            handler=Path(env.get("APPLIANCE_HANDLER_SOCKET", base.sockets.handler)),
            run_dir=Path(env.get("APPLIANCE_RUN_DIR", base.sockets.run_dir)))
        return cls(state_dir=Path(env.get("APPLIANCE_REPLICATION_DIR", base.state_dir)),
                   replicas_dir=Path(env.get("APPLIANCE_REPLICAS_DIR", base.replicas_dir)),
                   groups_dir=Path(env.get("APPLIANCE_GROUPS_DIR", base.groups_dir)),
                   sockets=sockets, prefs_dir=env.get("TARGETCLI_HOME", base.prefs_dir),
                   saved_config=Path(env.get("APPLIANCE_SAVED_CONFIG", base.saved_config)))
