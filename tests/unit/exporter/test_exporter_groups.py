"""A consistency group in the exporter (docs/monitoring.md, "Consistency groups"): the real
handler's status with group db (members log and data) and the plain volume vol1
(states/group_primary.json). The group's volume figures (journal, replication mode) are
published once, labelled with the group's name as its transmitter's are; each member's I/O
stays its own; the group's alerts are raised once, naming the group."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from exporter_fakes import answers
from prometheus_client.parser import text_string_to_metric_families
from test_exporter_metrics import scrape

from appliance.exporter.alerts import AlertEngine
from appliance.exporter.config import AlertThresholds

STATE = Path(__file__).with_name("states") / "group_primary.json"
TH = AlertThresholds(journal_high_water_percent=80.0, journal_clear_percent=70.0,
                     recovery_point_age_s=1e6, link_down_s=60.0)
T0 = 1_700_000_000.0

# Families of the group's one Volume, and of each device (the text parser's names).
VOLUME_FAMILIES = ("appliance_journal_capacity_bytes", "appliance_journal_used_bytes",
                   "appliance_journal_records", "appliance_journal_overflows",
                   "appliance_sync_degraded", "appliance_sync_holding",
                   "appliance_sync_fallback_seconds", "appliance_sync_waits",
                   "appliance_sync_wait_seconds", "appliance_sync_fallbacks")
IO_FAMILIES = ("appliance_read_ops", "appliance_read_bytes", "appliance_write_ops",
               "appliance_write_bytes", "appliance_other_ops")


def snapshot() -> dict:
    return json.loads(STATE.read_text())


def group_state(snap: dict, **changes) -> dict:
    """Change the group's Volume: the real handler shows it in ``groups`` and in every
    member's entry alike (one Volume)."""
    handler = snap["handler"]
    for entry in [handler["groups"]["db"]] + [v for v in handler["volumes"].values()
                                              if v.get("group") == "db"]:
        for key, value in changes.items():
            if isinstance(value, dict):
                entry[key] = {**entry[key], **value}
            else:
                entry[key] = value
    return snap


def families(snap: dict) -> dict:
    return {f.name: f for f in text_string_to_metric_families(scrape(answers(snap)))}


def series(fams: dict, family: str) -> list[tuple[str, dict, float]]:
    """Every sample of a family, in label order: (name, labels, value)."""
    return sorted(((s.name, s.labels, s.value) for s in fams[family].samples),
                  key=lambda x: (x[0], sorted(x[1].items())))


def test_the_group_volume_figures_are_published_once_under_the_group_name():
    snap = snapshot()
    group, vol1 = snap["handler"]["groups"]["db"], snap["handler"]["volumes"]["vol1"]
    fams = families(snap)
    assert series(fams, "appliance_journal_records") == [
        ("appliance_journal_records", {"volume": "db"}, group["journal"]["records_held"]),
        ("appliance_journal_records", {"volume": "vol1"}, vol1["journal"]["records_held"])]
    assert series(fams, "appliance_journal_used_bytes") == [
        ("appliance_journal_used_bytes", {"volume": "db"}, group["journal"]["bytes_held"]),
        ("appliance_journal_used_bytes", {"volume": "vol1"}, vol1["journal"]["bytes_held"])]
    assert series(fams, "appliance_sync_fallback_seconds") == [
        ("appliance_sync_fallback_seconds", {"volume": "db"}, 0.5),
        ("appliance_sync_fallback_seconds", {"volume": "vol1"}, 10.0)]
    assert sorted((s.labels["volume"], s.labels["appliance_sync_mode"])
                  for s in fams["appliance_sync_mode"].samples if s.value == 1) == [
        ("db", "sync"), ("vol1", "async")]
    for family in VOLUME_FAMILIES:
        assert sorted(s.labels["volume"] for s in fams[family].samples) == ["db", "vol1"], family
    # the same name as the group's transmitter's series: one volume label per Volume
    assert sorted({s.labels["volume"] for s in fams["appliance_head_sequence"].samples}) == [
        "db", "vol1"]
    # a sum over volumes counts each write once: db holds 5 records (3 to log, 2 to data)
    assert sum(s.value for s in fams["appliance_journal_records"].samples) == 5 + 4


def test_each_member_keeps_its_own_io_counters_and_latency():
    snap = snapshot()
    devices = snap["handler"]["volumes"]
    fams = families(snap)
    assert series(fams, "appliance_write_ops") == [
        ("appliance_write_ops_total", {"volume": "data"}, 2),
        ("appliance_write_ops_total", {"volume": "log"}, 3),
        ("appliance_write_ops_total", {"volume": "vol1"}, 4)]
    assert series(fams, "appliance_read_bytes") == [
        ("appliance_read_bytes_total", {"volume": "data"}, 4096),
        ("appliance_read_bytes_total", {"volume": "log"}, 0),
        ("appliance_read_bytes_total", {"volume": "vol1"}, 0)]
    for family in IO_FAMILIES:
        assert sorted(s.labels["volume"] for s in fams[family].samples) == [
            "data", "log", "vol1"], family
    counts = {s.labels["volume"]: s.value for s in fams["appliance_command_latency_seconds"]
              .samples if s.name.endswith("_count")}
    assert counts == {name: devices[name]["io"]["latency_count"]
                      for name in ("data", "log", "vol1")}


