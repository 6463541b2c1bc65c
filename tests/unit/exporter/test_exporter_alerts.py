"""Alert rules on recorded and edited daemon states: each alert raised once and cleared once
(hysteresis), held ones only after their hold time, kept over a restart without a second
raise, and the message ids fixed and distinct."""

from __future__ import annotations

import json
import re

import pytest
from exporter_fakes import answers, recorded

from appliance.exporter.alerts import KINDS, STATUS_HOLD_S, AlertEngine
from appliance.exporter.config import AlertThresholds

# The recorded states' recovery points are up to 5460 s old: only the test of that alert
# uses a threshold they reach (RPO_TH).
TH = AlertThresholds(journal_high_water_percent=80.0, journal_clear_percent=70.0,
                     recovery_point_age_s=1e6, link_down_s=60.0)
RPO_TH = AlertThresholds(recovery_point_age_s=300.0)
T0 = 1_700_000_000.0


def engine(tmp_path=None, th: AlertThresholds = TH) -> AlertEngine:
    return AlertEngine(th, tmp_path / "alerts.json" if tmp_path else None)


def names(transitions) -> list[tuple[str, str, str | None]]:
    return [(t.alert.alert, t.state, t.alert.volume) for t in transitions]


def journal_at(percent: float) -> dict:
    snap = recorded("healthy")
    snap["handler"]["volumes"]["vol1"]["journal"]["percent"] = percent
    return snap


def test_message_ids_are_fixed_128_bit_and_all_distinct():
    ids = [i for k in KINDS.values() for i in (k.raised_id, k.cleared_id)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids) == 18
    assert set(KINDS) == {"JournalHighWater", "RecoveryPointAge", "LinkDown", "LoggingToBitmap",
                          "DrInconsistent", "PeerRefused", "VerifyDiffers", "StatusUnavailable",
                          "SyncDegraded"}
    assert KINDS["LinkDown"].raised_id == "b9154f0560f64ad2b26717b5475541db"   # never changes


def test_a_healthy_site_raises_nothing():
    for state in ("healthy", "dr_healthy", "paused", "paused_admin"):
        assert engine().evaluate(answers(recorded(state)), T0) == [], state


def test_journal_high_water_is_raised_once_and_cleared_once_below_the_clear_level():
    e = engine()
    seen = []
    for i, pct in enumerate([50, 79.9, 80, 95, 85, 75, 70, 81, 69.9, 65, 90]):
        seen += [(pct, t.state) for t in e.evaluate(answers(journal_at(pct)), T0 + i)]
    assert seen == [(80, "raised"), (69.9, "cleared"), (90, "raised")]
    (alert,) = e.alerts()
    assert alert["alert"] == "JournalHighWater" and alert["volume"] == "vol1"
    assert alert["severity"] == "warning" and alert["since"] == T0 + 10
    assert alert["message"] == ("journal of vol1 is 90% full (high water 80%, clears below 70%)")
    assert alert["message_id"] == KINDS["JournalHighWater"].raised_id


def test_link_down_needs_the_threshold_and_clears_when_up():
    down = recorded("connecting")
    e = engine()
    assert e.evaluate(answers(down), T0) == []
    assert e.evaluate(answers(down), T0 + 59.9) == []
    (raised,) = e.evaluate(answers(down), T0 + 60)
    assert (raised.alert.alert, raised.state, raised.alert.peer) == ("LinkDown", "raised",
                                                                     "192.0.2.2:7700")
    assert raised.alert.since == T0
    assert "for more than 60 s" in raised.message and "last error" in raised.message
    assert e.evaluate(answers(down), T0 + 100) == []
    (cleared,) = e.evaluate(answers(recorded("healthy")), T0 + 101)
    assert (cleared.alert.alert, cleared.state) == ("LinkDown", "cleared")
    assert cleared.message_id == KINDS["LinkDown"].cleared_id


