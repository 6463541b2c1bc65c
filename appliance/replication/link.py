"""A framed, optionally compressed, bandwidth-limited link over an asyncio transport.

Both ends use it: it reads one verified frame at a time (with a deadline, so a dead peer is
noticed), writes frames, and compresses BATCH payloads with zstd once the handshake agreed on it.

It is built on the (reader, writer) pair of ``asyncio.open_connection`` / ``start_server``,
but receives through its own ``asyncio.BufferedProtocol`` (``Inbound``): the socket (or the
TLS layer) reads straight into the buffer a frame ends up in, instead of into a fresh bytes
object copied into the StreamReader's buffer and copied out again by ``readexactly``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable

import zstandard

from appliance.replication import wire
from appliance.replication.inbound import (
    HEADER_AND_TRAILER,
    ROUND,
    UNSHARED_REFS,
    Inbound,
    take_over,
)


async def run_blocking(fn, *args):
    """Run blocking disk work in a thread. If the caller is cancelled meanwhile, the work is
    allowed to finish before the cancellation propagates, so that locks held around it (one
    session per volume) really cover it and two threads never work on one journal at once."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


# Over TLS, a frame up to this size is joined into one buffer (one TLS record); in a larger
# one, buffers under _SMALL are joined with their neighbours, so that a small piece (the frame
# header, a batch's head, the padding between records) does not travel as a record of its own.
_JOIN_BELOW = 64 * 1024
_SMALL = 16 * 1024


def _coalesced(parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    out: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    for part in parts:
        if len(part) < _SMALL:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out


class LinkClosed(ConnectionError):
    """The peer closed the connection (cleanly or not) or went silent past the deadline."""


class TokenBucket:
    """Bandwidth limit: ``take(n)`` sleeps until ``n`` bytes fit under ``rate`` bytes/second."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"bandwidth limit must be positive, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 10, 64 * 1024)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def delay_for(self, nbytes: int) -> float:
        """Debit ``nbytes`` and return how long the caller must wait first (may go negative)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, nbytes: int) -> None:
        delay = self.delay_for(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)


