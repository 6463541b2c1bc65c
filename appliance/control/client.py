"""Blocking client for the control socket (used by appliancectl, tests and the shell)."""

from __future__ import annotations

import json
import socket
from pathlib import Path


class ControlError(RuntimeError):
    """The daemon answered with an error, or could not be reached."""


def call(path: Path | str, cmd: str, args: dict | None = None, *, timeout: float = 5.0):
    """Send one command and return its result."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError(f"{path}: connection closed before a reply")
                buf += chunk
    except OSError as err:
        raise ControlError(f"cannot talk to control socket {path}: {err}") from err
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply["result"]