def test_a_link_up_before_the_threshold_restarts_the_hold():
    e = engine()
    e.evaluate(answers(recorded("connecting")), T0)
    e.evaluate(answers(recorded("healthy")), T0 + 50)
    assert e.evaluate(answers(recorded("connecting")), T0 + 70) == []
    assert names(e.evaluate(answers(recorded("connecting")), T0 + 130)) == [
        ("LinkDown", "raised", "vol1")]


@pytest.mark.parametrize(("state", "expected"), [
    ("logging_to_bitmap", {("LoggingToBitmap", "vol1"), ("JournalHighWater", "vol1")}),
    ("refused", {("PeerRefused", "vol1")}),
    ("verify_differs", {("VerifyDiffers", "vol1")}),
    ("resync", {("LoggingToBitmap", "vol1"), ("DrInconsistent", "vol1")}),
    ("inconsistent", {("DrInconsistent", "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91")}),
])
def test_recorded_states_raise_their_alerts_at_once(state, expected):
    got = engine().evaluate(answers(recorded(state)), T0)
    assert {(t.alert.alert, t.alert.volume) for t in got} == expected
    assert all(t.state == "raised" for t in got)


def test_recovery_point_age_beyond_the_threshold():
    snap = recorded("healthy")
    e = engine(th=RPO_TH)
    snap["transmitters"]["vol1"]["recovery_point_age_s"] = 300.0
    assert e.evaluate(answers(snap), T0) == []
    snap["transmitters"]["vol1"]["recovery_point_age_s"] = 301.0
    (t,) = e.evaluate(answers(snap), T0 + 1)
    assert t.alert.kind.severity == "critical" and "301.0 s old (threshold 300 s)" in t.message
    snap["transmitters"]["vol1"]["recovery_point_age_s"] = None      # unknown: nothing changes
    assert e.evaluate(answers(snap), T0 + 2) == []
    snap["transmitters"]["vol1"]["recovery_point_age_s"] = 0.0
    assert names(e.evaluate(answers(snap), T0 + 3)) == [("RecoveryPointAge", "cleared", "vol1")]


def test_peer_refused_survives_the_reconnect_attempts_and_clears_once_accepted():
    refused, connecting = recorded("refused"), recorded("connecting")
    e = engine()
    assert names(e.evaluate(answers(refused), T0)) == [("PeerRefused", "raised", "vol1")]
    assert e.evaluate(answers(connecting), T0 + 1) == []          # retrying: still refused
    assert e.evaluate(answers(refused), T0 + 2) == []
    got = names(e.evaluate(answers(recorded("healthy")), T0 + 3))
    assert got == [("PeerRefused", "cleared", "vol1")]


def test_the_bitmap_alert_comes_from_the_handler_when_it_answers_else_the_transmitter():
    snap = recorded("logging_to_bitmap")
    e = engine()
    (t,) = [t for t in e.evaluate(answers(snap), T0) if t.alert.alert == "LoggingToBitmap"]
    assert t.alert.daemon == "handler" and "logs writes to the dirty bitmap" in t.message
    # the handler falls silent: the transmitter's view keeps it, no second raise
    got = e.evaluate(answers(snap, silent=("handler",)), T0 + 1)
    assert [x for x in got if x.alert.alert == "LoggingToBitmap"] == []
    healthy = recorded("healthy")
    got = e.evaluate(answers(healthy, silent=("handler",)), T0 + 2)
    assert ("LoggingToBitmap", "cleared", "vol1") in names(got)


def test_status_unavailable_after_its_hold_and_kept_alerts_of_a_silent_daemon():
    e = engine()
    e.evaluate(answers(recorded("refused")), T0)
    silent = answers(recorded("refused"), silent=("transmitter vol1",))
    assert e.evaluate(silent, T0 + 1) == []                    # PeerRefused kept meanwhile
    (t,) = e.evaluate(silent, T0 + 1 + STATUS_HOLD_S)
    assert (t.alert.alert, t.alert.volume, t.alert.daemon) == ("StatusUnavailable", "vol1",
                                                               "transmitter vol1")
    assert "does not answer on /run/transmitter vol1.sock: timed out" in t.message
    assert {a["alert"] for a in e.alerts()} == {"PeerRefused", "StatusUnavailable"}
    # its socket gone: the daemon no longer runs here, both are cleared
    got = e.evaluate([], T0 + 20)
    assert sorted(names(got)) == [("PeerRefused", "cleared", "vol1"),
                                  ("StatusUnavailable", "cleared", "vol1")]
    assert all("no longer runs here" in t.message for t in got)


