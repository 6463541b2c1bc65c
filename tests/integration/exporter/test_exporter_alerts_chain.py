"""Alerts on the real chain, each received by a loopback webhook and the journal once raised
and once cleared: the journal filled past its high water and drained, the link cut past the
threshold, the overflow to the dirty bitmap and back; an exporter restarted meanwhile raises
nothing again. And a dead webhook (accepts TCP, never answers) slows neither the alert loop
nor the host's writes."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
from exporter_chain import NAME, StubDaemon
from exporter_servers import DeadWebhook, WebhookReceiver
from repl_harness import status, wait_for

from appliance.control.client import call
from appliance.exporter.alerts import KINDS
from appliance.exporter.config import WebhookConfig

pytestmark = pytest.mark.integration

STATES = Path(__file__).resolve().parents[2] / "unit" / "targetcli" / "states"


def states_of(events: list[dict], alert: str) -> list[str]:
    return [e["state"] for e in events if e["alert"] == alert]


def test_journal_link_and_overflow_alerts_are_raised_and_cleared_once(chain_factory):
    chain = chain_factory(journal_size="5M", rx_in_run_dir=False)   # the least
    hook = WebhookReceiver()
    webhook = WebhookConfig(url=hook.url, timeout_s=5.0)
    alerts = {"link_down_s": 1.0, "journal_high_water_percent": 80.0,
              "journal_clear_percent": 70.0, "webhook": webhook}
    running = chain.exporter(**alerts)
    block = os.urandom(4096)
    lba = 0

    def write_until(cond, what: str, limit: int = 5000) -> dict:
        nonlocal lba
        for _ in range(limit):
            chain.handler.write(lba % 100_000, block)
            lba += 8
            if cond(st := chain.handler.status()):
                return st
        raise AssertionError(f"{limit} writes and still not {what}")

    def raised(alert: str) -> bool:
        return any(a["alert"] == alert for a in call(running.exporter.cfg.control_socket,
                                                     "status")["alerts"])

    def hooked(alert: str, states: list[str], what: str) -> None:
        wait_for(lambda: states_of(hook.received(), alert) == states, 30, what)
    try:
        # 1. no transmitter: the journal fills past its high water, still journaling
        st = write_until(lambda s: s["journal"]["percent"] >= 85, "85% full")
        assert st["state"] == "journaling", st
        hooked("JournalHighWater", ["raised"], "JournalHighWater raised")
        assert raised("JournalHighWater")
        # 2. the DR gets everything: drained below the clear level
        chain.start(chain.receiver(), chain.rx_control)
        chain.start(chain.transmitter(), chain.tx_control)
        hooked("JournalHighWater", ["raised", "cleared"], "JournalHighWater cleared")
        assert chain.handler.status()["journal"]["percent"] < 70
        # 3. the link is cut (the receiver stops) for longer than link_down_s
        cut = len(hook.received())
        rx = chain.procs[0]
        rx.stop()
        wait_for(lambda: states_of(hook.received()[cut:], "LinkDown") == ["raised"], 30,
                 "LinkDown raised")
        down = [e for e in hook.received()[cut:] if e["alert"] == "LinkDown"][0]
        assert down["peer"] == f"127.0.0.1:{chain.port}" and down["severity"] == "critical"
        # 4. meanwhile the journal overflows to the dirty bitmap
        write_until(lambda s: s["state"] == "logging-to-bitmap", "logging to the bitmap")
        hooked("LoggingToBitmap", ["raised"], "LoggingToBitmap raised")
        hooked("JournalHighWater", ["raised", "cleared", "raised"], "JournalHighWater again")
        # 5. the exporter restarts with these alerts active: nothing is raised again
        before = len(hook.received())
        running.close()
        chain.exporters.remove(running)
        saved = json.loads((chain.root / "exporter" / "alerts.json").read_text())
        assert {"LinkDown", "LoggingToBitmap", "JournalHighWater"} <= {
            a["alert"] for a in saved["active"]}
        running = chain.exporter(**alerts)
        wait_for(lambda: call(running.exporter.cfg.control_socket, "status")["evaluations"] >= 5,
                 10, "five evaluations of the restarted exporter")
        assert hook.received()[before:] == []
        # 6. the link comes back: the resync ships the dirty regions, all clears
        chain.start(rx, chain.rx_control)
        hooked("LoggingToBitmap", ["raised", "cleared"], "LoggingToBitmap cleared")
        wait_for(lambda: states_of(hook.received()[cut:], "LinkDown") == ["raised", "cleared"],
                 30, "LinkDown cleared")
        hooked("JournalHighWater", ["raised", "cleared", "raised", "cleared"],
               "JournalHighWater cleared again")
        wait_for(lambda: call(running.exporter.cfg.control_socket, "status")["alerts"] == [],
                 30, "no alert active")
    except AssertionError:
        print(chain.logs())
        print(json.dumps(hook.received(), indent=1))
        raise
    finally:
        hook.close()

    events = hook.received()
    print("webhook events:", [(e["alert"], e["state"]) for e in events])
    for alert in {e["alert"] for e in events}:       # every alert raised, then cleared
        got = states_of(events, alert)
        assert got == ["raised", "cleared"] * (len(got) // 2), (alert, got)
    for e in events:
        kind = KINDS[e["alert"]]
        assert e["message_id"] == (kind.raised_id if e["state"] == "raised" else kind.cleared_id)
        assert e["appliance"] == "site-a" and e["volume"] == NAME
    journal = [(e["ALERT"], e["ALERT_STATE"], e["MESSAGE_ID"]) for e in chain.journal.entries()]
    assert journal == [(e["alert"], e["state"], e["message_id"]) for e in events]


def test_a_dead_webhook_slows_neither_the_alert_loop_nor_the_writes(chain_factory):
    chain = chain_factory(journal_size="64M", rx_in_run_dir=False)
    refused = json.loads((STATES / "refused.json").read_text())["transmitters"]["vol1"]
    healthy = json.loads((STATES / "healthy.json").read_text())["transmitters"]["vol1"]
    # a daemon whose state flips at every question: an alert raised or cleared each time
    stub = StubDaemon(chain.run_dir / "transmitter-ghost.sock", [refused, healthy])
    dead = DeadWebhook()
    block = os.urandom(4096)
    interval = 0.2

    def measure(running, writes: int = 150) -> tuple[list[float], float]:
        sock = running.exporter.cfg.control_socket
        first = call(sock, "status")["evaluations"]
        started = time.monotonic()
        took = [chain.handler.write(i * 8, block, fua=True) for i in range(writes)]
        elapsed = time.monotonic() - started
        if elapsed < 2.0:                   # long enough to count evaluations
            time.sleep(2.0 - elapsed)
            elapsed = 2.0
        evaluations = call(sock, "status")["evaluations"] - first
        return took, evaluations / (elapsed / interval)

    try:
        plain = chain.exporter(interval=interval)
        wait_for(lambda: call(plain.exporter.cfg.control_socket, "status")["evaluations"] >= 3,
                 10, "the exporter's first evaluations")
        without, pace_without = measure(plain)
        plain.close()
        chain.exporters.remove(plain)

        hung = chain.exporter(interval=interval, webhook=WebhookConfig(
            url=dead.url, timeout_s=30.0, queue_size=10))
        sock = hung.exporter.cfg.control_socket
        wait_for(lambda: dead.accepted and call(sock, "status")["webhook"]["queued"] >= 2, 10,
                 "the webhook hung on a delivery with events queued behind it")
        with_dead, pace_with = measure(hung)
        hook = call(sock, "status")["webhook"]
    finally:
        dead.close()
        stub.close()

    def ms(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[int(q) - 1] * 1000 if q < 100 else max(xs) * 1000
    figures = {name: {"median_ms": round(statistics.median(xs) * 1000, 3),
                      "p95_ms": round(ms(xs, 95), 3), "max_ms": round(max(xs) * 1000, 3)}
               for name, xs in (("without webhook", without), ("dead webhook", with_dead))}
    print(f"write latency: {figures}; alert loop pace (evaluations per interval): "
          f"{pace_without:.2f} without, {pace_with:.2f} with the dead webhook; webhook {hook}")
    assert hook["delivered"] == 0 and hook["queued"] <= 10
    assert hook["queued"] + hook["dropped"] >= 5        # events kept coming, none waited
    assert pace_with >= 0.6, "the alert loop slowed down behind the dead webhook"
    # generous: the same host, shared cores; a blocked loop or writer would be far beyond
    assert statistics.median(with_dead) <= 3 * statistics.median(without) + 0.005
    assert ms(with_dead, 95) <= 3 * ms(without, 95) + 20
    assert stub.calls > 10 and status(chain.handler.config.control_socket)
