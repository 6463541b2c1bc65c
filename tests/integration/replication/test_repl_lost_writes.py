"""The old primary's lost-write report (docs/failover.md, "What a failover lost"): the DR is
promoted while the primary still writes and its link is cut; when the old primary's
transmitter meets the promoted DR it lists exactly the writes beyond the promotion's seq,
compared with the writer's own log, with their data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from repl_harness import BLOCK, image_after, read, read_log, wait_for

from appliance.control.client import call

pytestmark = pytest.mark.timeout(240)

OPS = 300


def test_the_old_primary_lists_exactly_the_writes_the_promoted_dr_never_had(pair):
    reports = pair.root / "reports"
    site = pair.site("site-a", blocks=2048,
                     extra=f'name = "vol1"\nreport_dir = "{reports}"\n')
    pair.serve(site)
    tx = pair.transmitter(site).start()
    writer = pair.writer(site, OPS, pause=0.005).start()

    def rx_volume() -> dict:
        return pair.rx_status()["volumes"].get(str(site.uuid)) or {}
    wait_for(lambda: rx_volume().get("durable_seq", 0) >= 50, 60, "the DR holding 50 writes")
    tx.kill9()                                   # the link is lost mid-stream
    wait_for(lambda: not writer.running(), 120, "the writer to finish its ops")
    assert writer.popen.returncode == 0, writer.output()[-3000:]
    ops = read_log(site.log)
    assert len(ops) == OPS

    promoted = call(pair.rx_control, "promote", {"volume": "vol1"}, timeout=60)
    at = promoted["promoted_at_seq"]
    assert 50 <= at < OPS, promoted
    at_time = promoted["promoted_at_time"]      # the consistent point on the primary's clock
    assert at_time is not None and time.time() - 120 < at_time <= time.time(), promoted
    # The DR's image: the primary's after exactly `at` writes (one write, one seq).
    remote = read(pair.replica_dir(site.uuid) / "mirror")
    assert remote == bytes(image_after(ops[:at], len(remote)))

    pair.transmitter(site).start()               # the old primary comes back
    summary = wait_for(lambda: (st := _tx_status(site)).get("lost_writes") and st, 60,
                       "the lost-write report in the old primary's status")["lost_writes"]
    assert summary["promoted_at_seq"] == at and summary["writes"] == OPS - at, summary
    assert (summary["first_seq"], summary["last_seq"]) == (at + 1, OPS), summary
    assert summary["promoted_by"] == "dr-site"

    body = json.loads(Path(summary["json"]).read_text())
    lost = ops[at:]
    assert [w["seq"] for w in body["writes"]] == list(range(at + 1, OPS + 1))
    assert at_time <= body["writes"][0]["time"], (at_time, body["writes"][0])
    kinds = {"W": "WRITE", "S": "WRITE SAME", "U": "UNMAP"}
    data = Path(body["data_file"]).read_bytes()
    for entry, op in zip(body["writes"], lost, strict=True):
        assert (entry["kind"], entry["lba"], entry["blocks"]) == (kinds[op.kind], op.lba,
                                                                  op.nblocks), (entry, op)
        if op.kind == "U":
            assert entry["data_offset"] is None
        else:
            got = data[entry["data_offset"]:entry["data_offset"] + entry["data_bytes"]]
            assert got == op.data(), f"data of seq {entry['seq']}"
    assert summary["bytes"] == sum(op.nblocks for op in lost) * BLOCK
    assert body["dirty_regions"] == [] and body["reclaimed"] is None

    text = Path(summary["text"]).read_text()
    assert f"promoted with this volume's image up to seq {at}" in text, text
    assert f"{OPS - at} writes" in text and f"{at + 1:>12}  " in text, text


def _tx_status(site) -> dict:
    try:
        return call(site.control, "status", {}, timeout=5)
    except OSError:
        return {}
