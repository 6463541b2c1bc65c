"""The exporter as a daemon: its HTTP endpoint scraped and parsed, its control socket's status,
alerts reaching the journal and a loopback webhook, and the start failures a person must fix
(a port in use, a bad configuration) as one line and an exit code."""

from __future__ import annotations

import asyncio
import copy
import socket
import time

import pytest
from exporter_fakes import answers, recorded
from exporter_servers import FakeJournal, RunningExporter, WebhookReceiver, wait_until
from prometheus_client.parser import text_string_to_metric_families

from appliance.control.client import call
from appliance.control.site_status import DaemonSockets, ask_daemons, collect
from appliance.exporter import daemon
from appliance.exporter.alerts import KINDS
from appliance.exporter.config import AlertThresholds, ExporterConfig, WebhookConfig
from appliance.exporter.journal_log import JournalSender


def config(tmp_path, **kw) -> ExporterConfig:
    return ExporterConfig(identity="site-a", port=0, interval=0.2,
                          state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                          handler_socket=tmp_path / "handler.sock",
                          alerts=AlertThresholds(recovery_point_age_s=1e6), **kw)


class Site:
    """What the fake daemons answer; tests change ``snap``."""

    def __init__(self, state: str) -> None:
        self.snap = recorded(state)

    def ask(self):
        return answers(copy.deepcopy(self.snap))


def test_scrape_status_and_an_alert_through_journal_and_webhook(tmp_path):
    site = Site("healthy")
    hook = WebhookReceiver()
    journal = FakeJournal(tmp_path / "journal.sock")
    cfg = config(tmp_path, webhook=WebhookConfig(url=hook.url, timeout_s=2.0))
    exp = daemon.Exporter(cfg, journal=JournalSender(journal.path), ask=site.ask)
    running = RunningExporter(exp).wait_ready()
    try:
        fams = {f.name: f for f in text_string_to_metric_families(running.scrape())}
        assert fams["appliance_head_sequence"].samples[0].value == 48223
        assert fams["appliance_exporter_webhook_delivered"].type == "counter"

        site.snap["handler"]["volumes"]["vol1"]["journal"]["percent"] = 91.0
        wait_until(lambda: hook.received(), 10, "the webhook's raise")
        status = call(cfg.control_socket, "status")
        assert status["role"] == "exporter" and status["interval"] == 0.2
        assert status["listen"] == running.url.removeprefix("http://").removesuffix("/metrics")
        (alert,) = status["alerts"]
        assert (alert["alert"], alert["volume"], alert["severity"]) == (
            "JournalHighWater", "vol1", "warning")
        assert status["thresholds"]["recovery_point_age_s"] == 1e6
        assert status["errors"] == {}
        # The receiver holds the event before its 200 reaches the delivery thread.
        wait_until(lambda: call(cfg.control_socket, "status")["webhook"]["delivered"] == 1,
                   10, "the exporter to count the delivery")

        site.snap["handler"]["volumes"]["vol1"]["journal"]["percent"] = 10.0
        wait_until(lambda: len(hook.received()) == 2, 10, "the webhook's clear")
        fams = {f.name: f for f in text_string_to_metric_families(running.scrape())}
        assert fams["appliance_exporter_alerts_active"].samples[0].value == 0
    finally:
        running.close()
        hook.close()
    raised, cleared = hook.received()
    assert (raised["alert"], raised["state"], raised["appliance"]) == ("JournalHighWater",
                                                                       "raised", "site-a")
    assert raised["message_id"] == KINDS["JournalHighWater"].raised_id
    assert cleared["state"] == "cleared"
    assert cleared["message_id"] == KINDS["JournalHighWater"].cleared_id
    entries = journal.entries()
    journal.close()
    assert [(e["ALERT"], e["ALERT_STATE"], e["PRIORITY"], e["MESSAGE_ID"]) for e in entries] == [
        ("JournalHighWater", "raised", "4", KINDS["JournalHighWater"].raised_id),
        ("JournalHighWater", "cleared", "5", KINDS["JournalHighWater"].cleared_id)]
    assert entries[0]["VOLUME"] == "vol1" and entries[0]["APPLIANCE"] == "site-a"
    assert not cfg.control_socket.exists()          # removed when it stopped


