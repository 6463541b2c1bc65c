"""The collector on every recorded daemon state: parsed back with prometheus_client's own
parsers, every metric of the reference present with its type, values as the daemons report
them, unknown figures left out, a silent daemon visible as _up 0."""

from __future__ import annotations

import collections

import pytest
from exporter_fakes import RECORDED, REFERENCE, answers, io_entry, recorded
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from appliance import __version__
from appliance.exporter.metrics import SiteCollector

WEBHOOK = {"url": "http://h/", "queued": 2, "delivered": 3, "failed_attempts": 1, "dropped": 0,
           "last_error": None, "last_delivered_at": None}


def scrape(ans, exporter: dict | None = None, *, openmetrics: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SiteCollector(lambda: ans, (lambda: exporter) if exporter else None))
    if openmetrics:
        return om_exposition.generate_latest(registry).decode()
    return generate_latest(registry).decode()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, sample: str, **labels) -> float:
    family = sample
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix) and sample[:-len(suffix)] in fams:
            family = sample[:-len(suffix)]
    found = [s.value for s in fams[family].samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{sample}{labels}: {found}"
    return found[0]


def with_io(snap: dict) -> dict:
    for vol in snap["handler"]["volumes"].values():
        vol["io"] = io_entry()
        vol["ring"] = {"wakeups": 40, "batches": 90, "commands": 120, "max_batch": 4,
                       "spin_us": 1000, "spins": 50, "spin_hits": 45}
    return snap


def test_every_metric_of_the_reference_is_scraped_with_its_type():
    seen: dict[str, str] = {}
    for state in ("healthy", "dr_healthy", "verify_differs", "resync"):
        snap = recorded(state)
        if snap.get("handler"):
            with_io(snap)
        for fam in text_string_to_metric_families(
                scrape(answers(snap), {"alerts": [], "webhook": WEBHOOK})):
            assert seen.setdefault(fam.name, fam.type) == fam.type
    missing = {n: t for n, t in REFERENCE.items() if n not in seen}
    assert missing == {}
    assert {n: seen[n] for n in REFERENCE} == REFERENCE
    assert set(seen) == set(REFERENCE), f"not in the reference: {set(seen) - set(REFERENCE)}"


@pytest.mark.parametrize("state", RECORDED)
def test_each_recorded_state_parses_with_one_sample_per_label_set(state):
    snap = recorded(state)
    text = scrape(answers(snap), {"alerts": [{}], "webhook": None})
    fams = families(text)
    for fam in fams.values():
        keys = collections.Counter((s.name, tuple(sorted(s.labels.items()))) for s in fam.samples)
        assert [k for k, n in keys.items() if n > 1] == []
        for s in fam.samples:
            assert set(s.labels) <= {"volume", "peer", "version", "le",
                                     "appliance_replication_state", "appliance_sync_mode"}, s
    assert value(fams, "appliance_build_info", version=__version__) == 1
    assert value(fams, "appliance_exporter_alerts_active") == 1
    for name in snap["transmitters"]:
        assert value(fams, "appliance_transmitter_up", volume=name) == 1


def test_healthy_primary_values_are_the_daemons_figures():
    snap = with_io(recorded("healthy"))
    fams = families(scrape(answers(snap)))
    tx = snap["transmitters"]["vol1"]
    jr = snap["handler"]["volumes"]["vol1"]["journal"]
    vp = {"volume": "vol1", "peer": "192.0.2.2:7700"}
    assert value(fams, "appliance_handler_up") == 1
    assert value(fams, "appliance_journal_capacity_bytes", volume="vol1") == jr["capacity_bytes"]
    assert value(fams, "appliance_journal_used_bytes", volume="vol1") == jr["bytes_held"]
    assert value(fams, "appliance_journal_records", volume="vol1") == jr["records_held"]
    for metric, key in [("appliance_head_sequence", "head_seq"),
                        ("appliance_sent_sequence", "sent_seq"),
                        ("appliance_acknowledged_sequence", "acked_seq"),
                        ("appliance_applied_sequence", "applied_seq"),
                        ("appliance_records_sent_total", "records_sent"),
                        ("appliance_payload_bytes_sent_total", "bytes_sent"),
                        ("appliance_wire_bytes_sent_total", "wire_bytes_sent"),
                        ("appliance_batches_sent_total", "batches_sent"),
                        ("appliance_resends_total", "resends")]:
        assert value(fams, metric, **vp) == tx[key], metric
    assert value(fams, "appliance_link_up", **vp) == 1
    assert value(fams, "appliance_in_sync", **vp) == 1
    assert value(fams, "appliance_link_disconnects_total", **vp) == 0
    states = {s.labels["appliance_replication_state"]: s.value
              for s in fams["appliance_replication_state"].samples}
    assert states == {"replicating": 1, "paused": 0, "logging-to-bitmap": 0, "resync": 0,
                      "inconsistent": 0, "refused": 0}
    # never-run verify: no figure rather than a 0 that says "no difference"
    assert "appliance_verify_differing_regions" not in fams


def test_the_latency_histogram_is_cumulative_with_count_and_sum():
    snap = with_io(recorded("healthy"))
    fams = families(scrape(answers(snap)))
    buckets = {s.labels["le"]: s.value for s in fams["appliance_command_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["0.0001"] == 0 and buckets["0.00025"] == 3 and buckets["0.0005"] == 8
    assert buckets["0.001"] == 9 and buckets["10.0"] == 9 and buckets["+Inf"] == 10
    assert len(buckets) == 17
    assert value(fams, "appliance_command_latency_seconds_count", volume="vol1") == 10
    assert value(fams, "appliance_command_latency_seconds_sum", volume="vol1") == 11.5
    assert value(fams, "appliance_write_ops_total", volume="vol1") == 7
    assert value(fams, "appliance_read_bytes_total", volume="vol1") == 40960
    assert [value(fams, f"appliance_ring_{n}_total", volume="vol1")
            for n in ("wakeups", "spins", "spin_hits")] == [40, 50, 45]


def test_a_volume_without_io_has_no_io_metrics():
    fams = families(scrape(answers(recorded("healthy"))))
    assert "appliance_command_latency_seconds" not in fams
    assert "appliance_write_ops" not in fams
    assert "appliance_journal_used_bytes" in fams


@pytest.mark.parametrize(("state", "on"), [
    ("logging_to_bitmap", {"logging-to-bitmap"}),
    ("refused", {"refused"}),
    ("paused", {"paused"}),
    ("paused_admin", {"paused"}),
    ("needs_resync", {"paused", "logging-to-bitmap", "resync"}),
    ("resync", {"replicating", "logging-to-bitmap", "resync", "inconsistent"}),
    ("inconsistent", {"replicating", "logging-to-bitmap", "resync", "inconsistent"}),
    ("dr_promoted", {"refused"}),
    ("dr_healthy", {"replicating"}),
])
def test_the_state_set_says_which_states_are_on(state, on):
    fams = families(scrape(answers(recorded(state))))
    states = {s.labels["appliance_replication_state"]: s.value
              for s in fams["appliance_replication_state"].samples}
    assert {k for k, v in states.items() if v == 1} == on
    assert len(states) == 6


def test_resync_remaining_and_link_down():
    snap = recorded("resync")
    r = snap["transmitters"]["vol1"]["resync"]
    fams = families(scrape(answers(snap)))
    vp = {"volume": "vol1", "peer": snap["transmitters"]["vol1"]["peer"]}
    assert value(fams, "appliance_resync_total_bytes", **vp) == r["total_bytes"]
    assert value(fams, "appliance_resync_remaining_bytes", **vp) == (
        r["total_bytes"] - r["done_bytes"] - r["skipped_bytes"])
    fams = families(scrape(answers(recorded("logging_to_bitmap"))))
    assert [s.value for s in fams["appliance_link_up"].samples] == [0]


def test_dr_figures_label_the_replica_by_name_and_its_primary():
    snap = recorded("inconsistent")
    (uuid, vol), = snap["receiver"]["volumes"].items()
    vol["name"] = "vol1"
    fams = families(scrape(answers(snap)))
    vp = {"volume": "vol1", "peer": "site-a"}
    assert value(fams, "appliance_receiver_up") == 1
    assert value(fams, "appliance_dr_applied_sequence", **vp) == vol["applied_seq"]
    assert value(fams, "appliance_dr_consistent_sequence", **vp) == vol["last_consistent_seq"]
    assert value(fams, "appliance_dr_generation", **vp) == 1
    assert value(fams, "appliance_dr_rejected_batches_total", **vp) == 0
    assert value(fams, "appliance_dr_records_received_total", **vp) == vol["records_received"]
    del vol["name"]
    fams = families(scrape(answers(snap)))
    assert value(fams, "appliance_dr_applied_sequence", volume=uuid, peer="site-a") > 0
    # a promoted replica's image is a primary's: no consistent seq is claimed
    fams = families(scrape(answers(recorded("dr_promoted"))))
    assert "appliance_dr_consistent_sequence" not in fams


def test_unknown_figures_are_left_out_not_zero():
    snap = recorded("healthy")
    snap["transmitters"]["vol1"].update(lag_bytes=None, recovery_point_age_s=None)
    fams = families(scrape(answers(snap)))
    assert "appliance_lag_bytes" not in fams
    assert "appliance_recovery_point_age_seconds" not in fams
    assert "appliance_lag_records" in fams


def test_a_silent_daemon_is_up_0_and_reports_nothing_else():
    snap = recorded("healthy")
    fams = families(scrape(answers(snap, silent=("handler", "transmitter vol2"))))
    assert value(fams, "appliance_handler_up") == 0
    assert value(fams, "appliance_transmitter_up", volume="vol2") == 0
    assert value(fams, "appliance_transmitter_up", volume="vol1") == 1
    assert "appliance_journal_used_bytes" not in fams
    fams = families(scrape(answers(recorded("dr_healthy"), silent=("receiver",))))
    assert value(fams, "appliance_receiver_up") == 0
    assert "appliance_dr_applied_sequence" not in fams


def test_openmetrics_exposition_types_the_state_set_and_the_build_info():
    snap = with_io(recorded("healthy"))
    text = scrape(answers(snap), {"alerts": [], "webhook": WEBHOOK}, openmetrics=True)
    fams = {f.name: f for f in om_parser.text_string_to_metric_families(text)}
    assert fams["appliance_replication_state"].type == "stateset"
    assert fams["appliance_build"].type == "info"
    assert fams["appliance_records_sent"].type == "counter"
    assert fams["appliance_command_latency_seconds"].type == "histogram"
    assert fams["appliance_exporter_webhook_delivered"].type == "counter"


def test_a_failing_ask_still_answers_the_scrape():
    registry = CollectorRegistry(auto_describe=False)

    def broken():
        raise RuntimeError("boom")
    registry.register(SiteCollector(broken))
    fams = families(generate_latest(registry).decode())
    assert list(fams) == ["appliance_build_info"]


def test_the_peer_label_is_the_name_the_admin_gave_it():
    snap = recorded("healthy")
    snap["transmitters"]["vol1"]["peer_name"] = "dr"
    fams = families(scrape(answers(snap)))
    assert value(fams, "appliance_link_up", volume="vol1", peer="dr") == 1
    assert not [s for f in fams.values() for s in f.samples
                if s.labels.get("peer") == "192.0.2.2:7700"]


def test_link_tls_in_kernel_follows_what_the_link_says():
    snap = recorded("healthy")
    vp = {"volume": "vol1", "peer": "192.0.2.2:7700"}
    assert value(families(scrape(answers(snap))), "appliance_link_tls_in_kernel", **vp) == 0
    for tls, want in [("kernel (tx+rx), TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384", 1),
                      ("user space, TLSv1.3 TLS_AES_256_GCM_SHA384 (kernel TLS: this kernel "
                       "has no tls module (modprobe tls))", 0)]:
        snap["transmitters"]["vol1"]["link"]["tls"] = tls
        fams = families(scrape(answers(snap)))
        assert value(fams, "appliance_link_tls_in_kernel", **vp) == want, tls