def test_no_series_names_a_member_but_the_io_ones():
    fams = families(snapshot())
    member_families = {f for f, fam in fams.items()
                       if any(s.labels.get("volume") in ("log", "data") for s in fam.samples)}
    assert member_families == {*IO_FAMILIES, "appliance_command_latency_seconds"}
    for fam in fams.values():
        for s in fam.samples:
            assert set(s.labels) <= {"volume", "peer", "version", "le",
                                     "appliance_replication_state", "appliance_sync_mode"}, s


def test_a_handler_without_the_groups_section_gives_the_same_series():
    snap = snapshot()
    full = scrape(answers(snap))
    del snap["handler"]["groups"]
    assert scrape(answers(snap)) == full
    # a group the section shows closed (its members gone) has no volume figures
    snap = snapshot()
    snap["handler"]["groups"]["db"] = {"open": False, "group": "db", "members": []}
    for name in ("log", "data"):
        del snap["handler"]["volumes"][name]
    fams = families(snap)
    assert [s.labels["volume"] for s in fams["appliance_journal_records"].samples] == ["vol1"]


def db_in_trouble() -> dict:
    """The group's journal past its high water, logging to its bitmap, its sync mode
    degraded; the group's transmitter sees the bitmap too."""
    snap = group_state(snapshot(), journal={"percent": 91.0}, state="logging-to-bitmap",
                       logging_since=T0 - 60, alert="journal full: logging writes to the "
                       "dirty-region bitmap (3 chunks of 65536 bytes to resync)",
                       sync={"effective": "sync-degraded", "degraded_since": T0 - 60,
                             "degraded_reason": "the volume logs writes to its dirty bitmap"})
    snap["transmitters"]["db"]["volume_state"] = "logging-to-bitmap"
    return snap


def test_a_groups_alerts_are_raised_once_naming_the_group():
    e = AlertEngine(TH)
    raised = e.evaluate(answers(db_in_trouble()), T0)
    assert sorted((t.alert.alert, t.state, t.alert.volume, t.alert.daemon) for t in raised) == [
        ("JournalHighWater", "raised", "db", "handler"),
        ("LoggingToBitmap", "raised", "db", "handler"),
        ("SyncDegraded", "raised", "db", "handler")]
    messages = {t.alert.alert: t.message for t in raised}
    assert messages["JournalHighWater"] == (
        "journal of group db is 91% full (high water 80%, clears below 70%)")
    assert messages["LoggingToBitmap"].startswith("group db logs writes to the dirty bitmap")
    assert messages["SyncDegraded"].startswith("group db fell back from sync to async")
    assert e.evaluate(answers(db_in_trouble()), T0 + 1) == []
    cleared = e.evaluate(answers(snapshot()), T0 + 2)
    assert sorted((t.alert.alert, t.state, t.alert.volume, t.message) for t in cleared) == [
        ("JournalHighWater", "cleared", "db",
         "journal of group db is 0% full (high water 80%, clears below 70%)"),
        ("LoggingToBitmap", "cleared", "db", "group db journals its writes again"),
        ("SyncDegraded", "cleared", "db", "group db is no longer degraded (mode sync)")]
    assert e.alerts() == []


def test_alerts_a_previous_exporter_raised_per_member_are_cleared(tmp_path):
    """alerts.json of an exporter that raised a group's alerts per member: those clear (the
    handler no longer reports them), the group's is raised once."""
    state = tmp_path / "alerts.json"
    old = [{"alert": "JournalHighWater", "volume": member, "peer": None, "daemon": "handler",
            "severity": "warning", "since": T0 - 100, "subject": None,
            "message": f"journal of {member} is 91% full (high water 80%, clears below 70%)",
            "message_id": "d5a44aa4ff61451e857bcf74c2c87bc4"} for member in ("data", "log")]
    state.write_text(json.dumps({"version": 1, "active": old, "pending": []}))
    e = AlertEngine(TH, state)
    e.load()
    snap = group_state(snapshot(), journal={"percent": 91.0})
    out = e.evaluate(answers(copy.deepcopy(snap)), T0)
    assert sorted((t.alert.volume, t.state, t.message) for t in out) == [
        ("data", "cleared", "handler no longer reports it"),
        ("db", "raised", "journal of group db is 91% full (high water 80%, clears below 70%)"),
        ("log", "cleared", "handler no longer reports it")]
    assert [a["volume"] for a in json.loads(state.read_text())["active"]] == ["db"]
