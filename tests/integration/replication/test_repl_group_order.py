"""Write order across LUNs (docs/groups.md): a database writes its log LUN, and only once that
completed its data LUN (group_writer.py). With both LUNs in one consistency group, every DR
state observed, while transmitter, receiver and writer are killed with -9 and the link is cut,
has no data write without the log write before it; the group is then promoted and both
members hold the image after the same write. The same workload on two separate volumes, one
link stalled, shows the violation: the test can fail."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import pytest
from group_writer import BS, MEMBER_BLOCKS, SLOTS, layout, slots
from repl_harness import PY, Proc, appliancectl, free_port, run_verify, status, wait_for
from test_repl_failback import dr_tool

from appliance.control.client import ControlError
from appliance.volume import group_layout

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OPS = 2500


def writer(pair, d: Path, args: list[str], log: Path, ops: int = OPS) -> Proc:
    p = Proc("group-writer", [PY, str(HERE / "group_writer.py"), "--dir", str(d), "--log",
                              str(log), "--ops", str(ops), "--pause", "0.002", *args],
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


def receiver_serves(pair) -> bool:
    try:
        status(pair.rx_control)
    except (OSError, ControlError):
        return False
    return True


def same_members(dr: Path, primary: Path, names=("log.img", "data.img")) -> bool:
    """The DR's member mirrors exist and equal the primary's, byte for byte."""
    return all((dr / n).exists() and (dr / n).read_bytes() == (primary / n).read_bytes()
               for n in names)


def provisioning_receiver(pair) -> Proc:
    """The pair's receiver with ``provision = true`` (a group replica made from the HELLO)."""
    pair.write_rx_config(provision=True)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    return rx


def group_site(pair, gid: uuid.UUID, **kw):
    return pair.site("primary", blocks=MEMBER_BLOCKS * 2, vol=gid, identity="site-a",
                     cert="site-a", **kw)


def test_a_group_keeps_the_write_order_across_its_luns_through_kills_and_cuts(pair):
    gid = uuid.uuid4()
    members = MEMBER_BLOCKS * 2                  # log at 0, data at 256 (chunk-aligned)
    pport = free_port()
    site = group_site(pair, gid, port=pport)
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
    looked = rounds = 0
    kills = {"transmitter": 0, "receiver": 0, "writer": 0}
    deadline = time.monotonic() + 120
    try:
        while (not log.exists() or int(log.read_text() or 0) < OPS) and \
                time.monotonic() < deadline:
            # The DR's states: while its receiver serves (a restarted one answers only once
            # it has redone its journal onto the mirror: during that redo the mirror is not a
            # state the DR holds), and the one a crash left (below).
            if receiver_serves(pair):
                found = observe(dr / "data.img", dr / "log.img")
                assert not found, f"the DR broke the write order: {found[:5]}"
                looked += 1
            rounds += 1
            if rounds % 8 == 0:                      # a kill -9 every ~0.5 s, in turn
                victim = ["transmitter", "receiver", "writer"][(rounds // 8) % 3]
                proc = {"transmitter": tx, "receiver": rx, "writer": w}[victim]
                # A receiver killed while it served leaves a state of the DR; one killed in
                # its start-up redo leaves a half-redone mirror, which its next start redoes.
                served = receiver_serves(pair)
                proc.kill9()
                if served and (victim == "receiver" or receiver_serves(pair)):
                    found = observe(dr / "data.img", dr / "log.img")   # what the crash left
                    assert not found, f"after kill -9 of the {victim}: {found[:5]}"
                proc.start()
                kills[victim] += 1
            assert tx.running() and rx.running(), pair.logs()
            time.sleep(0.05)
        assert int(log.read_text()) == OPS, "the workload did not finish in time"
        # Converge: the DR's members equal the primary's.
        wait_for(lambda: same_members(dr, site.dir), 60, "the DR group to converge")
    except AssertionError:
        print(pair.logs())
        raise
    print(f"observed {looked} DR states in {rounds} rounds, kills {kills}")
    assert looked > 50 and min(kills.values()) >= 2, (looked, kills)

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


def test_a_provisioned_dr_keeps_one_mirror_per_member_and_refuses_a_missing_one(pair):
    gid = uuid.uuid4()
    site = group_site(pair, gid)
    pair.volumes = []
    rx = provisioning_receiver(pair)
    log = pair.root / "group-writer.done"
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid)], log).start()
    tx = pair.transmitter(site).start()
    members = pair.replica_dir(gid) / "members"
    try:
        wait_for(lambda: log.exists() and int(log.read_text() or 0) == OPS
                 and same_members(members, site.dir), 120,
                 "the provisioned group's members to equal the primary's")
    except AssertionError:
        print(pair.logs())
        raise
    group = pair.rx_status()["volumes"][str(gid)]["group"]
    assert group["name"] == "db" and [m["name"] for m in group["members"]] == ["log", "data"]
    w.stop()
    tx.stop()
    rx.stop()
    # A [[volume]] replica whose layout lacks a member is refused, naming it; nothing lands.
    dr = pair.root / "dr-short"
    dr.mkdir()
    short = group_layout.load(pair.replica_dir(gid) / "db.group.json")
    short = group_layout.GroupLayout(short.name, short.uuid, short.block_size,
                                     short.align_blocks, short.members[:1])
    short = dataclasses.replace(short, members=(dataclasses.replace(
        short.members[0], mirror=str(dr / "log.img")),))
    group_layout.save(dr / "db.group.json", short)
    pair.rx_state = pair.root / "replicas-short"
    pair.volumes = [(gid, MEMBER_BLOCKS * 2)]
    pair.write_rx_config(mirrors={gid: dr / "db.group.json"})
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    tx.start()
    st = wait_for(lambda: (s := status(site.control))["link"]["state"] ==
                  "refused:group-member" and s, 30, "the refusal of a replica lacking a member")
    assert "lacks member 'data'" in st["link"]["last_error"], st["link"]
    assert not any((dr / "log.img").read_bytes()), "a refused group must not be written"


