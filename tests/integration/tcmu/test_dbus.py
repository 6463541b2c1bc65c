"""The D-Bus face, on a private dbus-daemon, queried the way targetcli queries it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from appliance.tcmu import cfgstring
from appliance.tcmu.dbus_service import (
    BUS_NAME,
    ROOT_PATH,
    DBusServiceError,
    HandlerObject,
    TcmuDBusService,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon (apt: dbus)"),
]


@pytest.fixture
def bus_address() -> Iterator[str]:
    proc = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, "dbus-daemon printed no address"
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _service() -> TcmuDBusService:
    return TcmuDBusService([HandlerObject(cfgstring.SUBTYPE, cfgstring.CONFIG_DESC,
                                          cfgstring.check_config)])


async def _call(bus: MessageBus, path: str, interface: str, member: str,
                signature: str = "", body: list | None = None) -> Message:
    reply = await asyncio.wait_for(bus.call(Message(
        destination=BUS_NAME, path=path, interface=interface, member=member,
        signature=signature, body=body or [])), timeout=5)
    assert reply is not None
    return reply


def test_targetcli_view(bus_address: str) -> None:
    async def scenario() -> None:
        service = _service()
        await service.start(bus_address=bus_address, bus_type=BusType.SESSION)
        client = await MessageBus(bus_address=bus_address).connect()
        try:
            # _user_backstores(): GetManagedObjects on the root, one node per object path
            reply = await _call(client, ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
                                "GetManagedObjects")
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            objects = reply.body[0]
            assert list(objects) == [f"{ROOT_PATH}/mirror"]  # → user:mirror, nothing else
            props = objects[f"{ROOT_PATH}/mirror"]["org.kernel.TCMUService1"]
            assert props["ConfigDesc"].value == cfgstring.CONFIG_DESC

            # ui_command_create: CheckConfig("mirror/" + cfgstring) → (b, s)
            good = "mirror/mirror=/srv/v1.img;journal=/srv/v1.jnl;journal_size=64M"
            reply = await _call(client, f"{ROOT_PATH}/mirror", "org.kernel.TCMUService1",
                                "CheckConfig", "s", [good])
            assert reply.signature == "bs"
            assert reply.body == [True, "success"]
            reply = await _call(client, f"{ROOT_PATH}/mirror", "org.kernel.TCMUService1",
                                "CheckConfig", "s", ["mirror/mirror=rel.img;journal=/srv/j"])
            assert reply.body == [False, "mirror=rel.img must be an absolute path"]

            # properties as a Gio.DBusProxy loads them
            reply = await _call(client, f"{ROOT_PATH}/mirror", "org.freedesktop.DBus.Properties",
                                "GetAll", "s", ["org.kernel.TCMUService1"])
            assert reply.body[0]["ConfigDesc"].value == cfgstring.CONFIG_DESC

            reply = await _call(client, f"{ROOT_PATH}/HandlerManager1",
                                "org.kernel.TCMUService1.HandlerManager1", "RegisterHandler",
                                "ss", ["qcow", "desc"])
            assert reply.body[0] is False

            # a second daemon (or tcmu-runner) cannot take the name
            other = _service()
            with pytest.raises(DBusServiceError, match="stop tcmu-runner"):
                await other.start(bus_address=bus_address, bus_type=BusType.SESSION)
        finally:
            client.disconnect()
            service.stop()

    asyncio.run(scenario())


def test_dbus_send_cli_sees_handler(bus_address: str) -> None:
    """An independent client (dbus-send) gets the same answer."""
    if shutil.which("dbus-send") is None:
        pytest.skip("needs dbus-send")

    async def scenario() -> str:
        service = _service()
        await service.start(bus_address=bus_address, bus_type=BusType.SESSION)
        try:
            proc = await asyncio.create_subprocess_exec(
                "dbus-send", f"--bus={bus_address}", "--print-reply", f"--dest={BUS_NAME}",
                f"{ROOT_PATH}/mirror", "org.kernel.TCMUService1.CheckConfig",
                "string:mirror/mirror=/a;journal=/b,c", stdout=subprocess.PIPE)
            with contextlib.suppress(asyncio.TimeoutError):
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
                return out.decode()
            proc.kill()
            raise AssertionError("dbus-send hung")
        finally:
            service.stop()

    out = asyncio.run(scenario())
    assert "boolean false" in out
    assert "comma" in out
