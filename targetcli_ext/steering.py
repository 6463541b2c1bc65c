"""What the steering commands of /replication/volumes/<name> and /replication/replicas/<name>
share: calling a daemon over its control socket, and parsing the replication settings.

A daemon's refusal comes back as ``ExecutionError`` with the daemon's own reason; the command
adds what was (not) changed. ``ReplicationContext.call`` is the way to a daemon (the tests
inject it); a context without it (an older one) calls the socket directly.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from configshell_fb import ExecutionError

from appliance.control.client import ControlError, call

UNREACHABLE = "cannot talk to control socket"

_BANDWIDTH = re.compile(r"(?P<n>-?[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]?)(?:I?B)?(?:/S)?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
BANDWIDTH_MIN = 1 << 10          # 1K/s: anything slower never ships a batch in useful time
BANDWIDTH_MAX = 1 << 40          # 1T/s: more is a typo, no link is that fast
_WINDOW = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")


def call_daemon(ctx, socket: Path, cmd: str, **args) -> object:
    """One control command; ``ExecutionError`` with the daemon's reason when refused."""
    own = getattr(ctx, "call", None)
    if own is not None:
        return own(socket, cmd, **args)
    try:
        return call(socket, cmd, args, timeout=ctx.config.status_timeout_s)
    except ControlError as err:
        raise ExecutionError(str(err)) from err
    except ValueError as err:            # a reply that is not JSON
        raise ExecutionError(f"{socket} answered {cmd!r} with something that is not JSON: "
                             f"{err}") from err


def nothing_changed(text: str) -> str:
    """A refusal's message, ending with "nothing changed" once (daemons may say it already)."""
    text = str(text).rstrip(" .;")
    said = text.rstrip(")").endswith("nothing changed")     # "; nothing changed" or "(...)"
    return text if said else f"{text}; nothing changed"


def unreachable(err: Exception) -> bool:
    """The daemon did not answer (not running), as opposed to refusing."""
    return UNREACHABLE in str(err)


def transmitter_socket(ctx, name: str) -> Path:
    """The control socket of the volume's transmitter (``transmitter-<name>.sock``)."""
    sockets = ctx.config.sockets
    own = getattr(sockets, "transmitter", None)
    if callable(own):
        return Path(own(name))
    return Path(sockets.run_dir) / f"transmitter-{name}.sock"


# --- settings -----------------------------------------------------------------------------


def parse_bandwidth(text: str) -> float | None:
    """Bytes per second from ``50M``, ``1.5G``, ``800K``, ``12500000`` (K, M, G, T are
    powers of 1024, as the status prints KiB, MiB, GiB; ``MB``, ``MiB``, ``M/s`` read the
    same), or None for ``none`` (no limit)."""
    how = ("use a rate per second with K, M or G, e.g. bandwidth_limit=50M, or "
           "bandwidth_limit=none for no limit")
    raw = (text or "").strip()
    if raw.lower() in ("none", "off", "unlimited"):
        return None
    m = _BANDWIDTH.fullmatch(raw.upper())
    if not m:
        raise ValueError(f"bandwidth_limit {text!r} does not parse: {how}")
    value = float(m.group("n")) * _UNITS[m.group("unit")]
    if not BANDWIDTH_MIN <= value <= BANDWIDTH_MAX:
        raise ValueError(f"bandwidth_limit {text!r} is out of range: from "
                         f"{format_bandwidth(BANDWIDTH_MIN)} to {format_bandwidth(BANDWIDTH_MAX)}"
                         f" per second, or none")
    return float(round(value))


def format_bandwidth(value: float | None) -> str:
    """The setting as the admin typed it: the largest unit it is a whole multiple of."""
    if value is None:
        return "none"
    n = round(value)
    for unit in ("T", "G", "M", "K"):
        if n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def parse_blackout(text: str) -> list[str]:
    """Windows without shipping, local time: ``08:00-18:00`` or several comma-separated
    (``22:00-06:00`` wraps midnight); ``none`` for no window. Normalised to HH:MM-HH:MM."""
    how = ("use HH:MM-HH:MM windows in local time, comma-separated, e.g. "
           "blackout=08:00-18:00,20:00-22:00, or blackout=none")
    raw = (text or "").strip()
    if not raw:
        raise ValueError(f"blackout is empty: {how}")
    if raw.lower() in ("none", "off"):
        return []
    windows = []
    for part in raw.split(","):
        m = _WINDOW.fullmatch(part.strip())
        if not m:
            raise ValueError(f"blackout window {part.strip()!r} does not parse: {how}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        try:
            start, end = dt.time(h1, m1), dt.time(h2, m2)
        except ValueError as err:
            raise ValueError(f"blackout window {part.strip()!r}: {err}; {how}") from err
        if start == end:
            raise ValueError(f"blackout window {part.strip()!r} is empty (start equals end): "
                             f"{how}")
        windows.append(f"{start:%H:%M}-{end:%H:%M}")
    return windows


def format_blackout(windows: list[str] | None) -> str:
    return ",".join(windows) if windows else "none"


def parse_bool(text: str | bool, what: str) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ExecutionError(f"{what}={text!r} is neither true nor false: use {what}=true or "
                         f"{what}=false; nothing changed")


def complete(candidates: list[str], text: str) -> list[str]:
    """configshell's convention: a single match gets a trailing space."""
    found = [c for c in candidates if c.startswith(text)]
    return [found[0] + " "] if len(found) == 1 else found
