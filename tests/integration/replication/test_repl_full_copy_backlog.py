"""A full copy to a new DR does not ship the primary's backlog first.

The DR appliance is lost for a long time while the host writes: the primary's small journal
fills to over 90 % with records nobody acknowledged. A new, empty DR appears. Its first contact
asks for a full copy, which reads the primary mirror, which already holds the effect of every
backlog record: shipping them first would send the backlog over the WAN and then the whole
volume again. The transmitter instead sends RESYNC_BEGIN at once, naming the last superseded
seq, and the new DR's journal continues after it. The test kills the transmitter (-9) in the
middle of the copy; the restarted one resumes it, still without the backlog, and the DR ends
byte for byte equal to the primary, consistent again. A second test cuts the link every 1.5 s
instead (the same transmitter process goes on with the copy in each new session).

What crossed the link is read from the receiver's counters (it runs throughout): record bytes
must be at most what the host wrote after the DR appeared, never the backlog; region bytes at
most the volume, plus the 64 KiB chunks the writes during the copy dirtied again, plus the two
windows of regions a kill -9 can leave uncleared (shipped again).
"""

from __future__ import annotations

import json
import shutil

import pytest
from repl_harness import (
    converge,
    free_port,
    image_after,
    read,
    read_log,
    status,
    wait_for,
)

from appliance.journal import Journal, JournalReader

pytestmark = pytest.mark.integration

JOURNAL = 16 << 20         # 1500 ops of the test workload fill about 93 % of it
FIRST_OPS, BACKLOG_OPS, DURING_OPS, AFTER_OPS = 200, 1500, 40, 200
CHUNK = 64 * 1024          # the bitmap's chunk (the writer's default)
REGION = 64 * 1024         # resync_region_bytes below; 16 regions per window


def data_bytes(ops) -> int:
    """Record data bytes of logged ops (what BATCH frames carry for them)."""
    return sum(len(op.data()) for op in ops)


def chunks_touched(ops) -> int:
    """Chunk marks the ops make (each can make its chunks ship once more)."""
    return sum((op.lba + op.nblocks) * 512 // CHUNK - op.lba * 512 // CHUNK + 1 for op in ops)


def writer_status(proc) -> dict:
    line = [ln for ln in proc.output().splitlines() if ln.startswith("writer: status ")][-1]
    return json.loads(line.removeprefix("writer: status "))


def test_a_full_copy_to_a_new_dr_skips_the_superseded_backlog(pair):
    site = pair.site("site-a", resync=True, compression=False,
                     extra=f"bandwidth_limit = 2000000\nresync_region_bytes = {REGION}\n")
    volume = site.blocks * 512
    vol = str(site.uuid)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config(compression=False)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)

    # 1. Replicating normally, then the DR is lost.
    ops_total = FIRST_OPS
    w = pair.writer(site, ops_total, journal_size=JOURNAL).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer's first ops")
    converge(pair, site, timeout=30)
    tx.stop()
    rx.stop()
    shutil.rmtree(pair.replica_dir(site.uuid))

    # 2. The host writes on: an unacknowledged backlog of several MiB, journal near full.
    ops_total += BACKLOG_OPS
    w = pair.writer(site, ops_total, journal_size=JOURNAL).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the backlog writes")
    assert w.popen.returncode == 0, w.output()[-3000:]
    journal = writer_status(w)["journal"]
    assert writer_status(w)["state"] == "journaling" and journal["percent"] > 80, journal
    backlog_records = journal["next_seq"] - 1 - journal["acked_seq"]
    backlog_bytes = data_bytes(read_log(site.log)[FIRST_OPS:])
    assert backlog_records >= BACKLOG_OPS and backlog_bytes > volume, (journal, backlog_bytes)

    # 3. A new, empty DR; the host keeps writing during the copy; kill -9 in the middle.
    rx.start()
    pair.wait_rx_up(rx)
    ops_total += DURING_OPS
    w = pair.writer(site, ops_total, journal_size=JOURNAL, pause=0.05, seed=3,
                    linger=True).start()
    tx.start()

    def copying():
        r = status(site.control)["resync"]
        return r["state"] == "resyncing" and r["done_bytes"] > 0 and r
    wait_for(copying, 30, "the full copy to ship its first regions")
    v = pair.rx_status()["volumes"][vol]
    assert v["state"] == "inconsistent", v
    assert v["records_received"] == 0, (f"{v['records_received']} records "
                                        f"({v['bytes_received']} bytes) crossed before the copy")
    # The records the copy contains are acknowledged at once: the primary journal frees them.
    s = wait_for(lambda: (s := status(site.control))["resync"]["superseded_to_seq"] > 0
                 and s["acked_seq"] >= s["resync"]["superseded_to_seq"] and s, 10,
                 "the superseded records to be acknowledged")
    superseded_to = s["resync"]["superseded_to_seq"]
    assert s["resync"]["superseded_records"] >= backlog_records, s["resync"]
    assert s["records_sent"] == 0, s
    tx.kill9()
    assert pair.rx_status()["volumes"][vol]["state"] == "inconsistent"
    tx.start()

    def settled():
        r = status(site.control)["resync"]
        s = pair.rx_status()["volumes"][vol]
        return (r["completed"] >= 1 and r["state"] == "idle" and s["state"] == "consistent"
                and not s["full_copy_pending"])
    wait_for(settled, 60, "the resumed full copy to finish and the DR to be consistent")
    wait_for(lambda: len(read_log(site.log)) >= ops_total, 30, "the writes during the copy")
    w.stop()
    assert w.popen.returncode == 0, w.output()[-3000:]

    # 4. Records again after the copy: the DR's journal continues after the jump.
    ops_total += AFTER_OPS
    w = pair.writer(site, ops_total, journal_size=JOURNAL, seed=4, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= ops_total, 30, "the writes after the copy")
    converge(pair, site, timeout=30)
    ops = read_log(site.log)
    assert read(pair.replica_dir(site.uuid) / "mirror") == bytes(image_after(ops, volume))
    wait_for(lambda: (s := status(site.control))["acked_seq"] == s["head_seq"], 10,
             "the transmitter to persist the last acknowledgement")
    w.stop()
    assert w.popen.returncode == 0, w.output()[-3000:]
    tx.stop()

    during = ops[FIRST_OPS + BACKLOG_OPS:FIRST_OPS + BACKLOG_OPS + DURING_OPS]
    after = data_bytes(ops[FIRST_OPS + BACKLOG_OPS + DURING_OPS:])
    v = pair.rx_status()["volumes"][vol]
    print(f"backlog {backlog_records} records / {backlog_bytes} bytes; volume {volume}; "
          f"host writes during the copy {data_bytes(during)} bytes, after it {after}; DR "
          f"received {v['records_received']} records / {v['bytes_received']} record bytes "
          f"and {v['resync_bytes_received']} region bytes")
    # Records: only writes made after the copy began, and every write made after it ended.
    assert after <= v["bytes_received"] <= data_bytes(during) + after, v
    regions_bound = volume + CHUNK * chunks_touched(during) + 2 * 16 * REGION
    assert volume <= v["resync_bytes_received"] <= regions_bound, (v, regions_bound)
    assert v["bytes_received"] + v["resync_bytes_received"] - after < backlog_bytes + volume, v
    # The primary journal's tail moved past the superseded records: their space is free.
    j = Journal.open(site.journal, volume_uuid=site.uuid)
    try:
        usage = j.usage()
    finally:
        j.close()
    assert usage.acked_seq == usage.next_seq - 1 and usage.tail_seq > superseded_to, usage


