"""bench/sync_modes: its arguments and the table an admin reads, without running anything
(the bench itself needs a receiver, a transmitter and a minute; it is not a test)."""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sync_modes"


@pytest.fixture(scope="module")
def bench():
    loader = importlib.machinery.SourceFileLoader("bench_sync_modes", str(BENCH))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    sys.modules[loader.name] = module        # (its dataclasses look their module up)
    try:
        loader.exec_module(module)
        yield module
    finally:
        del sys.modules[loader.name]


def row(write_p50, flush_p50, iops, **more):
    figures = {"qd1_write_p50_us": write_p50, "qd1_write_p99_us": write_p50 * 3,
               "qd1_flush_p50_us": flush_p50, "qd1_flush_p99_us": flush_p50 * 3,
               "qd32_iops": iops, "qd32_cmds_per_batch": 31.5, "flush_after_qd32_ms": 0.6,
               "qd32_flush_iops": iops // 2, "gate_waits": 0, "fallbacks": 0}
    return {**figures, **more}


def test_quick_is_short_and_the_flush_interval_defaults_to_8(bench):
    assert bench.parse_args(["--quick"]).seconds == 1.5
    ns = bench.parse_args([])
    assert (ns.seconds, ns.flush_every, ns.tcp) == (5.0, 8, False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--flush-every", "-1"])


def test_the_table_shows_each_row_against_local_and_the_added_latencies(bench):
    rows = {"local": row(80.0, 500.0, 20000),
            "sync-on-flush (tls)": row(90.0, 3500.0, 15000, gate_waits=400),
            "sync (tls)": row(2900.0, 600.0, 5000, gate_waits=900, qd1_flush_p50_us=None,
                           qd1_flush_p99_us=None)}
    lines = bench.table(rows, 8)
    assert "a flush after every 8 writes" in lines[0]
    assert lines[1].split()[:4] == ["row", "write", "p50", "p99"]
    sync = lines[4].split()
    assert sync[:4] == ["sync", "(tls)", "2900", "8700"]
    assert sync[4] == "+2820" and sync[5:8] == ["-", "-", "-"]     # no flush: dashes
    assert "0.25" in sync                                           # 5000 / 20000 IOPS
    assert bench.added(rows, "tls") == {"per_write_us": 2820.0, "per_flush_us": 3000.0}
    assert bench.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert bench.percentile([], 99) is None


def test_rounds_report_medians_and_every_fall_back(bench):
    first = {"sync (tls)": row(3000.0, 600.0, 4000, fallbacks=0, fell_back={})}
    second = {"sync (tls)": row(2000.0, 500.0, 6000, fallbacks=1,
                                fell_back={"qd1": {"fallbacks": 1, "reason": "no ACK"}})}
    third = {"sync (tls)": row(2500.0, 900.0, 5000, fallbacks=0, fell_back={})}
    merged = bench.median_rows([first, second, third])["sync (tls)"]
    assert (merged["qd1_write_p50_us"], merged["qd1_flush_p50_us"]) == (2500.0, 600.0)
    assert merged["qd32_iops"] == 5000 and merged["fallbacks"] == 1
    assert merged["fell_back"] == {"round 2: qd1": {"fallbacks": 1, "reason": "no ACK"}}
    assert bench.parse_args(["--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])
