"""A scrape of the exporter after a counted workload through the whole primary chain (handler
on a simulated ring, real transmitter and receiver): parsed with prometheus_client's own text
parser, every metric of the reference present with its type, and the figures equal to what the
test wrote — writes, bytes, reads, sequence numbers at both ends."""

from __future__ import annotations

import os
import random

import pytest
from exporter_chain import BS, NAME
from exporter_fakes import REFERENCE
from prometheus_client.parser import text_string_to_metric_families
from repl_harness import status, wait_for

from appliance import __version__
from appliance.control.client import call

pytestmark = pytest.mark.integration

WRITES = 60
READS = 9


def sample(fams: dict, name: str, **labels) -> float:
    family = name.removesuffix("_total")
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in fams:
            family = name.removesuffix(suffix)
    found = [s.value for s in fams[family].samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_a_scrape_counts_the_workload_written(chain_factory):
    chain = chain_factory(journal_size="64M", rx_in_run_dir=True)
    rng = random.Random(16)
    sizes = [rng.randint(1, 16) for _ in range(WRITES)]
    written = 0
    for i, n in enumerate(sizes):
        chain.handler.write(i * 32, os.urandom(n * BS))
        written += n * BS
    chain.handler.flush()           # the online verify compares the mirror files
    read_blocks = [rng.randint(1, 8) for _ in range(READS)]
    for i, n in enumerate(read_blocks):
        chain.handler.read(i * 32, n)

    chain.start(chain.receiver(), chain.rx_control)
    chain.start(chain.transmitter(), chain.tx_control)
    running = chain.exporter()

    def caught_up():
        tx = status(chain.tx_control)
        vol = status(chain.rx_control)["volumes"][str(chain.handler.uuid)]
        return (tx["acked_seq"] == WRITES and tx["in_sync"] and vol["applied_seq"] == WRITES
                and vol["in_sync"])
    try:
        wait_for(caught_up, 30, f"the DR to hold and apply all {WRITES} writes")
        # an online verify, so that its figure is there too (none before the first one)
        call(chain.tx_control, "verify", {}, timeout=10)
        wait_for(lambda: status(chain.tx_control)["verify"]["state"] == "done", 30,
                 "the online verify")
    except AssertionError:
        print(chain.logs())
        raise
    text = running.scrape()
    print(text)
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    # every metric of the reference, with its type (no webhook configured: none of its own)
    expected = {n: t for n, t in REFERENCE.items() if "webhook" not in n}
    assert {n: fams[n].type for n in expected if n in fams} == expected

    v, vp = {"volume": NAME}, {"volume": NAME, "peer": f"127.0.0.1:{chain.port}"}
    dr = {"volume": NAME, "peer": "site-a"}
    assert sample(fams, "appliance_build_info", version=__version__) == 1
    for daemon in ("handler", "receiver"):
        assert sample(fams, f"appliance_{daemon}_up") == 1
    assert sample(fams, "appliance_transmitter_up", **v) == 1
    # the handler: what the host sent
    assert sample(fams, "appliance_write_ops_total", **v) == WRITES
    assert sample(fams, "appliance_write_bytes_total", **v) == written
    assert sample(fams, "appliance_read_ops_total", **v) == READS
    assert sample(fams, "appliance_read_bytes_total", **v) == sum(read_blocks) * BS
    assert sample(fams, "appliance_other_ops_total", **v) == 1          # the flush
    assert sample(fams, "appliance_ring_wakeups_total", **v) >= 1
    assert sample(fams, "appliance_ring_spins_total", **v) == 0         # ring_spin_us 0
    commands = WRITES + READS + 1
    assert sample(fams, "appliance_command_latency_seconds_count", **v) == commands
    assert sample(fams, "appliance_command_latency_seconds_bucket", le="+Inf", **v) == commands
    assert sample(fams, "appliance_command_latency_seconds_sum", **v) > 0
    assert sample(fams, "appliance_journal_records", **v) == WRITES     # all in one segment
    assert 0 < sample(fams, "appliance_journal_used_bytes", **v) < sample(
        fams, "appliance_journal_capacity_bytes", **v)
    assert sample(fams, "appliance_journal_overflows_total", **v) == 0
    # the transmitter: every write shipped and acknowledged
    for name in ("appliance_head_sequence", "appliance_sent_sequence",
                 "appliance_acknowledged_sequence", "appliance_applied_sequence",
                 "appliance_records_sent_total"):
        assert sample(fams, name, **vp) == WRITES, name
    assert sample(fams, "appliance_payload_bytes_sent_total", **vp) == written
    assert sample(fams, "appliance_wire_bytes_sent_total", **vp) > written   # random data
    assert sample(fams, "appliance_batches_sent_total", **vp) >= 1
    for name in ("appliance_lag_records", "appliance_lag_bytes", "appliance_lag_seconds",
                 "appliance_recovery_point_age_seconds", "appliance_dirty_bytes",
                 "appliance_resends_total", "appliance_link_disconnects_total",
                 "appliance_resync_remaining_bytes"):
        assert sample(fams, name, **vp) == 0, name
    assert sample(fams, "appliance_link_up", **vp) == 1
    assert sample(fams, "appliance_in_sync", **vp) == 1
    assert sample(fams, "appliance_link_connects_total", **vp) == 1
    on = {s.labels["appliance_replication_state"] for s in fams["appliance_replication_state"]
          .samples if s.labels["volume"] == NAME and s.value == 1}
    assert on == {"replicating"}
    # the DR: every write received, durable, applied, consistent
    for name in ("appliance_dr_durable_sequence", "appliance_dr_applied_sequence",
                 "appliance_dr_consistent_sequence", "appliance_dr_records_received_total"):
        assert sample(fams, name, **dr) == WRITES, name
    assert sample(fams, "appliance_dr_payload_bytes_received_total", **dr) == written
    assert sample(fams, "appliance_dr_generation", **dr) == 1
    assert sample(fams, "appliance_dr_rejected_batches_total", **dr) == 0
    assert sample(fams, "appliance_dr_lag_records", **dr) == 0
    assert sample(fams, "appliance_link_up", **dr) == 1
    assert sample(fams, "appliance_verify_differing_regions", **vp) == 0
    assert sample(fams, "appliance_exporter_alerts_active") == 0