class FrameLink:
    """Frames over a connected (possibly TLS) stream pair.

    The transport is moved over to ``Inbound`` at once, taking along whatever the
    StreamReader had already received (and whether it had seen the end); from then on the
    reader and the writer's protocol are unused (the writer only closes the transport).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, limiter: TokenBucket | None = None) -> None:
        self._writer = writer
        self._transport = writer.transport
        self._inbound = take_over(reader, self._transport)
        self._limiter = limiter
        self._compressor: zstandard.ZstdCompressor | None = None
        self._decompressor = zstandard.ZstdDecompressor()
        addr = writer.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self._tls = writer.get_extra_info("ssl_object") is not None
        self.frames_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.payload_bytes_sent = 0   # before compression
        self._out = bytearray()       # the frame buffer (_assemble)

    def ssl_object(self):
        return self._writer.get_extra_info("ssl_object")

    def enable_compression(self, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)

    async def send(self, ftype: wire.FrameType, payload: bytes | memoryview = b"") -> None:
        await self.send_parts(ftype, [payload])

    async def send_parts(self, ftype: wire.FrameType, parts: list[bytes | memoryview],
                         *, head_crc: bool = False) -> None:
        """Send one frame whose payload is the concatenation of ``parts``. ``head_crc``: the
        payload is a bulk one (``wire.batch_parts``, ``wire.region_parts``) whose data its
        own CRCs cover, so the frame's CRC covers its head (``wire.FLAG_HEAD_CRC``) unless it
        goes compressed.

        Over TLS the parts go to the TLS layer as they are, each encrypted straight from its
        buffer (the journal's read buffer, for a BATCH) in one call; a plain socket gets the
        frame in one buffer, reused (Python 3.11's socket transport would join the parts
        into a new one). Either way the frame leaves in one send when the socket takes it."""
        flags = wire.FLAG_HEAD_CRC if head_crc else 0
        raw_len = sum(len(p) for p in parts)
        if self._compressor is not None and ftype in (wire.FrameType.BATCH, wire.FrameType.REGION):
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            packed = self._compressor.compress(payload)
            if len(packed) < raw_len:
                parts, flags = [packed], wire.FLAG_ZSTD
        fparts = wire.frame_parts(ftype, parts, flags)
        size = HEADER_AND_TRAILER + sum(len(p) for p in parts)
        if self._limiter is not None:
            await self._limiter.take(size)
        try:
            if self._tls and size > _JOIN_BELOW:
                self._transport.writelines(_coalesced(fparts))
            elif self._tls:
                self._transport.write(b"".join(fparts))
            else:
                # (A view: what the socket does not take at once is then copied once into
                # the transport's buffer, not sliced into a new bytes object first.)
                frame = self._assemble(fparts)
                self._transport.write(frame)
                del frame   # (the buffer is free for the next frame once the transport is)
            del fparts, parts
            await self._inbound.drain()
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"send to {self.peer} failed: {err}") from err
        self.bytes_sent += size
        self.payload_bytes_sent += raw_len

    def _assemble(self, fparts: list[bytes | memoryview]) -> memoryview:
        """The frame in one buffer: the last one again if nothing refers to it any more (a
        transport that keeps a view of it, as a TLS transport may until the handshake is
        done, or a newer Python's socket transport for what it could not send at once, holds
        a reference: then a new one), so that sending does not fault in a fresh frame-sized
        allocation every time (over TLS, half the transmitter's page faults)."""
        size = sum(len(p) for p in fparts)
        buf = self._out
        if len(buf) < size or sys.getrefcount(buf) > UNSHARED_REFS:
            buf = self._out = bytearray(max(-(-size // ROUND) * ROUND, ROUND))
        view = memoryview(buf)
        at = 0
        for part in fparts:
            n = len(part)
            view[at : at + n] = part
            at += n
        return view[:size]

    async def refuse_legacy(self, code: str, reason: str) -> None:
        """A REFUSE in the previous frame version, for a peer that speaks only that one (it
        would not parse ours): it logs the reason and says ``refused:CODE``, as for any
        refusal, instead of seeing a connection dropped without a word."""
        frame = wire.encode_frame(wire.FrameType.REFUSE,
                                  wire.encode_json({"code": code, "reason": reason}),
                                  version=wire.LEGACY_VERSION)
        try:
            self._transport.write(frame)
            await self._inbound.drain()
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"send to {self.peer} failed: {err}") from err

    async def send_json(self, ftype: wire.FrameType, obj: dict) -> None:
        await self.send(ftype, wire.encode_json(obj))

    async def recv(self, timeout: float | None) -> wire.Frame:
        """Next verified frame, decompressed. Raises LinkClosed or a WireError.

        ``timeout`` bounds the wait for a frame's header and then for its body."""
        inbound = self._inbound
        while not inbound.frames:
            if inbound.failure is not None:
                raise inbound.failure
            if inbound.lost:
                raise self._closed_error(inbound)
            try:
                await inbound.wait(timeout)
            except TimeoutError as err:
                raise LinkClosed(f"no frame from {self.peer} for {timeout:.1f} s "
                                 f"({inbound.partial() or 'header'})") from err
        ftype, flags, length, body = inbound.pop()
        # (A view: a BATCH is not copied again. A large frame's is writable: the page-aligned
        # buffer it was received into, which the replica's direct writes read from.)
        view = memoryview(body)
        payload = view[:length]
        wire.check_payload(payload, view[length : length + wire.TRAILER_SIZE], flags)
        self.bytes_received += HEADER_AND_TRAILER + length
        self.frames_received += 1
        if flags & wire.FLAG_ZSTD:
            try:
                payload = self._decompressor.decompress(payload, max_output_size=wire.MAX_PAYLOAD)
            except zstandard.ZstdError as err:
                raise wire.BadFrame(f"zstd payload does not decompress: {err}") from err
        return wire.Frame(ftype, payload, flags)

    def _closed_error(self, inbound: Inbound) -> LinkClosed:
        err = inbound.lost_error
        if err is not None:
            return LinkClosed(f"receive from {self.peer} failed: {err}")
        what = inbound.partial()
        if what is not None:
            return LinkClosed(f"{self.peer} closed in the middle of a frame ({what})")
        if not self.frames_received and self.bytes_sent:
            # A peer that does not speak our frame version closes without a word (one that
            # knows version 1 only logs BadVersion); a newer one answers with a REFUSE.
            return LinkClosed(f"{self.peer} closed the connection without answering (a peer "
                              f"that does not speak frame version {wire.WIRE_VERSION} does "
                              f"so: its log says why)")
        return LinkClosed(f"{self.peer} closed the connection")

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._inbound.closed), 0.5)
        except TimeoutError:
            self._transport.abort()   # a dead peer never completes the close
