"""FrameLink's receive path (``Inbound``, a BufferedProtocol): frames split anywhere, many
in one read, larger than its staging buffer, over plain TCP and TLS built the way the daemons
build them, and every way a link ends (close between frames, mid-header, mid-body, silence,
damage) with the same messages as before."""

import asyncio
import random
import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import direct_io
from appliance.replication import inbound as inbound_mod
from appliance.replication import wire
from appliance.replication.link import FrameLink, LinkClosed

FT = wire.FrameType
BIG = inbound_mod._STAGING * 4 + 12345          # larger than the staging buffer: read in place
MID = inbound_mod._DIRECT + 1                   # just over the in-place threshold
DEADLINE = 10.0                              # every wait in these tests is bounded by this


class RecordingTransport:
    """What ``Inbound`` asks of a transport while parsing, recorded (pure parsing tests)."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


def stream(payloads: list[tuple[FT, bytes]]) -> bytes:
    return b"".join(wire.encode_frame(t, p) for t, p in payloads)


def parse_in_chunks(data: bytes, cuts: list[int]) -> list[tuple[FT, bytes]]:
    """Feed ``data`` cut at ``cuts`` the way a transport delivers it; the frames queued."""
    async def go():
        inbound = inbound_mod.Inbound(asyncio.get_running_loop())
        inbound.connection_made(RecordingTransport())
        last = 0
        for cut in [*sorted(set(cuts)), len(data)]:
            inbound.feed(data[last:cut])
            last = cut
        assert inbound.failure is None, inbound.failure
        out = []
        while inbound.frames:
            ftype, _flags, length, body = inbound.pop()
            view = memoryview(body)
            wire.check_payload(view[:length], view[length : length + wire.TRAILER_SIZE])
            out.append((ftype, bytes(view[:length])))
        assert inbound.partial() is None
        return out
    return asyncio.run(go())


SMALL = [(FT.HEARTBEAT, b""), (FT.ACK, wire.encode_ack(7, 5)), (FT.BATCH, bytes(range(200)))]


def test_small_frames_split_at_every_byte_boundary_and_in_pairs():
    data = stream(SMALL)
    for i in range(len(data) + 1):
        assert parse_in_chunks(data, [i]) == SMALL, f"cut at {i}"
    for i in range(0, len(data), 7):
        for j in range(i, len(data), 11):
            assert parse_in_chunks(data, [i, j]) == SMALL, f"cuts at {i}, {j}"


def test_large_frames_split_around_every_edge():
    rng = random.Random(5)
    frames = [(FT.ACK, wire.encode_ack(1, 1)), (FT.BATCH, rng.randbytes(MID)),
              (FT.BATCH, rng.randbytes(BIG)), (FT.HEARTBEAT, wire.encode_seq(3))]
    data = stream(frames)
    edges, pos = [], 0
    for _t, p in frames:
        edges += [pos, pos + wire.HEADER_SIZE, pos + wire.HEADER_SIZE + len(p)]
        pos += wire.HEADER_SIZE + len(p) + wire.TRAILER_SIZE
    edges += [inbound_mod._STAGING, inbound_mod._DIRECT, len(data)]
    cuts = sorted({c for e in edges for c in range(e - 3, e + 4) if 0 <= c <= len(data)})
    for cut in cuts:
        assert parse_in_chunks(data, [cut]) == frames, f"cut at {cut}"
    assert parse_in_chunks(data, list(range(0, len(data), 4093))) == frames


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3 * inbound_mod._DIRECT), max_size=4),
       st.lists(st.integers(0, 1 << 21), max_size=12), st.integers(0, 1 << 16))
def test_any_frames_in_any_chunks(sizes, cuts, seed):
    rng = random.Random(seed)
    frames = [(FT.BATCH, rng.randbytes(n)) for n in sizes]
    data = stream(frames)
    assert parse_in_chunks(data, [c % (len(data) + 1) for c in cuts]) == frames


def test_a_large_frames_buffer_is_reused_only_once_nothing_refers_to_it():
    async def go():
        inbound = inbound_mod.Inbound(asyncio.get_running_loop())
        inbound.connection_made(RecordingTransport())

        def receive(fill: bytes) -> tuple[object, memoryview]:
            """(the buffer the frame was received into, its payload)"""
            inbound.feed(stream([(FT.BATCH, fill * BIG)]))
            _t, _f, length, body = inbound.pop()
            return body.obj, memoryview(body)[:length]

        inbound.feed(stream([(FT.BATCH, b"q" * BIG), (FT.BATCH, b"r" * BIG)]))
        queued = [inbound.pop()[3] for _ in range(2)]   # both were queued at once
        assert queued[0].obj is not queued[1].obj and queued[0][:BIG] == b"q" * BIG
        del queued
        first, payload = receive(b"a")
        second, _ = receive(b"b")
        assert second is not first, "a buffer was refilled while its payload was held"
        records = [payload[i : i + 100] for i in range(0, 1000, 100)]   # views of views
        del first, payload
        third, _ = receive(b"c")
        assert bytes(records[3]) == b"a" * 100, "a held record view was overwritten"
        assert third is not second
        del records
        # Nothing refers to the first buffer now: it is refilled, not replaced.
        kept = [id(entry[0]) for entry in inbound.pool._kept]
        made = inbound.pool.made
        _, held = receive(b"d")
        assert id(held.obj) in kept and inbound.pool.made == made, \
            "a released buffer was not reused"
        assert held.obj is not second and held.obj is not third
        assert bytes(held[:3]) == b"ddd" and len(held) == BIG
    asyncio.run(go())


def test_reading_pauses_while_frames_wait_and_resumes_once_taken():
    async def go():
        inbound = inbound_mod.Inbound(asyncio.get_running_loop())
        transport = RecordingTransport()
        inbound.connection_made(transport)
        n = inbound_mod._HIGH_WATER // BIG + 2
        inbound.feed(stream([(FT.BATCH, bytes(BIG))] * n))
        assert transport.paused and transport.pauses == 1
        while inbound.frames:
            inbound.pop()
        assert not transport.paused
    asyncio.run(go())


def test_a_bad_header_is_reported_after_the_frames_before_it():
    data = stream(SMALL) + b"SSH-2.0-OpenSSH_9.2\r\n" + stream(SMALL)

    async def go():
        inbound = inbound_mod.Inbound(asyncio.get_running_loop())
        transport = RecordingTransport()
        inbound.connection_made(transport)
        inbound.feed(data)
        assert len(inbound.frames) == len(SMALL) and transport.paused
        assert isinstance(inbound.failure, wire.BadMagic)
    asyncio.run(go())


# --- over real sockets, plain and TLS, built the way the daemons build them -----------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-subj", "/CN=dr-site", "-addext", "subjectAltName=DNS:dr-site",
                    "-days", "2"], cwd=d, check=True, capture_output=True, timeout=60)
    return d / "c.pem", d / "k.pem"


async def connected(tls_files, tls: bool) -> tuple[FrameLink, FrameLink]:
    """(transmitter end, receiver end): open_connection(ssl=...) on one side, start_server
    and then StreamWriter.start_tls on the other, like transmitter.py and receiver.py."""
    cert, key = tls_files
    server_ctx = client_ctx = None
    if tls:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def accept(reader, writer):
        if server_ctx is not None:
            await writer.start_tls(server_ctx)
        accepted.set_result(FrameLink(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, limit=1 << 20,
        server_hostname="dr-site" if tls else None), DEADLINE)
    tx = FrameLink(r, w)
    rx = await asyncio.wait_for(accepted, DEADLINE)
    server.close()
    return tx, rx


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_frames_of_every_size_cross_both_ways(tls_files, tls):
    async def go():
        tx, rx = await connected(tls_files, tls)
        rng = random.Random(1)
        sent = [(FT.HEARTBEAT, b""), (FT.BATCH, rng.randbytes(BIG)), (FT.ACK, bytes(16)),
                (FT.BATCH, rng.randbytes(MID)), (FT.BATCH, rng.randbytes(1000))] * 3
        for t, p in sent:
            await tx.send(t, p)
        got = [await rx.recv(DEADLINE) for _ in sent]
        assert [(f.type, bytes(f.payload)) for f in got] == sent
        # A large frame is received into a page-aligned buffer of its own, writable (the
        # replica's direct writes take its address); a small one is copied out, read-only.
        for f in got:
            large = len(f.payload) > inbound_mod._DIRECT
            assert f.payload.readonly is not large
            if large:
                assert direct_io.address_of(f.payload) % direct_io.ALIGN == 0
        assert rx.bytes_received == tx.bytes_sent
        await rx.send(FT.ACK, wire.encode_ack(9, 8))
        assert wire.decode_ack((await tx.recv(DEADLINE)).payload) == (9, 8)
        if tls:
            assert tx.ssl_object() is not None and rx.ssl_object() is not None
        await tx.close()
        with pytest.raises(LinkClosed, match="closed the connection"):
            await rx.recv(DEADLINE)
        await rx.close()
    run(go())


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("cut,what", [(5, "header"), (wire.HEADER_SIZE + 10, "BATCH body"),
                                      (wire.HEADER_SIZE + BIG, "BATCH body")])
def test_peer_closing_mid_frame(tls_files, tls, cut, what):
    async def go():
        tx, rx = await connected(tls_files, tls)
        await tx.send(FT.HEARTBEAT)
        tx._transport.write(wire.encode_frame(FT.BATCH, bytes(BIG))[:cut])
        await tx.close()
        assert (await rx.recv(DEADLINE)).type is FT.HEARTBEAT
        with pytest.raises(LinkClosed, match=rf"closed in the middle of a frame \({what}\)"):
            await rx.recv(DEADLINE)
        await rx.close()
    run(go())


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_silence_mid_header_and_mid_body_is_a_dead_link(tls_files, tls):
    async def go():
        tx, rx = await connected(tls_files, tls)
        with pytest.raises(LinkClosed, match=r"no frame from .* for 0\.2 s \(header\)"):
            await rx.recv(0.2)
        frame = wire.encode_frame(FT.BATCH, bytes(MID))
        tx._transport.write(frame[:wire.HEADER_SIZE + 100])
        with pytest.raises(LinkClosed, match=r"for 0\.2 s \(BATCH body\)"):
            await rx.recv(0.2)
        tx._transport.write(frame[wire.HEADER_SIZE + 100:])   # late, but the frame is whole
        assert bytes((await rx.recv(DEADLINE)).payload) == bytes(MID)
        await tx.close()
        await rx.close()
    run(go())


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_damaged_payload_is_a_bad_checksum(tls_files, tls):
    async def go():
        tx, rx = await connected(tls_files, tls)
        for size in (100, BIG):
            frame = bytearray(wire.encode_frame(FT.BATCH, bytes(size)))
            frame[wire.HEADER_SIZE + size // 2] ^= 1
            tx._transport.write(bytes(frame))
            with pytest.raises(wire.BadChecksum, match="payload CRC32C"):
                await rx.recv(DEADLINE)
        await tx.close()
        await rx.close()
    run(go())


def test_bytes_and_end_the_stream_reader_already_held_are_taken_over(tls_files):
    """A HELLO (and the peer's close) that reached the StreamReader before the link was
    built are not lost: delivered first, then the close is reported."""
    async def go():
        import socket
        a, b = socket.socketpair()
        with a, b:
            ra, wa = await asyncio.open_connection(sock=a)
            b.sendall(stream(SMALL) + wire.encode_frame(FT.BATCH, bytes(BIG))[:40])
            b.shutdown(socket.SHUT_WR)
            for _ in range(200):      # until the StreamReader has seen everything and EOF
                if ra._eof:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the StreamReader never saw the peer's EOF")
            link = FrameLink(ra, wa)
            assert [(f.type, bytes(f.payload)) for f in
                    [await link.recv(DEADLINE) for _ in SMALL]] == SMALL
            with pytest.raises(LinkClosed, match=r"middle of a frame \(BATCH body\)"):
                await link.recv(DEADLINE)
            await link.close()
    run(go())


def test_a_sender_waits_for_a_slow_reader_then_everything_arrives(tls_files):
    async def go():
        tx, rx = await connected(tls_files, False)
        payload = bytes(BIG)
        sent = 0

        async def send_all():
            nonlocal sent
            for _ in range(64):        # 64 MiB: more than the socket and transport buffer
                await tx.send(FT.BATCH, payload)
                sent += 1
        sender = asyncio.create_task(send_all())
        await asyncio.sleep(0.3)
        assert sent < 64, "send_parts did not wait for the peer to read (no backpressure)"
        for i in range(64):
            assert len((await rx.recv(DEADLINE)).payload) == BIG, f"frame {i}"
        await asyncio.wait_for(sender, DEADLINE)
        await tx.close()
        await rx.close()
    run(go())
