"""FrameLink's send path: a frame is assembled in one buffer, reused for the next frame only
once nothing (a transport keeping a view of it) refers to it any more."""

import asyncio
import socket

from appliance.replication import wire
from appliance.replication.link import FrameLink

FT = wire.FrameType
DEADLINE = 10.0


def test_the_frame_buffer_is_reused_only_when_released():
    async def go():
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        tx, rx = FrameLink(ra, wa), FrameLink(rb, wb)
        parts = [bytes([i]) * (64 << 10) for i in range(16)]
        whole = b"".join(parts)
        buffers = set()
        for i in range(20):
            await tx.send_parts(FT.BATCH, parts)
            buffers.add(id(tx._out))
            f = await rx.recv(DEADLINE)
            assert bytes(f.payload) == whole, f"frame {i}"
        assert len(buffers) == 1, "a released frame buffer was not reused"
        # Something still holding the last frame (as a transport may): a new buffer, and
        # the held bytes are left alone.
        held = memoryview(tx._out)
        before = bytes(held)
        await tx.send_parts(FT.BATCH, [b"x" * 1000])
        assert tx._out is not held.obj and bytes(held) == before
        assert bytes((await rx.recv(DEADLINE)).payload) == b"x" * 1000
        # A smaller frame after a larger one reuses the larger buffer.
        del held
        await tx.send(FT.HEARTBEAT, wire.encode_seq(5))
        assert wire.decode_seq((await rx.recv(DEADLINE)).payload) == 5
        assert tx.bytes_sent == rx.bytes_received
        await tx.close()
        await rx.close()
    asyncio.run(asyncio.wait_for(go(), 60))
