"""Ask the local daemons for their status over their control sockets (JSON, never their files).

The shell (targetcli_ext), ``appliancectl status`` and the exporter know the daemons only
through ``appliance.control.client.call``: the handler's socket, the receiver's, one per
transmitter (``transmitter-<name>.sock``) and the exporter's in the run directory. A socket
that does not exist is a daemon that does not run here (a primary runs no receiver); one that
exists but does not answer is reported, since then its volume's state is unknown.
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

    @property
    def exporter(self) -> Path:
        return self.run_dir / "exporter.sock"

    def transmitters(self) -> dict[str, Path]:
        """Transmitter sockets by the name in their file name (the volume's, as the demo and
        the transmitter template name them)."""
        try:
            found = sorted(self.run_dir.glob(f"{TRANSMITTER_PREFIX}*.sock"))
        except OSError:
            return {}
        return {p.name[len(TRANSMITTER_PREFIX):-len(".sock")]: p for p in found}


Caller = Callable[..., object]


@dataclass(frozen=True)
class Answer:
    """One daemon's socket, asked once: its status, or why it gave none."""

    daemon: str                 # "handler" | "receiver" | "transmitter" | "exporter"
    name: str | None            # a transmitter's name (its socket's), else None
    path: Path
    status: dict | None         # None: the socket exists but the daemon did not answer
    error: str | None = None

    @property
    def label(self) -> str:
        """How messages name the daemon: "handler", "transmitter vol1"."""
        return f"{self.daemon} {self.name}" if self.name is not None else self.daemon


def ask_daemons(sockets: DaemonSockets, *, timeout: float = 3.0, caller: Caller = call,
                exporter: bool = True) -> list[Answer]:
    """Every local daemon whose socket exists, asked for its status in turn (each call
    bounded by ``timeout``). ``exporter`` False: not the exporter's (the exporter itself)."""
    wanted: list[tuple[str, str | None, Path]] = [("handler", None, sockets.handler),
                                                  ("receiver", None, sockets.receiver)]
    wanted += [("transmitter", name, path) for name, path in sockets.transmitters().items()]
    if exporter:
        wanted.append(("exporter", None, sockets.exporter))
    answers = []
    for daemon, name, path in wanted:
        if not path.exists():
            continue
        try:
            status = caller(path, "status", timeout=timeout)
        except (ControlError, ValueError) as err:    # ValueError: a reply that is not JSON
            answers.append(Answer(daemon, name, path, None, str(err)))
            continue
        if not isinstance(status, dict):
            answers.append(Answer(daemon, name, path, None,
                                  f"answered a status that is no JSON object: {status!r:.80}"))
            continue
        answers.append(Answer(daemon, name, path, status))
    return answers


def empty_snapshot() -> dict:
    return {"handler": None, "receiver": None, "transmitters": {}, "exporter": None,
            "errors": {}}


def snapshot(answers: list[Answer]) -> dict:
    """The snapshot ``targetcli_ext.status_text.render_status`` reads: each daemon's status
    (None when it does not run here or did not answer), and why those that did not answer
    did not, by "<daemon> (<socket>)"."""
    snap = empty_snapshot()
    for answer in answers:
        if answer.status is None:
            snap["errors"][f"{answer.label} ({answer.path})"] = answer.error
        elif answer.daemon == "transmitter":
            snap["transmitters"][answer.name] = answer.status
        else:
            snap[answer.daemon] = answer.status
    return snap


def collect(sockets: DaemonSockets, *, timeout: float = 3.0, caller: Caller = call) -> dict:
    """The snapshot of every local daemon (``snapshot`` of ``ask_daemons``)."""
    return snapshot(ask_daemons(sockets, timeout=timeout, caller=caller))
