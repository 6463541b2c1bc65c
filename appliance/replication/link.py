"""A framed, optionally compressed, bandwidth-limited link over asyncio streams.

Both ends use it: it reads one verified frame at a time (with a deadline, so a dead peer is
noticed), writes frames, and compresses BATCH payloads with zstd once the handshake agreed on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import zstandard

from appliance.replication import wire


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
    """Frames over a connected (possibly TLS) stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, limiter: TokenBucket | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._limiter = limiter
        self._compressor: zstandard.ZstdCompressor | None = None
        self._decompressor = zstandard.ZstdDecompressor()
        addr = writer.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.payload_bytes_sent = 0   # before compression

    def ssl_object(self):
        return self._writer.get_extra_info("ssl_object")

    def enable_compression(self, level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)

    async def send(self, ftype: wire.FrameType, payload: bytes | memoryview = b"") -> None:
        await self.send_parts(ftype, [payload])

    async def send_parts(self, ftype: wire.FrameType, parts: list[bytes | memoryview]) -> None:
        """Send one frame whose payload is the concatenation of ``parts`` (one copy, into the
        frame itself). The frame goes to the transport in one write: one TLS record run and
        one send, not one per part (a record header would otherwise travel alone)."""
        flags = 0
        raw_len = sum(len(p) for p in parts)
        if self._compressor is not None and ftype in (wire.FrameType.BATCH, wire.FrameType.REGION):
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            packed = self._compressor.compress(payload)
            if len(packed) < raw_len:
                parts, flags = [packed], wire.FLAG_ZSTD
        frame = b"".join(wire.frame_parts(ftype, parts, flags))
        size = len(frame)
        if self._limiter is not None:
            await self._limiter.take(size)
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"send to {self.peer} failed: {err}") from err
        self.bytes_sent += size
        self.payload_bytes_sent += raw_len

    async def send_json(self, ftype: wire.FrameType, obj: dict) -> None:
        await self.send(ftype, wire.encode_json(obj))

    async def _read_exactly(self, n: int, deadline: float | None, what: str) -> bytes:
        try:
            if deadline is None:
                return await self._reader.readexactly(n)
            return await asyncio.wait_for(self._reader.readexactly(n), deadline)
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise LinkClosed(f"{self.peer} closed in the middle of a frame ({what})") from err
            raise LinkClosed(f"{self.peer} closed the connection") from err
        except TimeoutError as err:
            raise LinkClosed(f"no frame from {self.peer} for {deadline:.1f} s ({what})") from err
        except (ConnectionError, OSError) as err:
            raise LinkClosed(f"receive from {self.peer} failed: {err}") from err

    async def recv(self, timeout: float | None) -> wire.Frame:
        """Next verified frame, decompressed. Raises LinkClosed or a WireError."""
        head = await self._read_exactly(wire.HEADER_SIZE, timeout, "header")
        ftype, flags, length = wire.parse_header(head)
        rest = await self._read_exactly(length + wire.TRAILER_SIZE, timeout, f"{ftype.name} body")
        payload = memoryview(rest)[:length]     # (a view: a BATCH is not copied again)
        wire.check_payload(payload, rest[length:])
        self.bytes_received += len(head) + len(rest)
        if flags & wire.FLAG_ZSTD:
            try:
                payload = self._decompressor.decompress(payload, max_output_size=wire.MAX_PAYLOAD)
            except zstandard.ZstdError as err:
                raise wire.BadFrame(f"zstd payload does not decompress: {err}") from err
        return wire.Frame(ftype, payload, flags)

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 0.5)
        except TimeoutError:
            self._writer.transport.abort()   # a dead peer never completes the close
        except (ConnectionError, OSError):
            pass   # the peer is gone already; there is nothing left to flush
