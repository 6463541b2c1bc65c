"""The shell's 'set sync' / 'get sync' against the real handler (HandlerDaemon and its control
socket, serving a simulated TCMU ring): the mode set through targetcli reaches the handler
(its status says so), a refused value changes nothing there, and the setting survives a
restart of the handler, read back through the shell.

The shell is the unit tier's (tests/unit/targetcli/shell_fakes.py: the stock targetcli
classes over a fake rtslib tree) with the real control-socket client."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from configshell_fb import ExecutionError
from one_volume_handler import one_volume

from appliance.control.client import call
from appliance.tcmu.daemon import HandlerDaemon

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "targetcli"))

from shell_fakes import daemons, lio, make_shell  # noqa: F401  (the shell's fixtures)

pytestmark = pytest.mark.integration

VOL = "/replication/volumes/vol1"
FP = "SHA256:" + ":".join(["5E"] * 32)


def write_site(state_dir: Path) -> None:
    """vol1 replicated from backstore vol1 (the handler serves it under that name)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "site.json").write_text(json.dumps({
        "version": 3, "identity": "site-a", "listen": "0.0.0.0:7700",
        "peers": {"dr": {"address": "192.0.2.2:7700", "fingerprint": FP}},
        "volumes": {"vol1": {"backstore": "vol1", "peer": "dr", "paused": False,
                             "bandwidth_limit": None, "blackout": []}}, "replicas": {}}))


def test_set_sync_through_the_shell_reaches_the_handler_and_survives_its_restart(
        tmp_path: Path, request) -> None:
    vol1 = one_volume(tmp_path)
    kernel = vol1.kernel
    write_site(tmp_path / "replication")
    sh = request.getfixturevalue("make_shell")(calls=call)    # the real client
    assert Path(sh.ctx.config.sockets.handler) == vol1.socket

    def handler_sync() -> dict:
        return call(vol1.socket, "status", {})["volumes"]["vol1"]["sync"]

    def shell(cmdline: str) -> str:
        return sh.run(cmdline)

    def refusal(cmdline: str) -> str:
        with pytest.raises(ExecutionError) as info:
            sh.run(cmdline)
        return str(info.value)

    async def first_life(daemon: HandlerDaemon) -> None:
        before = await asyncio.to_thread(handler_sync)
        assert (before["mode"], before["effective"]) == ("async", "async"), before

        out = await asyncio.to_thread(shell, f"{VOL} set sync mode=sync-on-flush fallback=2s")
        assert "Parameter mode is now 'sync-on-flush'." in out, out
        assert "Parameter fallback is now '2s'." in out, out
        now = await asyncio.to_thread(handler_sync)
        assert (now["mode"], now["fallback_s"], now["hold"], now["effective"]) == (
            "sync-on-flush", 2.0, False, "sync-on-flush"), now

        msg = await asyncio.to_thread(refusal, f"{VOL} set sync mode=sync fallback=2h")
        assert msg.startswith("fallback='2h' is out of range") and \
            msg.endswith("nothing changed"), msg
        again = await asyncio.to_thread(handler_sync)
        assert (again["mode"], again["fallback_s"]) == ("sync-on-flush", 2.0), again

    async def second_life(daemon: HandlerDaemon) -> None:
        out = await asyncio.to_thread(shell, f"{VOL} get sync")
        assert out.splitlines() == ["mode=sync-on-flush", "fallback=2s", "hold=false",
                                    "effective=sync-on-flush [ro]"], out
        out = await asyncio.to_thread(shell, f"{VOL} set sync mode=async")
        assert "Parameter mode is now 'async'." in out, out
        now = await asyncio.to_thread(handler_sync)
        assert (now["mode"], now["fallback_s"]) == ("async", 2.0), now

    try:
        vol1.run(first_life)
        vol1.run(second_life)         # the bitmap header kept it
    finally:
        kernel.close()
    msg = refusal(f"{VOL} set sync mode=sync")            # no handler runs now
    assert msg.startswith("the handler does not answer (cannot talk to control socket") and \
        msg.endswith("check 'systemctl status appliance-handler'; nothing changed"), msg
