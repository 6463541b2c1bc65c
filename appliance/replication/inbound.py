"""The receiving half of a FrameLink: an ``asyncio.BufferedProtocol`` that parses frames.

The socket (or the TLS layer) reads straight into the buffer a frame ends up in, instead of
into a fresh bytes object copied into a StreamReader's buffer and copied out again by
``readexactly``. ``take_over`` moves a connected transport from its StreamReader to an
``Inbound``, together with whatever the reader already held.
"""

from __future__ import annotations

import asyncio
from collections import deque

from appliance.replication import wire
from appliance.replication.buffers import BufferPool

_STAGING = 256 * 1024        # headers and small frames are received here
_DIRECT = 64 * 1024          # a frame body larger than this is received into its own buffer
_COMPACT_BELOW = 64 * 1024   # move a partial frame to the front when less room is left
_HIGH_WATER = 8 * 1024 * 1024  # stop reading while this many received bytes wait for recv()
# Page-aligned body buffers kept for reuse per link: what the receiver's pipeline holds at
# full speed (frames in flight, committed records waiting for the mirror).
_POOL_BYTES = 64 * 1024 * 1024
_TRIM_EVERY_S = 5.0          # an idle link gives back the buffers it no longer uses
ROUND = 64 * 1024           # frame buffers are sized in these steps, so they fit again


class Inbound(asyncio.BufferedProtocol):
    """The receiving half of a FrameLink, as the transport's protocol.

    Small frames (and every header) land in one reused staging buffer and are copied out
    (they are small). A frame whose body is larger than ``_DIRECT`` gets a page-aligned
    buffer of its own (``buffers.BufferPool``: reused once nothing refers to it), which the
    transport fills directly; it is handed to the consumer as is (a BATCH's records are
    views into it until they are applied, and the replica's direct writes read them from
    there). After such a frame the next read asks for a header only, so the body after it
    is again read in place.

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
        self._body: memoryview | None = None  # its own buffer, while being filled in place
        self._need = 0                        # (the body and trailer: the buffer may be longer)
        self._filled = 0
        self.pool = BufferPool(_POOL_BYTES)
        self._trimmer: asyncio.TimerHandle | None = None
        self._header_only = False        # the last frame was a direct one: read a header next
        self.frames: deque[tuple[wire.FrameType, int, int, bytes | memoryview]] = deque()
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

    def pop(self) -> tuple[wire.FrameType, int, int, bytes | memoryview]:
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
        self._trimmer = self._loop.call_later(_TRIM_EVERY_S, self._trim)

    def _trim(self) -> None:
        self.pool.trim()
        if not self.lost:
            self._trimmer = self._loop.call_later(_TRIM_EVERY_S, self._trim)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._filled : self._need]
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
        if self._trimmer is not None:
            self._trimmer.cancel()
        self.pool.clear()
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
                if need > _DIRECT:      # (page-aligned as if it had been read in place)
                    body = self._body_buffer(need)
                    body[:] = view[begin : begin + need]
                else:
                    body = bytes(view[begin : begin + need])
                self._complete(body, direct=False)
                continue
            if need > _DIRECT:
                got = self._end - begin
                self._body, self._need = self._body_buffer(need), need
                self._body[:got] = view[begin : self._end]
                self._filled = got
                self._start = self._end = 0
            return

    def _body_buffer(self, need: int) -> memoryview:
        """A page-aligned buffer for a body read in place (a free one of the pool, else a
        new one), as a view of exactly ``need`` bytes."""
        return memoryview(self.pool.take(need))[:need]

    def _complete(self, body: bytes | memoryview, *, direct: bool) -> None:
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
# A send buffer referred to by its owner's attribute only (and getrefcount's argument and the
# caller's name) is free (checked by tests/unit/replication/test_link_send.py).
UNSHARED_REFS = 3


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
