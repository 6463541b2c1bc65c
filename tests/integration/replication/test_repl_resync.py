"""An outage long enough to overflow the primary's journal: the write fork logs to its bitmap,
the transmitter resyncs the dirty regions when the link is back. During the resync the DR says
`inconsistent` (with since-when) and its last consistent image stays recoverable from the undo
log; afterwards it converges byte for byte and is consistent again."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from repl_harness import (
    PY,
    REPO,
    converge,
    free_port,
    image_after,
    match_prefix,
    read,
    read_log,
    status,
    wait_for,
)

from appliance.control.client import call

pytestmark = pytest.mark.integration


def dr_tool(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "appliance.replication.dr.dr_tool", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def resync_completed(pair, site) -> dict | None:
    """The transmitter's resync progress once a resync completed and the DR is consistent."""
    r = status(site.control)["resync"]
    v = pair.rx_status()["volumes"][str(site.uuid)]
    return r if r["completed"] >= 1 and r["state"] == "idle" and v["state"] == "consistent" \
        else None


def writer_status(proc) -> dict:
    line = [ln for ln in proc.output().splitlines() if ln.startswith("writer: status ")][-1]
    return json.loads(line.removeprefix("writer: status "))


def test_overflow_resync_reports_inconsistent_keeps_undo_and_converges(pair):
    site = pair.site("site-a", resync=True, extra="bandwidth_limit = 1500000\n")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    small = 1 << 20

    # 1. Replicate (the bandwidth limit may already overflow the small journal: the writer
    #    lingers to serve the resync), settle consistent, then lose the link.
    w = pair.writer(site, 200, journal_size=small, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) >= 200, 60, "writer phase 1")
    wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["state"] == "consistent"
             and status(site.control)["lag_records"] == 0
             and status(site.control)["resync"]["state"] == "idle", 60, "phase 1 to settle")
    converge(pair, site)
    # The writer returns to journaling on its own once the resync's clear request is handled:
    # wait for that (its status line) rather than stop it in the middle.
    wait_for(lambda: "writer: status " in w.output() and writer_status(w)["state"] == "journaling",
             30, "the writer to return to journaling after phase 1")
    w.stop()
    assert writer_status(w)["state"] == "journaling"
    tx.stop()

    # 2. Writes during the outage overflow the 1 MiB journal: logging to the bitmap.
    w = pair.writer(site, 1400, journal_size=small).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "writer phase 2")
    assert w.popen.returncode == 0, w.output()[-3000:]
    st = writer_status(w)
    assert st["state"] == "logging-to-bitmap" and st["dirty_chunks"] > 0, st

    # 3. Link back, writes continue: the resync runs, the DR says inconsistent meanwhile.
    w = pair.writer(site, 1700, journal_size=small, pause=0.004, linger=True).start()
    tx = pair.transmitter(site).start()
    vol = str(site.uuid)
    seen = wait_for(lambda: (v := pair.rx_status()["volumes"][vol])["state"] == "inconsistent"
                    and v["undo_bytes"] > 0 and v, 30, "the DR to report inconsistent")
    assert seen["inconsistent_since"] > time.time() - 60
    progress = wait_for(lambda: (r := status(site.control)["resync"])["total_bytes"] and r,
                        10, "resync progress in the transmitter status")
    assert progress["state"] in ("resyncing", "waiting-for-writer", "draining"), progress

    # Failover now means rolling back to the last consistent image: refused while the
    # receiver runs, done with it stopped (on a copy, so the test can go on).
    refused = dr_tool(pair.rx_config, "rollback", vol)
    assert refused.returncode == 1 and "the receiver is running" in refused.stderr, refused
    rx.kill9()
    copy_root = pair.root / "failover"
    shutil.copytree(pair.replica_dir(site.uuid), copy_root / vol)
    copy_config = pair.root / "failover.toml"
    copy_config.write_text(pair.rx_config.read_text()
                           .replace(str(pair.rx_state), str(copy_root))
                           .replace(str(pair.rx_control), str(pair.root / "gone.sock")))
    state = json.loads(dr_tool(copy_config, "state").stdout)
    assert state[0]["state"] == "inconsistent" and state[0]["undo_log"], state
    done = dr_tool(copy_config, "rollback", vol)
    assert done.returncode == 0, done.stderr
    seq = json.loads(done.stdout)["rolled_back_to_seq"]
    restored = (copy_root / vol / "mirror").read_bytes()
    prefix = match_prefix(restored, read_log(site.log))
    assert prefix.ops_in_prefix >= 200, prefix    # at least the phase-1 image
    assert json.loads(dr_tool(copy_config, "state").stdout)[0]["state"] == "consistent"
    print(f"rolled back to seq {seq}: the image after {prefix.ops_in_prefix} logged ops")

    # 4. The receiver comes back mid-resync; the resync finishes; everything converges.
    rx.start()
    pair.wait_rx_up(rx)
    wait_for(lambda: len(read_log(site.log)) >= 1700, 90, "writer phase 3 ops")
    assert w.running(), w.output()[-3000:]

    def settled():
        v = pair.rx_status()["volumes"][vol]
        s = status(site.control)
        return (v["state"] == "consistent" and s["resync"]["state"] == "idle"
                and s["lag_records"] == 0 and v["applied_seq"] == s["acked_seq"])
    wait_for(settled, 120, "the resync to finish and the DR to be consistent")
    w.stop()
    assert w.popen.returncode == 0, w.output()[-3000:]
    assert writer_status(w)["state"] == "journaling"
    converge(pair, site, timeout=60)
    ops = read_log(site.log)
    assert read(site.mirror) == bytes(image_after(ops, site.blocks * 512))
    txs = status(site.control)
    assert txs["resync"]["completed"] >= 1 and txs["resync"]["done_bytes"] > 0, txs["resync"]
    assert not (pair.replica_dir(site.uuid) / "undo.log").exists()


