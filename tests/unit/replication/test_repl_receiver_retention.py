"""The running receiver's point-in-time commands, in process: set-retention refuses a bad
value or an unknown argument naming it and changes nothing; recover needs a window; while a
recover copies the mirror, the operations that close the replica (promote, rollback...) are
refused saying why, and a second recover of the volume too."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid

import pytest

from appliance.control.client import ControlError, call
from appliance.replication.config import receiver_config
from appliance.replication.dr.receiver import Receiver
from appliance.replication.dr.retention_settings import RetentionSettings
from appliance.replication.handshake import Hello
from appliance.replication.wire import KIND_WRITE, WireRecord

A = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000a3")
SIZE = 256 * 512


def run(tmp_path, body) -> None:
    async def go():
        cfg = receiver_config({
            "identity": "dr", "listen": "127.0.0.1:7700",
            "state_dir": str(tmp_path / "replicas"), "control_socket": str(tmp_path / "rx.sock"),
            "insecure": True,
            "volume": [{"uuid": str(A), "size_bytes": SIZE, "journal_size": 1 << 20}]})
        rx = Receiver(dataclasses.replace(cfg, listen=("127.0.0.1", 0)))
        await rx.start()
        try:
            await asyncio.wait_for(body(rx), 30)
        finally:
            await rx.close()
    asyncio.run(go())


def ctl(rx, cmd, **args):
    return asyncio.to_thread(call, rx.cfg.control_socket, cmd, args)


def test_set_retention_and_recover_refusals(tmp_path):
    async def body(rx):
        for args, said in [
            ({"retain_s": "soon"}, "set-retention refused: retain_s='soon' does not parse"),
            ({"retain_bytes": "5K"}, "retain_bytes='5K' is less than 1M"),
            ({"keep": 1}, "unknown argument(s) keep"),
            ({}, "give retain_s and/or retain_bytes"),
        ]:
            with pytest.raises(ControlError, match=said.replace("(", r"\(").replace(")", r"\)")):
                await ctl(rx, "set-retention", volume=str(A), **args)
        st = (await ctl(rx, "status"))["volumes"][str(A)]["retention"]
        assert st["enabled"] is False, "nothing changed"
        with pytest.raises(ControlError, match="recover refused: .*keeps no retention window"):
            await ctl(rx, "recover", volume=str(A), at="seq:1")
        out = await ctl(rx, "set-retention", volume=str(A), retain_s="2h")
        assert out["retention"]["retain_s"] == 7200 and out["retention"]["enabled"]
        out = await ctl(rx, "set-retention", volume=str(A), retain_bytes="1G")
        assert (out["retention"]["retain_s"], out["retention"]["retain_bytes"]) == (7200, 1 << 30)
        with pytest.raises(ControlError, match="say which point"):
            await ctl(rx, "recover", volume=str(A))
    run(tmp_path, body)


def test_operations_wait_for_a_recover_in_progress(tmp_path, monkeypatch):
    from appliance.replication.dr import recover
    copying, release = threading.Event(), threading.Event()
    real_copy = recover._copy

    def slow_copy(mirror, fd, size):
        copying.set()
        release.wait(10)
        real_copy(mirror, fd, size)
    monkeypatch.setattr(recover, "_copy", slow_copy)

    async def body(rx):
        replica = rx.slots[A].replica
        replica.bind(Hello("site-a", A, SIZE, 512, 1, 1), 0)
        replica.set_retention(RetentionSettings(3600, 0))
        for seq in range(1, 4):
            replica.commit([WireRecord(seq, seq, KIND_WRITE, seq, 1, bytes([seq]) * 512)])
            replica.apply_pending()
        job = asyncio.create_task(ctl(rx, "recover", volume=str(A), at="seq:1"))
        await asyncio.to_thread(copying.wait, 10)
        assert (await ctl(rx, "status"))["volumes"][str(A)]["recovering"] == "seq:1"
        with pytest.raises(ControlError, match="a recover at seq:1 is copying its mirror"):
            await ctl(rx, "promote", volume=str(A))
        with pytest.raises(ControlError, match="a recover at seq:1 is running; one at a time"):
            await ctl(rx, "recover", volume=str(A), at="seq:2")
        release.set()
        out = await job
        assert out["seq"] == 1
        with open(out["path"], "rb") as f:
            image = f.read()
        assert image[512:1024] == b"\x01" * 512 and image[1024:2048] == bytes(1024)
        st = (await ctl(rx, "status"))["volumes"][str(A)]
        assert st["state"] == "consistent" and st["recovering"] is None
    run(tmp_path, body)
