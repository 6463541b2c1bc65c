"""The replication daemons' systemd units, started and stopped through ``systemctl``.

``appliance-receiver.service`` runs on every appliance with an identity (peers fetch its
certificate to pair, and a primary connects to it); ``appliance-transmitter@<volume>.service``
runs per replicated volume; ``appliance-exporter.service`` on every appliance (the Prometheus
endpoint and the alerts). The runner is injectable: the unit tests have no systemd.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

RECEIVER_UNIT = "appliance-receiver.service"
EXPORTER_UNIT = "appliance-exporter.service"

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def transmitter_unit(volume: str) -> str:
    return f"appliance-transmitter@{volume}.service"


class UnitError(RuntimeError):
    """systemctl refused; the message names the unit and what systemctl said."""


def _run(args: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          check=False)


class Units:
    """start/stop/restart/is_active of a unit (``systemctl``)."""

    def __init__(self, runner: Runner | None = None) -> None:
        self._runner = runner or _run

    def _systemctl(self, verb: str, unit: str) -> subprocess.CompletedProcess:
        try:
            return self._runner(["systemctl", verb, unit])
        except FileNotFoundError as err:
            raise UnitError(f"cannot {verb} {unit}: systemctl is not installed (start the "
                            f"daemon by hand)") from err
        except subprocess.TimeoutExpired as err:
            raise UnitError(f"systemctl {verb} {unit} took over 120 s: see 'systemctl status "
                            f"{unit}'") from err

    def _checked(self, verb: str, unit: str) -> None:
        done = self._systemctl(verb, unit)
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip()
            raise UnitError(f"systemctl {verb} {unit} failed: {said or f'exit {done.returncode}'}"
                            f" (see 'journalctl -u {unit}')")

    def start(self, unit: str) -> None:
        self._checked("start", unit)

    def stop(self, unit: str) -> None:
        self._checked("stop", unit)

    def restart(self, unit: str) -> None:
        self._checked("restart", unit)

    def is_active(self, unit: str) -> bool:
        return self._systemctl("is-active", unit).returncode == 0

    def log_lines(self, unit: str, since: float, count: int = 20) -> list[str]:
        """The last lines the unit's own processes wrote to the journal since ``since``
        (epoch seconds): what a daemon said before it exited (systemd's lines about the unit
        are left out). Empty when the journal cannot be read."""
        try:
            done = self._runner(["journalctl", f"_SYSTEMD_UNIT={unit}", f"--since=@{int(since)}",
                                 "--output=cat", "--no-pager", f"--lines={count}"])
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return []
        if done.returncode != 0:
            return []
        return [line for line in (done.stdout or "").splitlines() if line.strip()]
