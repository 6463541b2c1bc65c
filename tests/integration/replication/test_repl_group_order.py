"""Write order across LUNs (docs/groups.md): a database writes its log LUN, and only once that
completed its data LUN (group_writer.py). With both LUNs in one consistency group, every DR
state observed, while transmitter, receiver and writer are killed with -9 and the link is cut,
has no data write without the log write before it; the group is then promoted and both
members hold the image after the same write. The same workload on two separate volumes, one
link stalled, shows the violation: the test can fail."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from group_writer import BS, MEMBER_BLOCKS, SLOTS, layout, slots
from repl_harness import PY, Proc, free_port, wait_for
from test_repl_failback import dr_tool

from appliance.volume import group_layout

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OPS = 2500


def writer(pair, d: Path, args: list[str], log: Path) -> Proc:
    p = Proc("group-writer", [PY, str(HERE / "group_writer.py"), "--dir", str(d), "--log",
                              str(log), "--ops", str(OPS), "--pause", "0.002", *args],
             pair.root / "group-writer.log")
    pair.procs.append(p)
    return p


def violations(log_image: bytes, data_image: bytes) -> list[tuple[int, int, int]]:
    """(slot, data's i, log's i) where the data LUN holds a write whose log write is missing.
    The data image is read first: what it shows was applied before the log read began."""
    bad = []
    for s, (li, di) in enumerate(zip(slots(log_image), slots(data_image), strict=True)):
        assert li is not None and di is not None, f"torn block at slot {s}"
        if di > li:
            bad.append((s, di, li))
    return bad


def observe(data: Path, log: Path) -> list[tuple[int, int, int]]:
    if not (data.exists() and log.exists()):
        return []
    d = data.read_bytes()[:SLOTS * BS]          # data first, then log (see violations)
    lg = log.read_bytes()[:SLOTS * BS]
    return violations(lg, d)


def test_a_group_keeps_the_write_order_across_its_luns_through_kills_and_cuts(pair):
    gid = uuid.uuid4()
    members = MEMBER_BLOCKS * 2                  # log at 0, data at 256 (chunk-aligned)
    pport = free_port()
    site = pair.site("primary", blocks=members, vol=gid, port=pport, identity="site-a",
                     cert="site-a")
    dr = pair.root / "dr-group"
    dr.mkdir()
    dr_layout = dr / "db.group.json"
    group_layout.save(dr_layout, layout(dr, gid, (dr / "log.img", dr / "data.img")))
    pair.volumes = [(gid, members)]
    pair.write_rx_config(mirrors={gid: dr_layout})
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    proxy = pair.proxy(pport, "--cut-every", "0.9").start()
    log = pair.root / "group-writer.done"
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid)], log).start()
    tx = pair.transmitter(site).start()
    observed = bad = 0
    kills = {"transmitter": 0, "receiver": 0, "writer": 0}
    deadline = time.monotonic() + 120
    try:
        while (not log.exists() or int(log.read_text() or 0) < OPS) and \
                time.monotonic() < deadline:
            found = observe(dr / "data.img", dr / "log.img")
            observed += 1
            assert not found, f"the DR broke the write order: {found[:5]}"
            if observed % 8 == 0:                    # a kill -9 every ~0.5 s, in turn
                victim = ["transmitter", "receiver", "writer"][(observed // 8) % 3]
                proc = {"transmitter": tx, "receiver": rx, "writer": w}[victim]
                proc.kill9()
                found = observe(dr / "data.img", dr / "log.img")   # the state a crash left
                assert not found, f"after kill -9 of the {victim}: {found[:5]}"
                proc.start()
                kills[victim] += 1
            assert tx.running() and rx.running(), pair.logs()
            time.sleep(0.05)
        assert int(log.read_text()) == OPS, "the workload did not finish in time"
        # Converge: the DR's members equal the primary's.
        wait_for(lambda: (dr / "log.img").read_bytes() == (site.dir / "log.img").read_bytes()
                 and (dr / "data.img").read_bytes() == (site.dir / "data.img").read_bytes(),
                 60, "the DR group to converge")
    except AssertionError:
        print(pair.logs())
        raise
    print(f"observed {observed} DR states, kills {kills}, violations {bad}")
    assert observed > 50 and min(kills.values()) >= 2, (observed, kills)

    # Promote the group: both members at the same seq (the last write, here both LUNs equal).
    w.stop()
    tx.stop()
    proxy.stop()
    rx.stop()
    done = dr_tool(pair.rx_config, "promote", str(gid))
    assert done.returncode == 0, done.stderr
    assert slots((dr / "log.img").read_bytes()) == slots((dr / "data.img").read_bytes())
    assert max(slots((dr / "data.img").read_bytes())) == OPS


def test_two_separate_volumes_can_break_the_order_the_test_can_fail(pair):
    log_id, data_id = uuid.uuid4(), uuid.uuid4()
    site_log = pair.site("log", blocks=MEMBER_BLOCKS, vol=log_id, identity="site-a",
                         cert="site-a")
    site_data = pair.site("data", blocks=MEMBER_BLOCKS, vol=data_id, identity="site-a",
                          cert="site-a")
    d = pair.root / "separate"
    (d / "log").mkdir(parents=True)
    (d / "data").mkdir(parents=True)
    # The writer's volumes live where the two transmitters' configs point.
    site_log.tx_config.write_text(site_log.tx_config.read_text().replace(
        str(site_log.dir / "journal"), str(d / "log" / "journal")))
    site_data.tx_config.write_text(site_data.tx_config.read_text().replace(
        str(site_data.dir / "journal"), str(d / "data" / "journal")))
    rx = pair.serve(site_log, site_data)
    log = pair.root / "group-writer.done"
    w = writer(pair, d, ["--uuid", str(log_id), "--data-uuid", str(data_id)], log).start()
    tx_log = pair.transmitter(site_log).start()
    pair.transmitter(site_data).start()
    dr_log = pair.replica_dir(log_id) / "mirror"
    dr_data = pair.replica_dir(data_id) / "mirror"
    wait_for(lambda: log.exists() and int(log.read_text() or 0) > 200, 30, "the workload")
    tx_log.kill9()                      # the log LUN's link stalls; the data LUN's goes on
    found = wait_for(lambda: observe(dr_data, dr_log), 30,
                     "the separate volumes to show a data write without its log write")
    print(f"violations with separate volumes: {len(found)} slots, e.g. {found[:3]}")
    tx_log.start()
    w.stop()
    assert rx.running()