def test_a_silent_daemon_shows_in_status_errors(tmp_path):
    site = Site("healthy")
    cfg = config(tmp_path)

    def ask():
        return answers(copy.deepcopy(site.snap), silent=("transmitter vol1",))
    exp = daemon.Exporter(cfg, journal=JournalSender(tmp_path / "none.sock"), ask=ask)
    running = RunningExporter(exp).wait_ready()
    try:
        wait_until(lambda: call(cfg.control_socket, "status")["errors"], 10, "an error")
        status = call(cfg.control_socket, "status")
    finally:
        running.close()
    assert status["errors"] == {"transmitter vol1 (/run/transmitter vol1.sock)": "timed out"}


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def test_a_port_in_use_is_one_line_naming_address_and_port(tmp_path, capsys):
    held = _held_port()
    port = held.getsockname()[1]
    conf = tmp_path / "exporter.toml"
    conf.write_text(f'port = {port}\nstate_dir = "{tmp_path / "state"}"\n'
                    f'run_dir = "{tmp_path / "run"}"\n')
    try:
        code = daemon.main(["--config", str(conf)])
    finally:
        held.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == daemon.START_ERROR_EXIT == 1
    assert err == [f"appliance-exporter: cannot listen on 127.0.0.1:{port}: the port is in use "
                   f"by another program; choose another port (targetcli "
                   f"/replication/monitoring set exporter port=...) or stop that program "
                   f"(ss -ltnp 'sport = :{port}' shows it)"]
    assert not (tmp_path / "run" / "exporter.sock").exists()


def test_an_address_not_here_says_so(tmp_path):
    cfg = ExporterConfig(address="192.0.2.77", port=9477, state_dir=tmp_path)
    with pytest.raises(daemon.StartError, match=r"cannot listen on 192.0.2.77:9477: "
                                                r"192.0.2.77 is not an address of this"):
        daemon.bind_http(cfg, None)


def test_a_bad_configuration_exits_2_naming_the_key(tmp_path, capsys):
    conf = tmp_path / "exporter.toml"
    conf.write_text('[webhook]\nurl = "ops.example"\n')
    assert daemon.main(["--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"appliance-exporter: {conf}: [webhook] url 'ops.example' must be an http://" in err


def test_site_status_asks_the_exporter_too_but_not_for_itself(tmp_path):
    cfg = config(tmp_path)
    exp = daemon.Exporter(cfg, journal=JournalSender(tmp_path / "none.sock"), ask=lambda: [])
    running = RunningExporter(exp).wait_ready()
    try:
        sockets = DaemonSockets(handler=tmp_path / "handler.sock", run_dir=cfg.run_dir)
        snap = collect(sockets, timeout=5)
        without = ask_daemons(sockets, timeout=5, exporter=False)
    finally:
        running.close()
    assert snap["exporter"]["role"] == "exporter" and snap["exporter"]["alerts"] == []
    assert snap["handler"] is None and snap["transmitters"] == {} and snap["errors"] == {}
    assert without == []


def test_a_missing_address_is_waited_for_a_bounded_time(tmp_path, caplog):
    """At boot the management address may come up late: the exporter waits for it (bounded),
    warns once, and then fails with the same one-line reason."""
    cfg = ExporterConfig(address="192.0.2.77", port=9477, state_dir=tmp_path / "state",
                         run_dir=tmp_path / "run")
    exporter = daemon.Exporter(cfg, ask=lambda: [], address_wait_s=1.2)
    started = time.monotonic()
    with caplog.at_level("WARNING"), pytest.raises(daemon.StartError,
                                                   match="192.0.2.77 is not an address"):
        asyncio.run(exporter.run(asyncio.Event()))
    waited = time.monotonic() - started
    assert 1.2 <= waited < 5, f"waited {waited:.1f} s for the address (bound: 1.2 s)"
    warnings = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert not (tmp_path / "run" / "exporter.sock").exists()


def test_a_stop_ends_the_wait_for_the_address(tmp_path):
    cfg = ExporterConfig(address="192.0.2.77", port=9477, state_dir=tmp_path / "state",
                         run_dir=tmp_path / "run")
    exporter = daemon.Exporter(cfg, ask=lambda: [], address_wait_s=60)

    async def stop_soon() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        await exporter.run(stop)

    started = time.monotonic()
    asyncio.run(stop_soon())                # a normal end, no error
    assert time.monotonic() - started < 5
    assert exporter.http is None and not (tmp_path / "run" / "exporter.sock").exists()
