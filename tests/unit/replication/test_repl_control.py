"""Control socket: commands answered, bad requests get errors and the connection survives."""

import asyncio
import json
import socket

import pytest

from appliance.control.client import ControlError, call
from appliance.control.server import CommandError, ControlServer


def test_status_errors_and_help(tmp_path):
    path = tmp_path / "ctl.sock"

    def fail(args):
        raise CommandError(f"bad args {args}")

    async def go():
        srv = ControlServer(path, {"status": lambda a: {"state": "ok"}, "fail": fail})
        await srv.start()
        try:
            r = await asyncio.to_thread(call, path, "status")
            assert r == {"state": "ok"}
            assert "status" in (await asyncio.to_thread(call, path, "help"))["commands"]
            with pytest.raises(ControlError, match="unknown command 'nope'"):
                await asyncio.to_thread(call, path, "nope")
            with pytest.raises(ControlError, match="bad args"):
                await asyncio.to_thread(call, path, "fail", {"x": 1})

            def raw():
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(2)
                    s.connect(str(path))
                    s.sendall(b"not json\n[1]\n" + json.dumps({"cmd": "status"}).encode() + b"\n")
                    buf = b""
                    while buf.count(b"\n") < 3:
                        buf += s.recv(4096)
                    return [json.loads(x) for x in buf.splitlines()]
            replies = await asyncio.to_thread(raw)
            assert [r["ok"] for r in replies] == [False, False, True]
            assert "not JSON" in replies[0]["error"]
        finally:
            await srv.close()
        assert not path.exists()
    asyncio.run(go())


def test_unreachable_socket_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="cannot talk to control socket"):
        call(tmp_path / "absent.sock", "status")
