"""Events between a volume's handler and its transmitter, for the synchronous modes
(docs/volume.md, "Synchronous modes").

- transmitter -> handler ``ACKED seq``: the DR holds every seq up to ``seq`` durably; a write
  waiting in ``sync`` or ``sync-on-flush`` completes at once, with no polling delay;
- handler -> transmitter ``WRITTEN seq``: a write waits for ``seq``: ship now (the transmitter
  otherwise polls an idle journal at up to IDLE_POLL_MAX_S), and answer with ACKED at once
  if the DR already holds it (a restarted handler learns where the DR is).

One Unix datagram socket per end, in the abstract namespace, named after the volume uuid:
no file to create or clean up, and it vanishes with the process that bound it. The
abstract namespace has no file permissions, so every datagram's sender is checked with
SCM_CREDENTIALS: only our own user is believed (a forged ACKED would complete writes the DR
does not hold). A datagram is 32 bytes: magic, kind, seq and the uuid of the journal the seq
belongs to: a volume whose journal was made anew (same mirror, same volume uuid, seqs from 1
again) ignores what a transmitter of the old journal says.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import uuid
from enum import IntEnum

log = logging.getLogger("appliance.sync_events")

_MESSAGE = struct.Struct("<4sIQ16s")
_MAGIC = b"ASE2"
_CREDS = struct.Struct("iII")        # struct ucred: pid, uid, gid


class Sent(IntEnum):
    """What became of a send."""
    SENT = 0
    ABSENT = 1     # no other end (not running)
    FULL = 2       # its queue is full: try again later with the newest news


class Kind(IntEnum):
    ACKED = 1
    WRITTEN = 2
    STOP = 3       # to oneself: wake a blocked receive for close


HANDLER = "handler"
TRANSMITTER = "transmitter"


def address(volume_uuid: uuid.UUID, role: str) -> bytes:
    return f"\0appliance/sync/{volume_uuid}/{role}".encode()


class SyncEvents:
    """One end: ``role`` is "handler" or "transmitter"; events go to the other."""

    def __init__(self, volume_uuid: uuid.UUID, role: str) -> None:
        if role not in (HANDLER, TRANSMITTER):
            raise ValueError(f"role {role!r}")
        peer = TRANSMITTER if role == HANDLER else HANDLER
        self.volume_uuid = volume_uuid
        self._own = address(volume_uuid, role)
        self._peer = address(volume_uuid, peer)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.bind(self._own)
        except OSError as err:
            self.sock.close()
            if err.errno == errno.EADDRINUSE:
                raise OSError(err.errno, f"another {role} of volume {volume_uuid} is running "
                                         "(its sync event socket is bound)") from None
            raise
        # Never blocks: a full queue on the other end (net.unix.max_dgram_qlen datagrams, 10
        # by default) must not stall a device thread or an event loop. send() says so, and
        # the sender of ACKED tries again (HandlerEvents); a lost WRITTEN costs at most the
        # transmitter's idle poll.
        self._sender = socket.socket(socket.AF_UNIX,
                                     socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._uid = os.getuid()
        self.dropped = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: Kind, seq: int, journal: uuid.UUID) -> Sent:
        """Send to the other end, never blocking (``dropped`` counts the FULL ones)."""
        try:
            self._sender.sendto(_MESSAGE.pack(_MAGIC, kind, seq, journal.bytes), self._peer)
            return Sent.SENT
        except (ConnectionRefusedError, FileNotFoundError):
            return Sent.ABSENT
        except OSError as err:          # BlockingIOError: the queue is full
            self.dropped += 1
            log.debug("sync event %s %d to %s not taken: %s", kind.name, seq, self._peer, err)
            return Sent.FULL

    def receive(self, *, block: bool = True) -> tuple[Kind, int, uuid.UUID] | None:
        """The next event from a process of our own user; None when non-blocking and none
        is queued. Datagrams from anyone else, or malformed, are dropped and logged."""
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(
                    64, socket.CMSG_SPACE(_CREDS.size), 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            event = self._parse(data, ancdata)
            if event is not None:
                return event

    def _parse(self, data: bytes, ancdata: list) -> tuple[Kind, int, uuid.UUID] | None:
        uid = next((_CREDS.unpack(bytes(cdata[:_CREDS.size]))[1]
                    for level, ctype, cdata in ancdata
                    if level == socket.SOL_SOCKET and ctype == socket.SCM_CREDENTIALS), None)
        if uid != self._uid:
            log.warning("sync event socket of volume %s: dropped a datagram from uid %s "
                        "(only uid %d is believed)", self.volume_uuid, uid, self._uid)
            return None
        if len(data) != _MESSAGE.size:
            log.warning("sync event socket of volume %s: dropped a %d-byte datagram",
                        self.volume_uuid, len(data))
            return None
        magic, kind, seq, journal = _MESSAGE.unpack(data)
        if magic != _MAGIC or kind not in Kind._value2member_map_:
            log.warning("sync event socket of volume %s: dropped a datagram that is not ours",
                        self.volume_uuid)
            return None
        return Kind(kind), seq, uuid.UUID(bytes=journal)

    def wake(self) -> None:
        """Wake a thread blocked in receive (it gets STOP)."""
        with contextlib.suppress(OSError):
            self._sender.sendto(_MESSAGE.pack(_MAGIC, Kind.STOP, 0, bytes(16)), self._own)

    def close(self) -> None:
        self._sender.close()
        self.sock.close()