def test_initial_sync_of_a_preseeded_disk_skips_matching_regions(pair):
    """Initial synchronisation (every chunk dirty) with resync_skip_matching: regions the DR
    already holds (pre-seeded copy) are compared by hash and not shipped; the rest are."""
    site = pair.site("site-a", resync=True,
                     extra="resync_skip_matching = true\nresync_region_bytes = 65536\n")
    pair.volumes = [(site.uuid, site.blocks)]
    w = pair.writer(site, 400).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer's first ops")
    # Pre-seed the DR with a copy of the primary, then change a little on the primary.
    seed_dir = pair.replica_dir(site.uuid)
    seed_dir.mkdir(parents=True)
    shutil.copyfile(site.mirror, seed_dir / "mirror")
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 420, full_resync=True, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= 420, 60, "the writer's changes")
    pair.transmitter(site).start()

    r = wait_for(lambda: resync_completed(pair, site), 90, "the initial sync to complete")
    assert r["skipped_bytes"] > 0, r
    assert r["total_bytes"] == site.blocks * 512, r     # every chunk was considered
    assert r["done_bytes"] < r["total_bytes"] // 2, f"matching regions were shipped: {r}"
    converge(pair, site)
    w.stop()
    assert read(site.mirror) == bytes(image_after(read_log(site.log), site.blocks * 512))


