"""The running receiver, in process (plain TCP on loopback): an offered volume is provisioned
only with ``provision`` on, and an admin operation holds the volume: its session is closed, a
new HELLO for it is refused with ``busy`` (status says which operation), and the next HELLO
after the operation is admitted again."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from appliance.control.client import call
from appliance.replication import wire
from appliance.replication.config import receiver_config
from appliance.replication.dr.receiver import Receiver
from appliance.replication.handshake import Hello
from appliance.replication.link import FrameLink, LinkClosed

FT = wire.FrameType
A = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000a1")
B = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000b2")
SIZE = 256 * 512
DEADLINE = 10.0


def config(tmp_path, *, provision: bool) -> dict:
    return {"identity": "dr", "listen": "127.0.0.1:7700", "state_dir": str(tmp_path / "replicas"),
            "control_socket": str(tmp_path / "rx.sock"), "insecure": True,
            "provision": provision, "provision_journal_size": 1 << 20,
            "volume": [{"uuid": str(A), "size_bytes": SIZE, "journal_size": 1 << 20}]}


async def hello(rx: Receiver, vol: uuid.UUID, name: str = "") -> tuple[FrameLink, wire.Frame]:
    reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
    link = FrameLink(reader, writer)
    await link.send_json(FT.HELLO, Hello("site-a", vol, SIZE, 512, 1, 1, name=name).to_dict())
    return link, await link.recv(DEADLINE)


def run(tmp_path, body, *, provision: bool = False) -> None:
    async def go():
        cfg = receiver_config(config(tmp_path, provision=provision))
        rx = Receiver(dataclasses.replace(cfg, listen=("127.0.0.1", 0)))    # any free port
        await rx.start()
        try:
            await asyncio.wait_for(body(rx), 3 * DEADLINE)
        finally:
            await rx.close()
    asyncio.run(go())


def test_an_offer_is_refused_without_provision_and_provisioned_with_it(tmp_path):
    async def refused(rx):
        link, frame = await hello(rx, B, "vb")
        assert frame.type is FT.REFUSE
        assert wire.decode_json(frame.payload)["code"] == "unknown-volume"
        await link.close()
        (offer,) = (await asyncio.to_thread(call, rx.cfg.control_socket, "status"))[
            "refused_offers"]
        assert (offer["volume"], offer["name"], offer["code"]) == (str(B), "vb", "unknown-volume")
        assert not (tmp_path / "replicas" / str(B)).exists()
    run(tmp_path, refused)

    async def provisioned(rx):
        link, frame = await hello(rx, B, "vb")
        assert frame.type is FT.WELCOME, wire.decode_json(frame.payload)
        st = await asyncio.to_thread(call, rx.cfg.control_socket, "status")
        vol = st["volumes"][str(B)]
        assert (vol["name"], vol["provisioned"], vol["link"]["state"]) == ("vb", True,
                                                                            "connected")
        assert st["refused_offers"] == []
        await link.close()
    run(tmp_path, provisioned, provision=True)


def test_an_operation_closes_its_volume_s_session_and_holds_new_ones_off_until_it_ends(tmp_path):
    async def body(rx):
        first, frame = await hello(rx, A)
        assert frame.type is FT.WELCOME
        slot = rx.slots[A]
        async with rx.holding(slot, "promote"):
            # The held volume's session is closed...
            try:
                closed = await first.recv(DEADLINE)
                assert closed.type is not FT.WELCOME
            except LinkClosed:
                pass
            # ... a new HELLO for it is refused with busy, naming the operation ...
            again, frame = await hello(rx, A)
            assert frame.type is FT.REFUSE
            refusal = wire.decode_json(frame.payload)
            assert refusal["code"] == "busy" and "running promote" in refusal["reason"]
            await again.close()
            st = await asyncio.to_thread(call, rx.cfg.control_socket, "status")
            assert st["volumes"][str(A)]["busy"] == "promote"
        # ... and once it ends the primary is admitted again.
        back, frame = await hello(rx, A)
        assert frame.type is FT.WELCOME, wire.decode_json(frame.payload)
        st = await asyncio.to_thread(call, rx.cfg.control_socket, "status")
        assert st["volumes"][str(A)]["busy"] is None
        assert st["volumes"][str(A)]["link"]["connects"] == 2
        await back.close()
    run(tmp_path, body)
