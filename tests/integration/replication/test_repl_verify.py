"""Online verify through appliancectl: a clean pair verifies identical while writes go on;
regions damaged behind the receiver's back are reported exactly, and repaired on request."""

from __future__ import annotations

import os

import pytest
from repl_harness import converge, read_log, run_verify, status, wait_for

pytestmark = pytest.mark.integration
REGION = 64 * 1024


def test_verify_reports_damaged_regions_and_repairs_them(pair):
    site = pair.site("site-a", resync=True)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 2500, pause=0.003, linger=True).start()
    pair.transmitter(site).start()
    wait_for(lambda: status(site.control)["link"]["state"] == "replicating", 20, "link up")

    report = run_verify(site, region_bytes=REGION, repair=False)          # online: the writer is still writing
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
    report = run_verify(site, region_bytes=REGION, repair=False)
    assert report["differing"] == [3 * REGION, 40 * REGION], report
    assert report["regions_checked"] == site.blocks * 512 // REGION

    report = run_verify(site, region_bytes=REGION, repair=True)
    assert report["repaired"] and report["differing"] == [3 * REGION, 40 * REGION], report
    converge(pair, site)
    wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["state"] == "consistent", 20,
             "the DR to be consistent after the repair")
    assert run_verify(site, region_bytes=REGION, repair=False)["differing"] == []
    w.stop()
