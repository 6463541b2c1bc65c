"""Primary and DR processes on loopback: replication converges, survives kill -9 anywhere, and
the remote mirror is always the primary's image after some prefix of the write log."""

from __future__ import annotations

import random
import time

import pytest
from repl_harness import converge, image_after, match_prefix, read, read_log, wait_for

pytestmark = pytest.mark.integration


def test_replicates_with_tls_and_compression_and_reports_status(pair):
    site = pair.site("site-a")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 600).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer to finish")
    assert w.popen.returncode == 0, w.output()
    converge(pair, site)

    ops = read_log(site.log)
    assert len(ops) == 600
    assert read(site.mirror) == bytes(image_after(ops, site.blocks * 512))
    txs = wait_for(lambda: (s := pair_tx_status(site)) and s["lag_records"] == 0 and s,
                   10, "transmitter lag 0")
    assert txs["link"]["state"] == "replicating" and txs["acked_seq"] >= 600
    assert txs["records_sent"] >= 600 and txs["wire_bytes_sent"] < txs["bytes_sent"]  # zstd
    rxs = pair.rx_status()["volumes"][str(site.uuid)]
    assert rxs["primary"] == "site-a" and rxs["link"]["state"] == "connected"
    assert rxs["applied_seq"] == txs["acked_seq"]
    assert "zstd" in rx.output()
    tx.stop()
    assert tx.popen.returncode == 0, tx.output()


def pair_tx_status(site):
    from repl_harness import status
    return status(site.control)


def test_kill9_transmitter_receiver_and_writer_keeps_prefix_and_converges(pair):
    """Random kill -9 of each process; after every receiver recovery the DR mirror is the
    primary's image after a prefix of the write log; at the end, byte for byte."""
    from appliance.replication.config import load_toml, receiver_config
    from appliance.replication.dr.replica import Replica

    site = pair.site("site-a")
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    total_ops = 4000
    # A journal that holds the whole workload: the prefix is checked at every recovery,
    # which a resync after an overflow would suspend.
    w = pair.writer(site, total_ops, pause=0.003, journal_size=32 << 20).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) > 50, 30, "the writer to get going")
    rng = random.Random(20261122)
    deadline = time.monotonic() + 45
    kills = {"transmitter": 0, "receiver": 0, "writer": 0}
    prefixes = []
    inconsistent_seen = 0
    while time.monotonic() < deadline and (w.running() or kills["writer"] < 2):
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(["transmitter", "receiver", "writer"])
        kills[victim] += 1
        if victim == "transmitter":
            tx.kill9()
            tx.start()
        elif victim == "writer":
            if w.running():
                w.kill9()
            w.start()
        else:
            rx.kill9()
            # Recover the replica exactly as the receiver does on start, then check it.
            cfg = receiver_config(load_toml(pair.rx_config), "rx")
            replica = Replica(cfg.volumes[0])
            remote = replica.read_mirror(0, site.blocks * 512)
            says_inconsistent = replica.status()["state"] == "inconsistent"
            replica.close()
            ops = read_log(site.log)
            if says_inconsistent:
                # A resync after a journal overflow (possible on a loaded machine) is under
                # way: the DR says so, and that is all invariant 4 asks of it then.
                inconsistent_seen += 1
            else:
                prefixes.append(match_prefix(remote, ops).ops_in_prefix)
            rx.start()
            pair.wait_rx_up(rx)
    assert all(kills.values()), f"every process must have been killed at least once: {kills}"
    if not w.running() and w.popen.returncode != 0:
        w.start()
    wait_for(lambda: w.popen.poll() is not None, 120, "the writer to finish its workload")
    assert w.popen.returncode == 0, w.output()[-3000:]
    converge(pair, site, timeout=90)
    ops = read_log(site.log)
    assert len(ops) == total_ops
    assert read(site.mirror) == bytes(image_after(ops, site.blocks * 512))
    assert prefixes == sorted(prefixes), f"the DR image went back in time: {prefixes}"
    assert len(prefixes) > inconsistent_seen, "the prefix was hardly ever checked"
    print(f"kills: {kills}; prefixes seen at receiver recoveries: {prefixes}; "
          f"recoveries during a resync (said inconsistent): {inconsistent_seen}")


def test_two_primaries_two_volumes_isolated_and_bandwidth_limited(pair):
    """Many-to-one: two primaries replicate two volumes to one receiver at once; one of them
    under a bandwidth limit. Killing one transmitter does not disturb the other volume."""
    a = pair.site("site-a")
    limit = 500_000
    c = pair.site("site-c", compression=False, extra=f"bandwidth_limit = {limit}\n")
    pair.volumes = [(a.uuid, a.blocks), (c.uuid, c.blocks)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    wa = pair.writer(a, 800, pause=0.002, seed=11).start()
    # Site C has no bitmap resync: its journal must hold every write even while its
    # limited link lags (on a loaded machine the writer easily outruns 500 kB/s).
    wc = pair.writer(c, 1200, seed=12, journal_size=32 << 20).start()
    txa = pair.transmitter(a).start()
    start = time.monotonic()
    txc = pair.transmitter(c).start()
    # While site-c's limited link is busy, site-a's transmitter dies and comes back.
    wait_for(lambda: pair_tx_status(c)["records_sent"] > 100, 20, "site-c to be shipping")
    txa.kill9()
    st_c = pair_tx_status(c)
    assert st_c["lag_records"] > 0, f"site-c should still be shipping: {st_c}"
    wire_c = pair_tx_status(c)["wire_bytes_sent"]
    time.sleep(1.5)
    assert pair_tx_status(c)["wire_bytes_sent"] > wire_c, "volume C stalled when A's link died"
    txa.start()
    wait_for(lambda: wa.popen.poll() is not None, 60, "writer of site-a")
    wait_for(lambda: wc.popen.poll() is not None, 60, "writer of site-c")
    converge(pair, a)
    converge(pair, c, timeout=90)
    elapsed = time.monotonic() - start
    shipped = pair_tx_status(c)["wire_bytes_sent"]
    assert shipped / elapsed <= limit * 1.3, f"{shipped / elapsed:.0f} B/s over limit {limit}"
    vols = pair.rx_status()["volumes"]
    assert vols[str(a.uuid)]["primary"] == "site-a" and vols[str(c.uuid)]["primary"] == "site-c"
    for s in (a, c):
        ops = read_log(s.log)
        assert read(s.mirror) == bytes(image_after(ops, s.blocks * 512))
    txc.stop()
