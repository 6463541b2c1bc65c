"""Status a person reads at a glance, from recorded daemon states: the exact text an admin
reads in each state, in the shell and from appliancectl (human by default, --json raw)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from recorded_states import recorded

from appliance.control import cli
from appliance.control.server import ControlServer
from targetcli_ext.daemons import DaemonSockets, collect
from targetcli_ext.status_text import human_bytes, human_duration, render_status

PEERS = {"192.0.2.2:7700": "dr"}
UUID = "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91"

EXPECTED = {
    "healthy": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:replicating journal:2% in-sync
""",
    "connecting": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connecting since 22:08:20 replication:stopped journal:41% behind
    last error: ConnectionRefusedError: [Errno 111] Connect call failed ('192.0.2.2', 7700)
    lag: 1520 records, 5.9 MiB, recovery point 5m00s ago
    why: 1520 journal records are not acknowledged by the peer yet
    do: check that the DR appliance's receiver runs and that 192.0.2.2:7700 is reachable from here; shipping resumes by itself once it is
""",
    "refused": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:refused (promoted) since 22:11:20 replication:stopped journal:0% behind
    reason: fenced off: the peer promoted its replica of this volume (a failover), so this primary replicates nothing more; host I/O here is unaffected. To make this site the DR of the new primary see docs/failover.md. Peer refused: promoted: volume 6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91 was promoted on receiver 'dr' at seq 48223 (generation 2)
    lost writes: 37 writes (148.0 KiB), seqs 48224-48260, never reached the DR, which was promoted at seq 48223; listed with their data in /var/lib/appliance/replication/reports/lost-writes-vol1-promoted-at-48223.txt
    lag: 37 records, 148.0 KiB, recovery point 1m59s ago
    why: 37 journal records are not acknowledged by the peer yet
    do: the DR site failed over (promoted its replica): this site replicates nothing more; to make it the DR of the new primary: delete /backstores/user:mirror/vol1, then 'failback uuid=<the new primary's volume uuid>' in /replication/volumes/vol1 (docs/failover.md)
""",
    "resync": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:resync 25.0% (12.0 MiB/s, ETA 1m04s) journal:3% behind
    lag: 0 records, 768.0 MiB, recovery point 3m20s ago
    why: 805306368 bytes of dirty regions (logging to the bitmap) are not at the peer yet
""",
    "paused": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:paused (blackout window) journal:7% behind
    lag: 210 records, 840.0 KiB, recovery point 12m00s ago
    why: 210 journal records are not acknowledged by the peer yet
    do: shipping resumes by itself when the pause ends (blackout window setting)
""",
    "logging_to_bitmap": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connecting since 20:42:20 replication:logging-to-bitmap since 20:43:20 journal:100% (high water) behind
    last error: OSError: [Errno 113] Connect call failed ('192.0.2.2', 7700)
    lag: 260000 records, 1.1 GiB, recovery point 1h31m ago
    why: 67108864 bytes of dirty regions (logging to the bitmap) are not at the peer yet
    blocked: waiting for the link to the peer (state reconnecting; last error: OSError: [Errno 113] Connect call failed ('192.0.2.2', 7700))
    do: check that the DR appliance's receiver runs and that 192.0.2.2:7700 is reachable from here; shipping resumes by itself once it is
""",
    "inconsistent": f"""\
{UUID} role:dr primary:site-a (192.0.2.1:51324)
  link:connected replica:inconsistent since 21:48:20 (resync under way) behind
    lag: 0 records, 768.0 MiB, recovery point 26m40s ago
    why: inconsistent: a resync is under way (rollback gives the last consistent image)
    do: let the resync finish; to fail over before it does, run 'rollback' in /replication/replicas/{UUID} for the last consistent image
""",
    "dr_healthy": f"""\
{UUID} role:dr primary:site-a (192.0.2.1:51324)
  link:connected replica:consistent in-sync
""",
    "dr_no_primary": f"""\
{UUID} role:dr primary:site-a
  link:disconnected since 22:11:50 replica:consistent behind
    last error: LinkClosed: peer closed the connection
    lag: unknown with no primary connected (at least 0 records)
    why: no primary connected (link disconnected since 2023-11-14 22:11:50): the primary may hold writes this copy lacks
    do: check on the primary that its transmitter for this volume runs and can reach this appliance ('/replication status' there)
