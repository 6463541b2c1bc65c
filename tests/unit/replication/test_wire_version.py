"""Frame version 2 against peers that speak version 1 (docs/protocol.md, "Versions"): a
version-1 primary gets a REFUSE it can read, with code ``version``, and a transmitter whose
receiver drops the connection without a word is told what that most likely means."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import uuid

from appliance.checksum import crc32c
from appliance.replication import wire
from appliance.replication.config import receiver_config
from appliance.replication.dr.receiver import Receiver
from appliance.replication.handshake import Hello
from appliance.replication.link import FrameLink, LinkClosed

FT = wire.FrameType
VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000a1")
SIZE = 256 * 512
DEADLINE = 10.0


def v1_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Version-1 frames as a version-1 peer parses them: (version, type, payload)."""
    out, pos = [], 0
    while len(data) - pos >= 16:
        magic, version, ftype, flags, length, hcrc = struct.unpack_from("<4sBBHII", data, pos)
        assert magic == wire.MAGIC and crc32c(data[pos:pos + 12]) == hcrc
        payload = data[pos + 16:pos + 16 + length]
        (pcrc,) = struct.unpack_from("<I", data, pos + 16 + length)
        assert crc32c(payload) == pcrc and flags == 0
        out.append((version, ftype, payload))
        pos += 20 + length
    return out


def test_a_version_1_primary_is_refused_in_version_1_with_the_reason(tmp_path):
    async def go():
        cfg = receiver_config({
            "identity": "dr", "listen": "127.0.0.1:7700", "insecure": True,
            "state_dir": str(tmp_path / "replicas"), "control_socket": str(tmp_path / "rx.sock"),
            "volume": [{"uuid": str(VOL), "size_bytes": SIZE, "journal_size": 1 << 20}]})
        rx = Receiver(dataclasses.replace(cfg, listen=("127.0.0.1", 0)))
        await rx.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
            hello = Hello("site-a", VOL, SIZE, 512, 1, 1).to_dict()
            writer.write(wire.encode_frame(FT.HELLO, wire.encode_json(hello),
                                           version=wire.LEGACY_VERSION))
            answer = await asyncio.wait_for(reader.read(), DEADLINE)     # then it closes
            writer.close()
            ((version, ftype, payload),) = v1_frames(answer)
            assert (version, ftype) == (wire.LEGACY_VERSION, FT.REFUSE)
            refusal = wire.decode_json(payload)
            assert refusal["code"] == "version"
            assert "speaks version 2" in refusal["reason"]
            assert "upgrade the primary" in refusal["reason"]
            assert rx.refusals == 1
            assert rx.slots[VOL].replica.binding().primary is None      # nothing bound
        finally:
            await rx.close()
    asyncio.run(go())


def test_a_receiver_that_drops_our_hello_is_named_as_maybe_another_version():
    async def go():
        async def old_receiver(reader, writer):     # reads the HELLO, says nothing, closes
            await reader.read(64)
            writer.close()
        server = await asyncio.start_server(old_receiver, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       server.sockets[0].getsockname()[1])
        link = FrameLink(reader, writer)
        await link.send_json(FT.HELLO, {"protocol": 1})
        try:
            await link.recv(DEADLINE)
        except LinkClosed as err:
            assert "without answering" in str(err)
            assert f"frame version {wire.WIRE_VERSION}" in str(err)
        else:
            raise AssertionError("the link did not report the close")
        await link.close()
        server.close()
        await server.wait_closed()
    asyncio.run(go())
