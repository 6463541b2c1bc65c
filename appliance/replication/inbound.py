"""The receiving half of a FrameLink: an ``asyncio.BufferedProtocol`` that parses frames.

The socket (or the TLS layer) reads straight into the buffer a frame ends up in, instead of
into a fresh bytes object copied into a StreamReader's buffer and copied out again by
``readexactly``. ``take_over`` moves a connected transport from its StreamReader to an
``Inbound``, together with whatever the reader already held.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

from appliance.replication import wire

_STAGING = 256 * 1024        # headers and small frames are received here
_DIRECT = _STAGING // 2      # a frame body larger than this is received into its own buffer
_COMPACT_BELOW = 64 * 1024   # move a partial frame to the front when less room is left
_HIGH_WATER = 8 * 1024 * 1024  # stop reading while this many received bytes wait for recv()
_SPARES = 8                  # recent in-place buffers kept, to be reused once released
_SPARE_MAX = 4 * 1024 * 1024   # (not bigger ones)
ROUND = 64 * 1024           # in-place buffers are sized in these steps, so they fit again


class Inbound(asyncio.BufferedProtocol):
    """The receiving half of a FrameLink, as the transport's protocol.

    Small frames (and every header) land in one reused staging buffer and are copied out
    (they are small). A frame whose body is larger than ``_DIRECT`` gets a buffer of its own,
    which the transport fills directly; it is handed to the consumer as is, never reused
    (a BATCH's records are views into it until they are applied). After such a frame the next
    read asks for a header only, so the body after it is again read in place.

    Frames are queued complete but unverified (``recv`` checks the payload CRC); a header
    that fails to parse stops reading and is reported after the frames before it. It also
    does the flow control a StreamWriter's protocol did: ``drain`` waits while the transport
    has paused writing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._staging = bytearray(_STAGING)
        self._view = memoryview(self._staging)
        self._start = self._end = 0      # unparsed bytes: _staging[_start:_end]
        self._head: tuple[wire.FrameType, int, int] | None = None  # the frame being received
        self._body: bytearray | None = None   # its own buffer, while being filled in place
        self._need = 0                        # (the body and trailer: the buffer may be longer)
        self._filled = 0
        self._spares: deque[bytearray] = deque(maxlen=_SPARES)
        self._header_only = False        # the last frame was a direct one: read a header next
        self.frames: deque[tuple[wire.FrameType, int, int, bytes | bytearray]] = deque()
        self._queued = 0
        self._reading_paused = False
        self.failure: wire.WireError | None = None
        self.lost = False
        self.lost_error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._writing_paused = False
        self._drain_waiters: deque[asyncio.Future] = deque()
        self.closed = loop.create_future()

    # --- what recv() asks --------------------------------------------------------------

    def partial(self) -> str | None:
        """What an incomplete frame is missing (for messages), None between frames."""
        if self._head is not None:
            return f"{self._head[0].name} body"
        return "header" if self._end > self._start else None

    async def wait(self, timeout: float | None) -> None:
        """Until a frame is complete, a header arrives, or the connection ends. Raises
        TimeoutError after ``timeout`` seconds of none of that."""
        self._waiter = self._loop.create_future()
        try:
            await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None

    def pop(self) -> tuple[wire.FrameType, int, int, bytes | bytearray]:
        frame = self.frames.popleft()
        self._queued -= HEADER_AND_TRAILER + frame[2]
        if self._reading_paused and self._queued <= _HIGH_WATER // 2 and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()
        return frame

    def feed(self, data: bytes | memoryview) -> None:
        """Take bytes that did not come through the transport (what a StreamReader held)."""
        data = memoryview(data)
        while data and self.failure is None:
            buf = self.get_buffer(len(data))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            self.buffer_updated(n)
            data = data[n:]

    # --- asyncio.BufferedProtocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return memoryview(self._body)[self._filled : self._need]
        if self._start == self._end:
            self._start = self._end = 0
            if self._header_only:
                return self._view[: wire.HEADER_SIZE]
        elif len(self._staging) - self._end < _COMPACT_BELOW:
            n = self._end - self._start
            self._staging[:n] = bytes(self._view[self._start : self._end])
            self._start, self._end = 0, n
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is not None:
            self._filled += nbytes
            if self._filled == self._need:
                body, self._body = self._body, None
                self._complete(body, direct=True)
            return
        self._end += nbytes
        self._parse()

    def eof_received(self) -> bool:
        return False    # close the transport: no frame can follow the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_error = True, exc
        self._wake()
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost") if exc is None
                                     else exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if self._writing_paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    # --- parsing ------------------------------------------------------------------------

    def _parse(self) -> None:
        view = self._view
        while self.failure is None:
            avail = self._end - self._start
            if self._head is None:
                if avail < wire.HEADER_SIZE:
                    return
                try:
                    self._head = wire.parse_header(view[self._start : self._start
                                                        + wire.HEADER_SIZE])
                except wire.WireError as err:
                    self.failure = err
                    self.transport.pause_reading()
                    self._wake()
                    return
                self._wake()    # progress: the body's deadline starts now
            need = self._head[2] + wire.TRAILER_SIZE
            begin = self._start + wire.HEADER_SIZE
            if avail - wire.HEADER_SIZE >= need:
                self._start = begin + need
                self._complete(bytes(view[begin : begin + need]), direct=False)
                continue
            if need > _DIRECT:
                got = self._end - begin
                self._body, self._need = self._body_buffer(need), need
                self._body[:got] = view[begin : self._end]
                self._filled = got
                self._start = self._end = 0
            return

    def _body_buffer(self, need: int) -> bytearray:
        """A buffer of at least ``need`` bytes for a body read in place: a recent one that
        nothing refers to any more, else a new one. A frame's payload and every view of it
        (records waiting to be made durable and applied) hold a reference to the buffer, so
        a buffer referred to only by the spares list (and this loop, and ``getrefcount``'s
        argument) cannot be seen by anyone: refilling it saves zero-filling fresh memory,
        page faults included, for every large frame."""
        for buf in self._spares:
            if len(buf) >= need and sys.getrefcount(buf) <= UNSHARED_REFS:
                return buf
        buf = bytearray(-(-need // ROUND) * ROUND)
        if len(buf) <= _SPARE_MAX:
            self._spares.append(buf)
        return buf

    def _complete(self, body: bytes | bytearray, *, direct: bool) -> None:
        ftype, flags, length = self._head
        self._head = None
        self._header_only = direct
        self.frames.append((ftype, flags, length, body))
        self._queued += HEADER_AND_TRAILER + length
        if self._queued > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


HEADER_AND_TRAILER = wire.HEADER_SIZE + wire.TRAILER_SIZE
UNSHARED_REFS = 3   # see Inbound._body_buffer (checked by tests/unit/replication/test_link*)


def take_over(reader: asyncio.StreamReader, transport: asyncio.Transport) -> Inbound:
    """Make a new ``Inbound`` the transport's protocol, ahead of it what ``reader`` holds.

    A StreamReader has no public way to hand over what it holds without waiting, nor to
    say whether it has seen the end when it still holds bytes: its ``_buffer`` and ``_eof``
    (both in CPython since asyncio began) say it. Nothing here suspends, so no byte can
    arrive between the two protocols.
    """
    inbound = Inbound(asyncio.get_running_loop())
    inbound.connection_made(transport)
    transport.set_protocol(inbound)
    held: bytearray = reader._buffer   # (private: see the docstring)
    ended: bool = reader._eof
    inbound.feed(bytes(held))
    held.clear()
    error = reader.exception()
    if error is not None:
        inbound.connection_lost(error)
    elif ended or transport.is_closing():
        inbound.connection_lost(None)
    elif not transport.is_reading():
        transport.resume_reading()   # (the reader had paused it: it was full)
    return inbound