def prefix_point(log_image: bytes, data_image: bytes) -> int:
    """The number of group writes (log i is write 2i-1, data i write 2i) after which both
    members hold exactly what they hold; AssertionError if no single point explains both."""
    log_slots, data_slots = slots(log_image), slots(data_image)
    last_log, last_data = max(log_slots), max(data_slots)
    assert last_data in (last_log, last_log - 1), (last_log, last_data)
    for s in range(SLOTS):
        for got, last in ((log_slots[s], last_log), (data_slots[s], last_data)):
            want = max((i for i in range(s, last + 1, SLOTS) if i), default=0)
            assert got == want, f"slot {s}: {got}, the image after write {last} has {want}"
    return last_log + last_data


def test_a_group_rolled_back_after_a_crash_mid_resync_is_one_point_for_all_members(pair):
    gid = uuid.uuid4()
    site = group_site(pair, gid, compression=False,
                      extra="bandwidth_limit = 60000\nresync_region_bytes = 16384\n")
    rx = provisioning_receiver(pair)
    log = pair.root / "group-writer.done"
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid)], log, ops=300).start()
    pair.transmitter(site).start()
    members = pair.replica_dir(gid) / "members"
    wait_for(lambda: log.exists() and int(log.read_text() or 0) == 300
             and same_members(members, site.dir), 60, "the group's first 300 writes at the DR")
    w.stop()
    # A full resync (the DR inconsistent from its RESYNC_BEGIN) while the workload goes on
    # (the writer, the handler here, takes the resync's mark request).
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid)], log, ops=100_000).start()
    appliancectl(site.control, "call", "resync", "{}")
    def mid_resync() -> bool:
        v = pair.rx_status()["volumes"][str(gid)]
        return (v["state"] == "inconsistent" and v["resync_bytes_received"] > 0
                and v["undo_bytes"] > 0)      # it overwrote what the rollback must restore
    wait_for(mid_resync, 30, "the DR group inconsistent, part of the resync received")
    rx.kill9()                                  # the DR crashes in the middle
    w.stop()
    refused = dr_tool(pair.rx_config, "promote", str(gid))
    assert refused.returncode == 1 and "inconsistent" in refused.stderr, refused.stderr
    done = dr_tool(pair.rx_config, "rollback", str(gid))
    assert done.returncode == 0, done.stderr
    point = prefix_point((members / "log.img").read_bytes(), (members / "data.img").read_bytes())
    assert point >= 600, point          # at least the 300 pairs it held before the resync
    promoted = dr_tool(pair.rx_config, "promote", str(gid))
    assert promoted.returncode == 0, promoted.stderr
    assert "the members of group 'db' hold the primary's image after seq" in promoted.stderr
    assert f"cfgstring=mirror={members / 'log.img'};group=db" in promoted.stderr
    assert prefix_point((members / "log.img").read_bytes(),
                        (members / "data.img").read_bytes()) == point