def test_a_full_copy_over_a_flapping_link_resumes_without_the_backlog(pair):
    """The same first contact over a link a proxy cuts every 1.5 s: sessions end anywhere
    (before the jump is acknowledged, in the middle of the regions); each next one goes on
    with the copy in the same transmitter process, and not one backlog record crosses."""
    site0 = pair.site("site-a", resync=True, compression=False)
    pport = free_port()
    site = pair.site("site-a", port=pport, volume_of=site0, resync=True, compression=False,
                     extra=f"bandwidth_limit = 2000000\nresync_region_bytes = {REGION}\n")
    volume = site.blocks * 512
    vol = str(site.uuid)
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config(compression=False)
    # A backlog of 600 records; the 200 before them were acknowledged by a DR since lost.
    w = pair.writer(site, 800, journal_size=JOURNAL).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer's ops")
    assert w.popen.returncode == 0, w.output()[-3000:]
    reader = JournalReader(site.journal, volume_uuid=site.uuid)
    try:
        reader.acknowledge(200)
    finally:
        reader.close()

    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    proxy = pair.proxy(pport, "--cut-every", "1.5").start()
    w = pair.writer(site, 800 + DURING_OPS, journal_size=JOURNAL, pause=0.05, seed=5,
                    linger=True).start()
    tx = pair.transmitter(site).start()

    def settled():
        r = status(site.control)["resync"]
        s = pair.rx_status()["volumes"][vol]
        return (r["completed"] >= 1 and r["state"] == "idle" and s["state"] == "consistent"
                and r)
    r = wait_for(settled, 60, "the full copy to finish across the cuts")
    last = [ln for ln in proxy.output().splitlines() if ln.startswith("proxy: connections")]
    cuts = int(last[-1].rsplit("cuts=", 1)[1]) if last else 0
    # The copy ships for at least 2 s at 2 MB/s, so a cut lands inside it.
    assert tx.starts == 1 and r["resumed"] >= 1 and cuts >= 1, (r, cuts)
    assert r["superseded_records"] >= 600, r
    wait_for(lambda: len(read_log(site.log)) >= 800 + DURING_OPS, 30, "the writes")
    converge(pair, site, timeout=30)
    w.stop()
    ops = read_log(site.log)
    assert read(pair.replica_dir(site.uuid) / "mirror") == bytes(image_after(ops, volume))
    v = pair.rx_status()["volumes"][vol]
    print(f"cuts {cuts}, resync {r}; DR received {v['records_received']} records / "
          f"{v['bytes_received']} bytes and {v['resync_bytes_received']} region bytes")
    assert v["bytes_received"] <= data_bytes(ops[800:]), v
