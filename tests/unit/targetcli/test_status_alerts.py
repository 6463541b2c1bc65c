"""The exporter's active alerts in '/replication status' (after the volumes), from a recorded
state with alerts raised and a webhook that cannot deliver; an appliance whose exporter does
not run says nothing about alerts, one whose exporter runs with none says so."""

from __future__ import annotations

import datetime as dt

from recorded_states import recorded

from targetcli_ext.status_text import render_alerts, render_status

PEERS = {"192.0.2.2:7700": "dr"}

EXPECTED = """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connecting since 20:42:20 replication:logging-to-bitmap since 20:43:20 journal:100% (high water) behind
    last error: OSError: [Errno 113] Connect call failed ('192.0.2.2', 7700)
    lag: 260000 records, 1.1 GiB, recovery point 1h31m ago
    why: 67108864 bytes of dirty regions (logging to the bitmap) are not at the peer yet
    blocked: waiting for the link to the peer (state reconnecting; last error: OSError: [Errno 113] Connect call failed ('192.0.2.2', 7700))
    do: check that the DR appliance's receiver runs and that 192.0.2.2:7700 is reachable from here; shipping resumes by itself once it is
alerts: 4 active (exporter on 127.0.0.1:9477)
  warning JournalHighWater since 20:40:20: journal of vol1 is 100% full (high water 80%)
  critical LinkDown since 20:43:20: link of vol1 to 192.0.2.2:7700 has been down since 20:42:20 (threshold 60s)
  critical LoggingToBitmap since 20:43:20: vol1 overflowed its journal and logs to the dirty bitmap: a resync follows
  critical RecoveryPointAge since 20:47:20: recovery point of vol1 is 1h31m old (threshold 5m)
  webhook: 4 events waiting for https://ops.example/hook (last error: URLError: [Errno 111] Connection refused)
"""


def test_active_alerts_follow_the_volumes():
    snap = recorded("exporter_alerts")
    assert render_status(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS) == EXPECTED


def test_no_exporter_no_alerts_section():
    snap = recorded("exporter_alerts")
    without = {k: v for k, v in snap.items() if k != "exporter"}
    text = render_status(without, now=snap["now"], tz=dt.UTC, peer_names=PEERS)
    assert "alerts" not in text
    assert text == render_status({**snap, "exporter": None}, now=snap["now"], tz=dt.UTC,
                                 peer_names=PEERS)
    assert text == EXPECTED.split("alerts:")[0]


def test_an_exporter_without_alerts_says_none_and_a_delivering_webhook_nothing():
    snap = recorded("exporter_alerts")
    quiet = {**snap["exporter"], "alerts": [],
             "webhook": {**snap["exporter"]["webhook"], "queued": 0, "last_error": None}}
    assert render_alerts(quiet, now=snap["now"], tz=dt.UTC) == \
        "alerts: none (exporter on 127.0.0.1:9477)"


def test_a_webhook_that_dropped_events_says_so():
    snap = recorded("exporter_alerts")
    full = {**snap["exporter"], "alerts": [],
            "webhook": {**snap["exporter"]["webhook"], "queued": 1000, "dropped": 12}}
    assert render_alerts(full, now=snap["now"], tz=dt.UTC).splitlines()[-1] == (
        "  webhook: 1000 events waiting for https://ops.example/hook (last error: URLError: "
        "[Errno 111] Connection refused); 12 dropped, the queue was full")


def test_an_appliance_with_no_volumes_and_an_exporter():
    snap = {"handler": None, "receiver": None, "transmitters": {}, "errors": {},
            "exporter": {"listen": "127.0.0.1:9477", "alerts": []}}
    assert render_status(snap, now=1700000000.0, tz=dt.UTC) == (
        "no replicated volumes: no handler, transmitter or receiver answers on this appliance\n"
        "alerts: none (exporter on 127.0.0.1:9477)\n")


def test_the_shell_prints_the_alerts_in_replication_status(make_shell, daemons):
    daemons.load("exporter_alerts")
    sh = make_shell()
    out = sh.run("/replication status")
    assert out.endswith(EXPECTED[EXPECTED.index("alerts:"):])