""",
}


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_each_recorded_state_reads_as_expected(state):
    snap = recorded(state)
    assert render_status(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS) == \
        EXPECTED[state]


@pytest.mark.parametrize("state", ["healthy", "connecting", "resync", "inconsistent"])
def test_the_shell_prints_the_same_text(make_shell, daemons, state):
    daemons.load(state)
    sh = make_shell()
    sh.run("/replication/peers create name=dr address=192.0.2.2:7700 fingerprint=SHA256:"
           + "5e" * 32)
    assert sh.run("/replication status") == EXPECTED[state]
    assert sh.run("/replication/volumes status") == EXPECTED[state]


def test_a_healthy_volume_prints_two_lines_and_no_advice():
    snap = recorded("healthy")
    text = render_status(snap, now=snap["now"], tz=dt.UTC)
    assert len(text.splitlines()) == 2 and "do:" not in text


def test_both_volumes_of_a_site_and_a_daemon_that_does_not_answer():
    snap = recorded("healthy")
    snap["receiver"] = recorded("dr_healthy")["receiver"]
    snap["errors"] = {"transmitter vol2 (/run/appliance/transmitter-vol2.sock)":
                      "cannot talk to control socket: [Errno 111] Connection refused"}
    text = render_status(snap, now=snap["now"], tz=dt.UTC)
    assert text.splitlines()[0].startswith("vol1 role:primary")
    assert text.splitlines()[2].startswith(f"{UUID} role:dr")
    assert text.splitlines()[4:] == [
        "transmitter vol2 (/run/appliance/transmitter-vol2.sock): not answering: cannot talk "
        "to control socket: [Errno 111] Connection refused",
        "    do: check that it runs ('systemctl status' of its unit) and its log "
        "('journalctl -u' of its unit)"]


def test_a_handler_volume_without_a_transmitter_is_not_called_replicated():
    snap = recorded("healthy")
    snap["transmitters"] = {}
    assert render_status(snap, now=snap["now"], tz=dt.UTC) == (
        "vol1 role:unreplicated\n"
        "  replication:none (no transmitter answers for this volume) journal:2%\n")


def test_nothing_answering():
    assert render_status({}, now=0) == ("no replicated volumes: no handler, transmitter or "
                                        "receiver answers on this appliance\n")


def test_units():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 << 20, 3 << 40)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB"]
    assert [human_duration(s) for s in (0.4, 59, 60, 3599, 3600, 90061)] == \
        ["0s", "59s", "1m00s", "59m59s", "1h00m", "1d01h"]


# --- from the control sockets -------------------------------------------------------------


@pytest.fixture
def serving(tmp_path):
    """Control servers answering recorded statuses on real unix sockets."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def serve(path: Path, status: dict) -> Path:
        server = ControlServer(path, {"status": lambda args: status})
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        servers.append(server)
        return path

    yield serve
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_collect_asks_every_socket_and_reports_one_that_does_not_answer(tmp_path, serving):
    snap = recorded("connecting")
    run = tmp_path / "run"
    serving(tmp_path / "handler.sock", snap["handler"])
    serving(run / "transmitter-vol1.sock", snap["transmitters"]["vol1"])
    (run / "transmitter-vol2.sock").touch()                 # left by a dead transmitter
    got = collect(DaemonSockets(tmp_path / "handler.sock", run), timeout=5)
    assert got["handler"] == snap["handler"] and got["receiver"] is None
    assert got["transmitters"] == {"vol1": snap["transmitters"]["vol1"]}
    assert list(got["errors"]) == [f"transmitter vol2 ({run / 'transmitter-vol2.sock'})"]


def test_appliancectl_status_is_human_by_default_and_raw_with_json(tmp_path, serving, capsys,
                                                                   monkeypatch):
    snap = recorded("healthy")
    sock = serving(tmp_path / "run" / "transmitter-vol1.sock", snap["transmitters"]["vol1"])
    monkeypatch.setenv("APPLIANCE_REPLICATION_DIR", str(tmp_path / "none"))
    assert cli.main(["--socket", str(sock), "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "vol1 role:primary peer:192.0.2.2:7700",
        "  link:connected replication:replicating in-sync"]
    assert cli.main(["--socket", str(sock), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == snap["transmitters"]["vol1"]


def test_appliancectl_status_without_a_socket_shows_the_whole_appliance(tmp_path, serving,
                                                                        capsys, monkeypatch):
    snap = recorded("paused")
    serving(tmp_path / "handler.sock", snap["handler"])
    serving(tmp_path / "run" / "transmitter-vol1.sock", snap["transmitters"]["vol1"])
    monkeypatch.setenv("APPLIANCE_HANDLER_SOCKET", str(tmp_path / "handler.sock"))
    monkeypatch.setenv("APPLIANCE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("APPLIANCE_REPLICATION_DIR", str(tmp_path / "none"))
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "vol1 role:primary peer:192.0.2.2:7700"
    assert lines[1] == "  link:connected replication:paused (blackout window) journal:7% behind"


def test_appliancectl_call_still_needs_a_socket(capsys):
    with pytest.raises(SystemExit):
        cli.main(["call", "verify"])
    assert "call needs --socket" in capsys.readouterr().err


def test_appliancectl_status_of_the_exporter_lists_its_alerts(tmp_path, serving, capsys,
                                                             monkeypatch):
    exporter = recorded("exporter_alerts")["exporter"]
    sock = serving(tmp_path / "run" / "exporter.sock", exporter)
    monkeypatch.setenv("APPLIANCE_REPLICATION_DIR", str(tmp_path / "none"))
    assert cli.main(["--socket", str(sock), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"alerts: {len(exporter['alerts'])} active (exporter on 127.0.0.1:9477)"
    assert [line.split()[1] for line in lines[1:len(exporter["alerts"]) + 1]] == \
        [a["alert"] for a in exporter["alerts"]]


def test_a_dr_group_replica_reads_as_a_group_with_its_members():
    snap = recorded("dr_healthy")
    vol = snap["receiver"]["volumes"][UUID]
    vol["name"] = "db"
    vol["group"] = {"name": "db", "block_size": 512, "members": [
        {"name": "dblog", "mirror": "/r/members/dblog.img", "offset_blocks": 0,
         "num_blocks": 65536},
        {"name": "dbdata", "mirror": "/r/members/dbdata.img", "offset_blocks": 65536,
         "num_blocks": 65536}]}
    assert render_status(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS) == (
        "group db role:dr primary:site-a (192.0.2.1:51324)\n"
        "  link:connected replica:consistent in-sync\n"
        "    members: 2 of consistency group db, every one as of the same write: dblog "
        "32.0 MiB at block 0, dbdata 32.0 MiB at block 65536\n")