def test_resync_over_a_link_cut_every_few_seconds_resumes_where_it_stopped(pair):
    """Initial sync of a 32 MiB volume over a 4 MB/s link that a proxy cuts every 2.5 s: no
    session lasts long enough to ship the volume, so only a resync that goes on with the
    chunks still dirty can finish. It does, ships about the volume once, and converges."""
    blocks = 65536
    volume = blocks * 512
    site0 = pair.site("site-a", blocks=blocks, resync=True, compression=False)
    pport = free_port()
    site = pair.site("site-a", blocks=blocks, port=pport, volume_of=site0, resync=True,
                     compression=False,
                     extra="bandwidth_limit = 4000000\nresync_region_bytes = 262144\n")
    pair.volumes = [(site.uuid, blocks)]
    pair.write_rx_config(compression=False)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    proxy = pair.proxy(pport, "--cut-every", "2.5").start()
    w = pair.writer(site, 300, full_resync=True, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= 300, 60, "the writer's ops")
    pair.transmitter(site).start()
    vol = str(site.uuid)
    wait_for(lambda: pair.rx_status()["volumes"][vol]["state"] == "inconsistent", 30,
             "the DR to report inconsistent during the initial sync")

    r = wait_for(lambda: resync_completed(pair, site), 150, "the initial sync to finish across the cuts")
    last = [ln for ln in proxy.output().splitlines() if ln.startswith("proxy: connections")]
    cuts = int(last[-1].rsplit("cuts=", 1)[1]) if last else 0
    print(f"resync {r}; proxy cuts {cuts}")
    assert r["resumed"] >= 2 and cuts >= 2, (r, cuts)
    assert volume <= r["total_bytes"] and r["done_bytes"] < 1.5 * volume, r
    proxy.stop()
    converge(pair, site, timeout=60)
    w.stop()
    assert read(site.mirror) == bytes(image_after(read_log(site.log), volume))
    assert pair.rx_status()["volumes"][vol]["state"] == "consistent"


def test_repair_cut_short_by_a_transmitter_crash_is_finished_before_the_dr_is_consistent(pair):
    """A verify repair ships regions that are not in the bitmap. Kill -9 the transmitter in
    the middle of it: the restarted transmitter must ship them again (they are kept in
    ``<bitmap>.repair.json``), and the DR must not call itself consistent before that."""
    region = 64 * 1024
    site = pair.site("site-a", resync=True, compression=False,
                     extra="bandwidth_limit = 300000\n")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config(compression=False)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 400, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) >= 400, 60, "the writer's ops")
    converge(pair, site)
    remote = pair.replica_dir(site.uuid) / "mirror"
    with open(remote, "r+b") as f:                  # damage every other region (2 MiB)
        for i in range(0, site.blocks * 512 // region, 2):
            f.seek(i * region)
            f.write(b"\xde\xad" * (region // 2))
    started = call(site.control, "verify", {"region_bytes": region, "repair": True})
    assert started["started"], started
    pending = site.dir / "bitmap.repair.json"
    wait_for(lambda: (r := status(site.control)["resync"])["state"] == "repairing"
             and r["done_bytes"] > 0, 60, "the repair to ship its first regions")
    assert pending.exists()
    tx.kill9()
    assert pair.rx_status()["volumes"][str(site.uuid)]["state"] == "inconsistent"
    tx.start()

    def settled():
        v = pair.rx_status()["volumes"][str(site.uuid)]
        return v["state"] == "consistent" and status(site.control)["resync"]["state"] == "idle"
    wait_for(settled, 90, "the restarted transmitter to finish the repair")
    assert not pending.exists()
    assert read(remote) == read(site.mirror), "the DR said consistent with regions unrepaired"
    w.stop()


def test_an_existing_disk_taken_over_reaches_the_peer_whole(pair):
    """A mirror that already holds data gets a new journal (an existing disk taken over):
    the journal starts at seq 1, so without a full resync the peer would accept it as the
    whole history and never get the old data. The volume starts with every chunk dirty, and
    the DR ends up equal to the primary, old data included."""
    site = pair.site("site-a", resync=True)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    old = bytes(range(256)) * (site.blocks * 2)           # the whole disk, before us
    site.mirror.write_bytes(old)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 200, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= 200, 60, "the writer's ops")
    pair.transmitter(site).start()

    r = wait_for(lambda: resync_completed(pair, site), 90, "the full resync of the taken-over disk")
    assert r["total_bytes"] == site.blocks * 512, r
    converge(pair, site)
    remote, primary = read(pair.replica_dir(site.uuid) / "mirror"), read(site.mirror)
    untouched = [i for i in range(0, site.blocks * 512, 4096) if primary[i:i + 8] == old[i:i + 8]]
    assert untouched, "the writer overwrote every block: the test proves nothing"
    assert all(remote[i:i + 8] == old[i:i + 8] for i in untouched)
    w.stop()


def test_a_replaced_empty_dr_gets_a_full_copy_while_the_host_writes(pair):
    """The DR appliance is lost and replaced by an empty one. The primary's journal has long
    been acknowledged, so the first contact starts at a later seq: the new DR takes it, says
    inconsistent (with no undo log: it has no image to keep), the transmitter has the writer
    mark every chunk, and the bitmap resync copies the whole volume while host writes go on.
    Before, this contact was refused ("resync-needed") forever."""
    site = pair.site("site-a", resync=True, extra="bandwidth_limit = 2000000\n")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 300, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) >= 300, 60, "the writer's first ops")
    converge(pair, site)
    assert status(site.control)["acked_seq"] > 1
    w.stop()
    tx.stop()
    rx.stop()
    shutil.rmtree(pair.replica_dir(site.uuid))          # the replacement DR holds nothing
    rx.start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 700, pause=0.002, seed=2, linger=True).start()
    tx.start()

    vol = str(site.uuid)
    seen = wait_for(lambda: (v := pair.rx_status()["volumes"][vol])["state"] == "inconsistent"
                    and v, 30, "the new DR to say inconsistent")
    assert seen["undo_bytes"] == 0, seen
    r = wait_for(lambda: resync_completed(pair, site), 120, "the full copy to complete")
    assert r["total_bytes"] >= site.blocks * 512, r        # every chunk, at least once
    wait_for(lambda: len(read_log(site.log)) >= 700, 60, "the writer's ops during the copy")
    converge(pair, site)
    w.stop()
    assert w.popen.returncode == 0, w.output()[-3000:]
    assert read(pair.replica_dir(site.uuid) / "mirror") == \
        bytes(image_after(read_log(site.log), site.blocks * 512))
    assert "a full copy is needed" in rx.output()
    state = json.loads(dr_tool(pair.rx_config, "state").stdout)
    assert state[0]["state"] == "consistent" and not state[0]["full_copy_pending"], state


