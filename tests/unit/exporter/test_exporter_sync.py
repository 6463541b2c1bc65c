"""The replication mode in the exporter (the handler's ``sync`` entry): its metrics as the
handler reports them (unknown figures left out), and SyncDegraded raised once while a
synchronous mode has fallen back to async and cleared once it is back (or the admin set
another mode)."""

from __future__ import annotations

from exporter_fakes import answers, recorded
from prometheus_client.parser import text_string_to_metric_families
from test_exporter_metrics import scrape, value

from appliance.exporter.alerts import KINDS, AlertEngine
from appliance.exporter.config import AlertThresholds

T0 = 1_700_000_000.0
REASON = "the DR did not acknowledge the write (seq 48230) within 5 s"
TH = AlertThresholds(recovery_point_age_s=1e6)


def with_sync(**sync) -> dict:
    snap = recorded("healthy")
    snap["handler"]["volumes"]["vol1"]["sync"].update(sync)
    return snap


def degraded(**more) -> dict:
    return with_sync(mode="sync", fallback_s=5.0, effective="sync-degraded",
                     degraded_since=T0 - 30, degraded_reason=REASON, waits=120,
                     wait_seconds=7.25, fallbacks=1, **more)


def fams(snap: dict) -> dict:
    return {f.name: f for f in text_string_to_metric_families(scrape(answers(snap)))}


def test_the_metrics_are_the_handlers_figures():
    f = fams(degraded())
    modes = {s.labels["appliance_sync_mode"]: s.value for s in f["appliance_sync_mode"].samples
             if s.labels["volume"] == "vol1"}
    assert modes == {"async": 0, "sync": 1, "sync-on-flush": 0}
    assert value(f, "appliance_sync_degraded", volume="vol1") == 1
    assert value(f, "appliance_sync_holding", volume="vol1") == 0
    assert value(f, "appliance_sync_fallback_seconds", volume="vol1") == 5.0
    assert value(f, "appliance_sync_waits_total", volume="vol1") == 120
    assert value(f, "appliance_sync_wait_seconds_total", volume="vol1") == 7.25
    assert value(f, "appliance_sync_fallbacks_total", volume="vol1") == 1
    assert all(set(s.labels) <= {"volume", "appliance_sync_mode"}
               for name, fam in f.items() if name.startswith("appliance_sync")
               for s in fam.samples)


def test_async_and_holding():
    f = fams(recorded("healthy"))
    assert value(f, "appliance_sync_mode", volume="vol1", appliance_sync_mode="async") == 1
    assert value(f, "appliance_sync_degraded", volume="vol1") == 0
    f = fams(with_sync(mode="sync-on-flush", effective="sync-on-flush", hold=True,
                       holding_since=T0 - 5))
    assert value(f, "appliance_sync_mode", volume="vol1",
                 appliance_sync_mode="sync-on-flush") == 1
    assert value(f, "appliance_sync_holding", volume="vol1") == 1
    assert value(f, "appliance_sync_degraded", volume="vol1") == 0


def test_unknown_figures_are_left_out():
    snap = with_sync(mode="turbo", effective="turbo", waits=None)
    del snap["handler"]["volumes"]["vol1"]["sync"]["holding_since"]
    f = fams(snap)
    for name in ("appliance_sync_mode", "appliance_sync_degraded", "appliance_sync_holding",
                 "appliance_sync_waits"):
        assert name not in f, name
    assert value(f, "appliance_sync_fallbacks_total", volume="vol1") == 0
    snap = recorded("healthy")
    del snap["handler"]["volumes"]["vol1"]["sync"]     # a handler without modes
    assert not [n for n in fams(snap) if n.startswith("appliance_sync")]


def test_sync_degraded_is_raised_once_and_cleared_once_back_in_its_mode():
    e = AlertEngine(TH)
    assert e.evaluate(answers(with_sync(mode="sync", effective="sync")), T0) == []
    (t,) = e.evaluate(answers(degraded()), T0 + 2)
    assert (t.alert.alert, t.state, t.alert.volume, t.alert.peer) == (
        "SyncDegraded", "raised", "vol1", None)
    assert t.alert.kind.severity == "warning"
    assert t.message_id == KINDS["SyncDegraded"].raised_id == "91d047ad5a454f519d41204a3ce7c1dd"
    assert t.message.startswith("vol1 fell back from sync to async at ")
    assert t.message.endswith(f": {REASON}; host writes complete without waiting for the DR "
                              f"until it has caught up")
    assert e.evaluate(answers(degraded()), T0 + 4) == []          # not again
    assert [a["alert"] for a in e.alerts()] == ["SyncDegraded"]
    (t,) = e.evaluate(answers(with_sync(mode="sync", effective="sync")), T0 + 6)
    assert (t.alert.alert, t.state, t.message) == ("SyncDegraded", "cleared",
                                                   "vol1 is no longer degraded (mode sync)")
    assert t.message_id == "7fe92faf1aff4f618fb69dc00ecc1dcc"
    assert e.alerts() == []


def test_sync_degraded_clears_when_the_admin_sets_async_or_the_volume_goes():
    e = AlertEngine(TH)
    assert [t.state for t in e.evaluate(answers(degraded()), T0)] == ["raised"]
    (t,) = e.evaluate(answers(with_sync(mode="async", effective="async")), T0 + 2)
    assert t.state == "cleared" and t.message == "vol1 is no longer degraded (mode async)"
    e.evaluate(answers(degraded()), T0 + 4)
    gone = degraded()
    gone["handler"]["volumes"] = {}
    gone["transmitters"] = {}
    (t,) = e.evaluate(answers(gone), T0 + 6)
    assert (t.alert.alert, t.state, t.message) == ("SyncDegraded", "cleared",
                                                   "handler no longer reports it")


def test_an_unknown_effective_mode_changes_nothing():
    e = AlertEngine(TH)
    e.evaluate(answers(degraded()), T0)
    assert e.evaluate(answers(with_sync(mode="sync", effective=None)), T0 + 2) == []
    assert [a["alert"] for a in e.alerts()] == ["SyncDegraded"]
