"""docs/monitoring.md, docs/prometheus-alerts.yml and docs/grafana-dashboard.json against the
exporter: the reference tables list exactly the metrics it publishes with their types, the
alert catalogue its alerts and message ids, and the samples parse and use only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from exporter_fakes import REFERENCE

from appliance.exporter.alerts import KINDS

DOCS = Path(__file__).resolve().parents[3] / "docs"
METRIC = re.compile(r"\bappliance_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def family(name: str) -> str:
    """A sample's or a documented name's family, as the text parser names it."""
    name = name.removesuffix("_total")
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in REFERENCE:
            return name.removesuffix(suffix)
    return name


def documented() -> dict[str, str]:
    """``| `metric` | type | ...`` rows of docs/monitoring.md."""
    rows = re.findall(r"^\| `(appliance_[a-z_]+)` \| ([a-z]+)", (DOCS / "monitoring.md")
                      .read_text(), flags=re.M)
    return {name: kind for name, kind in rows}


def test_the_metric_tables_are_the_metrics_published():
    docs = documented()
    assert {family(n) for n in docs} == set(REFERENCE)
    text_type = {"stateset": "gauge"}       # the text format has no state set
    for name, kind in docs.items():
        assert text_type.get(kind, kind) == REFERENCE[family(name)], name
        assert name.endswith("_total") == (kind == "counter"), name


def test_the_alert_catalogue_is_the_alerts_raised():
    text = (DOCS / "monitoring.md").read_text()
    rows = re.findall(r"^\| `([A-Za-z]+)` \| (warning|critical) \|.*\| `([0-9a-f]{32})` \| "
                      r"`([0-9a-f]{32})` \|$", text, flags=re.M)
    assert {(n, s, r, c) for n, s, r, c in rows} == {
        (k.name, k.severity, k.raised_id, k.cleared_id) for k in KINDS.values()}


def test_the_sample_alerting_rules_parse_and_use_real_metrics():
    doc = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert all(set(g) == {"name", "rules"} for g in doc["groups"])
    assert len(rules) >= 8
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")")
        for name in METRIC.findall(rule["expr"]):
            assert family(name) in REFERENCE, f"{rule['alert']}: {name} is no metric"
    used = {family(n) for r in rules for n in METRIC.findall(r["expr"])}
    assert {"appliance_link_up", "appliance_recovery_point_age_seconds",
            "appliance_journal_used_bytes", "appliance_replication_state"} <= used


def test_the_dashboard_is_grafana_json_over_real_metrics():
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "instance",
                                                               "volume"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used = set()
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")")
            for name in METRIC.findall(target["expr"]):
                assert family(name) in REFERENCE, f"{panel['title']}: {name} is no metric"
                used.add(family(name))
    assert {"appliance_recovery_point_age_seconds", "appliance_dr_applied_sequence",
            "appliance_command_latency_seconds", "appliance_journal_used_bytes"} <= used