def test_a_group_that_overflows_its_journal_resyncs_every_member(pair):
    """A journal too small for the workload while the link is down: the group logs to its
    bitmap, and the resync brings both members to the primary's image."""
    gid = uuid.uuid4()
    site = group_site(pair, gid)
    provisioning_receiver(pair)
    log = pair.root / "group-writer.done"
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid), "--journal-size",
                                str(1 << 20)], log, ops=1500).start()
    wait_for(lambda: log.exists() and int(log.read_text() or 0) == 1500, 60,
             "the workload, with no transmitter yet")
    assert "logging writes to the dirty-region bitmap" in w.output(), w.output()[-2000:]
    pair.transmitter(site).start()
    members = pair.replica_dir(gid) / "members"
    try:
        wait_for(lambda: same_members(members, site.dir)
                 and pair.rx_status()["volumes"][str(gid)]["state"] == "consistent", 60,
                 "both members resynced to the primary's image")
    except AssertionError:
        print(pair.logs())
        raise
    assert prefix_point((members / "log.img").read_bytes(),
                        (members / "data.img").read_bytes()) == 3000


def test_a_member_joining_with_data_gets_its_initial_copy_at_the_dr(pair):
    gid = uuid.uuid4()
    groups = pair.root / "groups"
    data = pair.root / "volumes"
    groups.mkdir()
    data.mkdir()
    site = pair.site("primary", blocks=512, vol=gid, identity="site-a", cert="site-a")
    site.tx_config.write_text(site.tx_config.read_text().replace(
        str(site.dir / "journal"), str(groups / "db.jnl")))
    provisioning_receiver(pair)
    joined = pair.root / "joined"
    w = Proc("join-writer", [PY, str(HERE / "join_writer.py"), "--groups-dir", str(groups),
                             "--data-dir", str(data), "--uuid", str(gid), "--ops", "200",
                             "--log", str(joined)], pair.root / "join-writer.log")
    pair.procs.append(w)
    w.start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: joined.exists(), 30, "member 'extra' to join the running group")
    members = pair.replica_dir(gid) / "members"
    try:
        wait_for(lambda: same_members(members, data, ("log.img", "extra.img"))
                 and pair.rx_status()["volumes"][str(gid)]["state"] == "consistent", 60,
                 "the DR to hold both members, the joined one's data copied")
    except AssertionError:
        print(pair.logs())
        raise
    group = pair.rx_status()["volumes"][str(gid)]["group"]
    assert [m["name"] for m in group["members"]] == ["log", "extra"], group
    assert group_layout.load(groups / "db.group.json").members[1].needs_copy is False
    assert any((members / "extra.img").read_bytes()), "the joined member's data was copied"
    w.stop()
    tx.stop()


def test_verify_of_a_group_finds_and_repairs_a_damaged_member_at_the_dr(pair):
    gid = uuid.uuid4()
    site = group_site(pair, gid)
    provisioning_receiver(pair)
    log = pair.root / "group-writer.done"
    w = writer(pair, site.dir, ["--group", "--uuid", str(gid)], log, ops=300).start()
    pair.transmitter(site).start()
    members = pair.replica_dir(gid) / "members"
    wait_for(lambda: log.exists() and int(log.read_text() or 0) == 300
             and same_members(members, site.dir), 60,
             "the group at the DR")
    clean = run_verify(site, region_bytes=16384, repair=False)
    assert clean["state"] == "done" and clean["differing"] == [], clean
    # Damage the DR's data member behind the receiver's back: verify names the region in the
    # group's address space (the data member starts at block 256) and repair restores it.
    with open(members / "data.img", "r+b") as f:
        f.seek(5 * BS)
        f.write(b"\xff" * BS)
    found = run_verify(site, region_bytes=16384, repair=True)
    assert found["differing"] == [MEMBER_BLOCKS * BS], found
    wait_for(lambda: same_members(members, site.dir), 30,
             "the repair to restore the DR's data member")
    w.stop()