def replace_the_dr(pair, site, rx, tx) -> None:
    """Stop both daemons and give the DR an empty state directory (a replacement DR)."""
    tx.stop()
    rx.stop()
    shutil.rmtree(pair.replica_dir(site.uuid))
    rx.start()
    pair.wait_rx_up(rx)


def test_a_full_copy_needs_no_mirror_or_bitmap_in_the_configuration(pair):
    """Configured as the demo does it (no 'mirror'/'bitmap'), the transmitter finds them from
    the volume's journal and sends a replaced DR its full copy."""
    site = pair.site("site-a")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 100, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: "writer: status " in w.output(), 60, "the writer's ops")
    converge(pair, site)
    replace_the_dr(pair, site, rx, tx)
    tx.start()
    wait_for(lambda: resync_completed(pair, site), 60, "the full copy to complete")
    converge(pair, site)


def test_a_full_copy_from_a_journal_that_names_no_files_says_what_to_fix(pair):
    """A journal written by a handler older than the volume-files slot names no mirror: the
    transmitter cannot send a full copy, and its status says why and what to do."""
    site = pair.site("site-a")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 100, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: "writer: status " in w.output(), 60, "the writer's ops")
    converge(pair, site)
    replace_the_dr(pair, site, rx, tx)
    with open(site.journal, "r+b") as f:            # as an older handler left it
        f.seek(6 * 4096)
        f.write(bytes(2 * 4096))
    tx.start()
    st = wait_for(lambda: "names no mirror and bitmap" in ((s := status(site.control))["link"]
                                                           ["last_error"] or "") and s,
                  30, "the transmitter to say it cannot send the full copy")
    assert "needs a full copy" in st["link"]["last_error"], st["link"]
    assert "restart appliance-handler" in (st["resync_blocked"] or ""), st
    v = pair.rx_status()["volumes"][str(site.uuid)]
    assert v["state"] == "inconsistent" and v["full_copy_pending"], v
    assert st["records_sent"] == 0 and not st["in_sync"], st
