"""Ask the local daemons for their status over their control sockets (JSON, never their files).

The shell knows the daemons only through ``appliance.control.client.call``: the handler's
socket, the receiver's and one per transmitter (``transmitter-<name>.sock``) in the run
directory. A socket that does not exist is a daemon that does not run here (a primary runs no
receiver); one that exists but does not answer is reported, since then its volume's state is
unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.control.client import ControlError, call

TRANSMITTER_PREFIX = "transmitter-"


@dataclass(frozen=True)
class DaemonSockets:
    handler: Path = Path("/run/appliance-handler/handler.sock")
    run_dir: Path = Path("/run/appliance")        # receiver.sock, transmitter-<name>.sock

    @property
    def receiver(self) -> Path:
        return self.run_dir / "receiver.sock"

    def transmitters(self) -> dict[str, Path]:
        """Transmitter sockets by the name in their file name (the volume's, as the demo and
        the transmitter template name them)."""
        try:
            found = sorted(self.run_dir.glob(f"{TRANSMITTER_PREFIX}*.sock"))
        except OSError:
            return {}
        return {p.name[len(TRANSMITTER_PREFIX):-len(".sock")]: p for p in found}


Caller = Callable[..., object]


def collect(sockets: DaemonSockets, *, timeout: float = 3.0, caller: Caller = call) -> dict:
    """The snapshot ``status_text.render_status`` reads."""
    snap: dict = {"handler": None, "receiver": None, "transmitters": {}, "errors": {}}

    def ask(what: str, path: Path):
        if not path.exists():
            return None
        try:
            return caller(path, "status", timeout=timeout)
        except (ControlError, ValueError) as err:    # ValueError: a reply that is not JSON
            snap["errors"][f"{what} ({path})"] = str(err)
            return None

    snap["handler"] = ask("handler", sockets.handler)
    snap["receiver"] = ask("receiver", sockets.receiver)
    for name, path in sockets.transmitters().items():
        status = ask(f"transmitter {name}", path)
        if status is not None:
            snap["transmitters"][name] = status
    return snap


def snapshot_of(status: dict, socket: Path) -> dict:
    """The snapshot of one daemon's status (``appliancectl --socket ... status``)."""
    snap: dict = {"handler": None, "receiver": None, "transmitters": {}, "errors": {}}
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
