"""Structured entries for the systemd journal through its native protocol.

One datagram per entry to journald's socket (systemd.journal-fields(7); the protocol:
https://systemd.io/JOURNAL_NATIVE_PROTOCOL/): fields ``KEY=value`` one per line, a value
holding a newline as ``KEY\\n`` + its length (64-bit little endian) + the value + ``\\n``.
MESSAGE_ID makes an alert findable (``journalctl MESSAGE_ID=<id>``) whatever its text.

Without journald (a test, a container) or when its socket does not take the datagram at once
(the exporter never waits for it), the entry goes to the Python log instead, with its fields.
"""

from __future__ import annotations

import logging
import re
import socket
import struct
from pathlib import Path

log = logging.getLogger("appliance-exporter")

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_FIELD = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")
# journald PRIORITY (syslog levels) to the Python log's
_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
           4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}


def encode(fields: dict[str, object]) -> bytes:
    """The datagram for ``fields`` (None values left out)."""
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        if not _FIELD.match(key):
            raise ValueError(f"journal field name {key!r} must be upper case letters, digits "
                             f"and underscores")
        data = str(value).encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends entries to journald at ``path``; falls back to the log."""

    def __init__(self, path: Path = JOURNAL_SOCKET, identifier: str = "appliance-exporter"):
        self.path = Path(path)
        self.identifier = identifier

    def send(self, message: str, *, priority: int, message_id: str | None = None,
             **fields: object) -> bool:
        """True when journald took the entry; otherwise it was logged."""
        entry = {"MESSAGE": message, "PRIORITY": priority, "MESSAGE_ID": message_id,
                 "SYSLOG_IDENTIFIER": self.identifier,
                 **{k.upper(): v for k, v in fields.items()}}
        data = encode(entry)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)         # never wait for journald
                sock.sendto(data, str(self.path))
        except OSError as err:
            extra = " ".join(f"{k}={v}" for k, v in entry.items()
                             if v is not None and k not in ("MESSAGE", "PRIORITY"))
            log.log(_LEVELS.get(priority, logging.INFO), "%s [%s]", message, extra)
            log.debug("journal socket %s did not take the entry: %s", self.path, err)
            return False
        log.debug("journal: %s", message)
        return True
