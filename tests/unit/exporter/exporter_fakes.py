"""Shared by the exporter's unit tests: recorded daemon states as the daemons' answers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from appliance.control.site_status import Answer

STATES = Path(__file__).resolve().parents[1] / "targetcli" / "states"
RECORDED = sorted(p.stem for p in STATES.glob("*.json") if p.stem != "exporter_alerts")

# The handler's `io` entry (spec: 16 bounds, 17 non-cumulative counts).
BOUNDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0]


G, C, H = "gauge", "counter", "histogram"
# Every family (as the text parser names it: counters without _total) and its type.
REFERENCE = {
    "appliance_build_info": G, "appliance_handler_up": G, "appliance_receiver_up": G,
    "appliance_transmitter_up": G,
    # handler
    "appliance_journal_capacity_bytes": G, "appliance_journal_used_bytes": G,
    "appliance_journal_records": G, "appliance_journal_overflows": C,
    "appliance_read_ops": C, "appliance_read_bytes": C, "appliance_write_ops": C,
    "appliance_write_bytes": C, "appliance_other_ops": C, "appliance_command_latency_seconds": H,
    "appliance_ring_wakeups": C, "appliance_ring_spins": C, "appliance_ring_spin_hits": C,
    "appliance_sync_mode": G, "appliance_sync_degraded": G, "appliance_sync_holding": G,
    "appliance_sync_fallback_seconds": G, "appliance_sync_waits": C,
    "appliance_sync_wait_seconds": C, "appliance_sync_fallbacks": C,
    # transmitter
    "appliance_head_sequence": G, "appliance_sent_sequence": G,
    "appliance_acknowledged_sequence": G, "appliance_applied_sequence": G,
    "appliance_lag_records": G, "appliance_lag_bytes": G, "appliance_lag_seconds": G,
    "appliance_recovery_point_age_seconds": G, "appliance_dirty_bytes": G,
    "appliance_in_sync": G, "appliance_link_up": G, "appliance_link_tls_in_kernel": G,
    "appliance_replication_state": G,
    "appliance_resync_total_bytes": G, "appliance_resync_remaining_bytes": G,
    "appliance_verify_differing_regions": G,
    "appliance_records_sent": C, "appliance_payload_bytes_sent": C,
    "appliance_wire_bytes_sent": C, "appliance_batches_sent": C, "appliance_resends": C,
    "appliance_link_connects": C, "appliance_link_disconnects": C,
    # receiver
    "appliance_dr_durable_sequence": G, "appliance_dr_applied_sequence": G,
    "appliance_dr_consistent_sequence": G, "appliance_dr_generation": G,
    "appliance_dr_lag_records": G, "appliance_dr_lag_seconds": G,
    "appliance_dr_records_received": C, "appliance_dr_payload_bytes_received": C,
    "appliance_dr_rejected_batches": C, "appliance_dr_duplicate_records": C,
    "appliance_dr_resend_requests": C, "appliance_dr_refusals": C,
    # the exporter itself
    "appliance_exporter_alerts_active": G, "appliance_exporter_webhook_queued": G,
    "appliance_exporter_webhook_delivered": C, "appliance_exporter_webhook_failed_attempts": C,
    "appliance_exporter_webhook_dropped": C,
}


def recorded(name: str) -> dict:
    return json.loads((STATES / f"{name}.json").read_text())


def io_entry(counts: list[int] | None = None) -> dict:
    counts = counts or [0, 3, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    return {"read_ops": 10, "read_bytes": 40960, "write_ops": 7, "write_bytes": 28672,
            "other_ops": 3, "latency_bounds_s": list(BOUNDS), "latency_counts": counts,
            "latency_sum_s": 11.5, "latency_count": sum(counts)}


def answers(snap: dict, *, silent: tuple[str, ...] = ()) -> list[Answer]:
    """The answers behind a snapshot; daemons named in ``silent`` ("handler", "receiver",
    "transmitter vol1") have a socket but give no status."""
    snap = copy.deepcopy(snap)
    out: list[Answer] = []

    def add(daemon: str, name: str | None, status: dict | None) -> None:
        label = f"{daemon} {name}" if name else daemon
        if label in silent:
            out.append(Answer(daemon, name, Path(f"/run/{label}.sock"), None, "timed out"))
        elif status is not None:
            out.append(Answer(daemon, name, Path(f"/run/{label}.sock"), status))

    add("handler", None, snap.get("handler"))
    add("receiver", None, snap.get("receiver"))
    for name, status in snap.get("transmitters", {}).items():
        add("transmitter", name, status)
    for label in silent:                 # silent daemons the snapshot does not hold
        if not any(a.label == label for a in out):
            daemon, _, name = label.partition(" ")
            add(daemon, name or None, None)
    return out
