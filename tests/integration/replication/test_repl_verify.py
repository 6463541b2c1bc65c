"""Online verify through appliancectl: a clean pair verifies identical while writes go on;
regions damaged behind the receiver's back are reported exactly, and repaired on request."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from repl_harness import PY, REPO, converge, read_log, status, wait_for

pytestmark = pytest.mark.integration
REGION = 64 * 1024


def appliancectl(sock, *args: str) -> dict:
    out = subprocess.run([PY, "-m", "appliance.control.cli", "--socket", str(sock), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_verify(site, repair: bool) -> dict:
    started = appliancectl(site.control, "call", "verify",
                           json.dumps({"region_bytes": REGION, "repair": repair}))
    assert started["started"] and started["regions"] == site.blocks * 512 // REGION
    return wait_for(lambda: (v := status(site.control)["verify"])["state"] in ("done", "failed")
                    and v, 60, "the verify to finish")


def test_verify_reports_damaged_regions_and_repairs_them(pair):
    site = pair.site("site-a", resync=True)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 2500, pause=0.003, linger=True).start()
    pair.transmitter(site).start()
    wait_for(lambda: status(site.control)["link"]["state"] == "replicating", 20, "link up")

    report = run_verify(site, repair=False)          # online: the writer is still writing
    assert report["state"] == "done", report
    assert report["differing"] == [], f"a clean pair verified different: {report}"
    assert len(read_log(site.log)) < 2500, "the verify was meant to overlap the writes"

    wait_for(lambda: len(read_log(site.log)) >= 2500, 60, "the writer's ops")
    converge(pair, site)
    # Damage the DR mirror behind the receiver's back (bit rot, a stray write).
    remote = pair.replica_dir(site.uuid) / "mirror"
    damaged = [3 * REGION + 4096, 40 * REGION]
    fd = os.open(remote, os.O_WRONLY)
    try:
        for off in damaged:
            os.pwrite(fd, b"\xde\xad" * 256, off)
    finally:
        os.close(fd)
    report = run_verify(site, repair=False)
    assert report["differing"] == [3 * REGION, 40 * REGION], report
    assert report["regions_checked"] == site.blocks * 512 // REGION

    report = run_verify(site, repair=True)
    assert report["repaired"] and report["differing"] == [3 * REGION, 40 * REGION], report
    converge(pair, site)
    wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["state"] == "consistent", 20,
             "the DR to be consistent after the repair")
    assert run_verify(site, repair=False)["differing"] == []
    w.stop()
