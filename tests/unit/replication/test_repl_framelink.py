"""FrameLink over a real socket pair: compression, deadlines, damage; the token bucket."""

import asyncio
import socket

import pytest

from appliance.replication import wire
from appliance.replication.link import FrameLink, LinkClosed, TokenBucket

FT = wire.FrameType


async def pair() -> tuple[FrameLink, FrameLink, socket.socket]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    return FrameLink(ra, wa), FrameLink(rb, wb), b


def test_frames_cross_and_compression_shrinks_batches():
    async def go():
        tx, rx, _ = await pair()
        tx.enable_compression()
        payload = b"A" * 100_000
        await tx.send(FT.BATCH, payload)
        await tx.send(FT.HEARTBEAT, wire.encode_seq(1))
        f1 = await rx.recv(1.0)
        f2 = await rx.recv(1.0)
        assert (f1.type, f1.payload, f1.flags) == (FT.BATCH, payload, wire.FLAG_ZSTD)
        assert (f2.type, f2.flags) == (FT.HEARTBEAT, 0)   # only BATCH is compressed
        assert tx.bytes_sent < 1000 < tx.payload_bytes_sent
        await tx.close()
        await rx.close()
    asyncio.run(go())


def test_a_frame_sent_as_parts_arrives_whole_with_and_without_compression():
    async def go():
        tx, rx, _ = await pair()
        parts = [b"head", memoryview(bytes(range(256)) * 512), b"", b"tail" * 1000]
        whole = b"".join(parts)
        await tx.send_parts(FT.BATCH, parts)
        f = await rx.recv(1.0)
        assert (f.type, f.flags, bytes(f.payload)) == (FT.BATCH, 0, whole)
        assert tx.bytes_sent == len(whole) + wire.HEADER_SIZE + wire.TRAILER_SIZE
        tx.enable_compression()
        await tx.send_parts(FT.BATCH, parts)
        f = await rx.recv(1.0)
        assert (f.flags, bytes(f.payload)) == (wire.FLAG_ZSTD, whole)
        assert tx.payload_bytes_sent == 2 * len(whole)
        await tx.close()
        await rx.close()
    asyncio.run(go())


def test_silence_past_the_deadline_is_a_dead_link():
    async def go():
        tx, rx, _ = await pair()
        with pytest.raises(LinkClosed, match="no frame from"):
            await rx.recv(0.2)
        await tx.close()
        await rx.close()
    asyncio.run(go())


def test_peer_closing_mid_frame_and_garbage():
    async def go():
        tx, rx, _ = await pair()
        frame = wire.encode_frame(FT.BATCH, b"x" * 100)
        tx._writer.write(frame[:50])
        await tx.close()
        with pytest.raises(LinkClosed, match="middle of a frame"):
            await rx.recv(1.0)
        await rx.close()
        tx, rx, _ = await pair()
        tx._writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        with pytest.raises(wire.BadMagic):
            await rx.recv(1.0)
        await tx.close()
        await rx.close()
    asyncio.run(go())


def test_damaged_compressed_payload_is_refused():
    async def go():
        tx, rx, _ = await pair()
        # A valid frame whose zstd flag lies: CRCs pass, decompression must fail cleanly.
        tx._writer.write(wire.encode_frame(FT.BATCH, b"not zstd at all", wire.FLAG_ZSTD))
        with pytest.raises(wire.BadFrame, match="zstd"):
            await rx.recv(1.0)
        await tx.close()
        await rx.close()
    asyncio.run(go())


def test_token_bucket_rate():
    now = [0.0]
    tb = TokenBucket(1000.0, burst=100.0, clock=lambda: now[0])
    assert tb.delay_for(100) == 0.0
    assert tb.delay_for(500) == pytest.approx(0.5)
    now[0] = 0.5
    assert tb.delay_for(0) == 0.0
    now[0] = 10.0
    assert tb.delay_for(100) == 0.0      # burst caps the credit
    assert tb.delay_for(1) > 0
    with pytest.raises(ValueError):
        TokenBucket(0)