def test_handler_and_receiver_silence_are_two_alerts():
    e = engine()
    ans = answers({"handler": None, "receiver": None, "transmitters": {}},
                  silent=("handler", "receiver"))
    e.evaluate(ans, T0)
    got = e.evaluate(ans, T0 + STATUS_HOLD_S)
    assert sorted(t.alert.daemon for t in got) == ["handler", "receiver"]
    assert len(e.alerts()) == 2


def test_a_volume_the_daemon_stops_reporting_is_cleared():
    e = engine()
    e.evaluate(answers(journal_at(90)), T0)
    snap = recorded("healthy")
    snap["handler"]["volumes"] = {}
    (t,) = e.evaluate(answers(snap), T0 + 1)
    assert (t.alert.alert, t.state, t.message) == ("JournalHighWater", "cleared",
                                                   "handler no longer reports it")


def test_a_restart_keeps_the_active_alerts_and_the_hold_timers(tmp_path):
    first = engine(tmp_path)
    first.load()
    assert names(first.evaluate(answers(journal_at(90)), T0)) == [
        ("JournalHighWater", "raised", "vol1")]
    down = journal_at(90)
    down["transmitters"] = recorded("connecting")["transmitters"]
    assert first.evaluate(answers(down), T0 + 1) == []        # LinkDown hold starts
    saved = json.loads((tmp_path / "alerts.json").read_text())
    assert [a["alert"] for a in saved["active"]] == ["JournalHighWater"]
    assert [p["alert"] for p in saved["pending"]] == ["LinkDown"]

    second = engine(tmp_path)
    second.load()
    assert second.evaluate(answers(down), T0 + 30) == []          # not raised again
    assert names(second.evaluate(answers(down), T0 + 61)) == [("LinkDown", "raised", "vol1")]
    third = engine(tmp_path)
    third.load()
    assert [a["alert"] for a in third.alerts()] == ["JournalHighWater", "LinkDown"]
    assert sorted(names(third.evaluate(answers(journal_at(10)), T0 + 70))) == [
        ("JournalHighWater", "cleared", "vol1"), ("LinkDown", "cleared", "vol1")]
    assert json.loads((tmp_path / "alerts.json").read_text())["active"] == []
    assert (tmp_path / "alerts.json").stat().st_mode & 0o777 == 0o600


def test_an_unreadable_state_file_is_ignored(tmp_path, caplog):
    (tmp_path / "alerts.json").write_text("{not json")
    e = engine(tmp_path)
    e.load()
    assert e.active == {} and "ignoring the saved alerts" in caplog.text
    assert names(e.evaluate(answers(journal_at(90)), T0)) == [
        ("JournalHighWater", "raised", "vol1")]


def test_the_webhook_payload_has_the_spec_fields():
    (t,) = engine().evaluate(answers(journal_at(90)), T0)
    body = t.payload("site-a")
    assert body == {"alert": "JournalHighWater", "state": "raised", "volume": "vol1",
                    "peer": None, "appliance": "site-a", "severity": "warning",
                    "message": t.message, "message_id": KINDS["JournalHighWater"].raised_id,
                    "at": T0, "daemon": "handler"}


def test_a_verify_under_way_keeps_verify_differs_until_one_finds_nothing():
    snap = recorded("verify_differs")
    e = engine()
    assert names(e.evaluate(answers(snap), T0)) == [("VerifyDiffers", "raised", "vol1")]
    snap["transmitters"]["vol1"]["verify"].update(state="running", differing=[])
    assert e.evaluate(answers(snap), T0 + 1) == []
    snap["transmitters"]["vol1"]["verify"].update(state="done", differing=[], repaired=False)
    assert names(e.evaluate(answers(snap), T0 + 2)) == [("VerifyDiffers", "cleared", "vol1")]
