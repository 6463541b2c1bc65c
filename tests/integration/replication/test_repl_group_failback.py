"""Minimal failback of a consistency group (docs/groups.md, "Failover and failback";
docs/failover.md, section 3): site A serves group db (members log and data, through the
handler's group registry) replicating to B; B loses the link, A writes on, A stops; B promotes
the group replica and serves its members as a group of its own, made over the promoted layout
(``serve_promoted_group``: same members, same offsets, the promotion's base moved beside the
new layout), whose handler adopts the base and marks nothing. A comes back as B's DR over its
old layout with its old group journal: only B's own writes (as records) and the chunks of A's
unshipped writes (as regions) are copied, in the group's one address space, and A's
unshipped writes are kept in a lost-write report first."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from repl_harness import BLOCK, PY, Proc, appliancectl, free_port, read_log, status, wait_for
from test_repl_failback import (
    dr_tool,
    overlay,
    resync_done,
    start_failback_receiver,
    write_failback_receiver,
)
from test_repl_group_order import provisioning_receiver
from test_repl_minimal_failback import bitmap_state, chunk_bytes

from appliance.volume import group_layout

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MEMBER_BLOCKS = 8192              # 4 MiB each: 64 chunks of 64 KiB
GROUP_BLOCKS = 2 * MEMBER_BLOCKS
SHIPPED = 200
UNSHIPPED = 15
B_WRITES = 20


def group_writer(pair, name: str, groups: Path, gid: uuid.UUID, mirrors: dict[str, Path],
                 log: Path, ops: int, seed: int, promoted: Path | None = None) -> Proc:
    args = [PY, str(HERE / "group_site_writer.py"), "--groups-dir", str(groups), "--uuid",
            str(gid), "--log", str(log), "--ops", str(ops), "--seed", str(seed)]
    for member, path in mirrors.items():
        args += ["--member", f"{member}={path}:{MEMBER_BLOCKS}"]
    if promoted is not None:
        args += ["--promoted", str(promoted)]
    p = Proc(name, args, pair.root / f"{name}.log")
    pair.procs.append(p)
    return p.start()


def members_image(layout_path: Path) -> bytes:
    """The group's address space as its members hold it (retired ranges aside)."""
    layout = group_layout.load(layout_path)
    img = bytearray(layout.num_blocks * BLOCK)
    for m in layout.members:
        img[m.offset_blocks * BLOCK:m.end_blocks * BLOCK] = Path(m.mirror).read_bytes()
    return bytes(img)


def wait_logged(log: Path, n: int, what: str, writer: Proc) -> None:
    def done():
        assert writer.running(), writer.output()[-3000:]
        return len(read_log(log)) >= n and "ops done" in writer.output()
    wait_for(done, 60, what)


@pytest.mark.parametrize("proof", ["old journal", "none"])
def test_a_group_fails_back_copying_only_what_changed_on_either_side(pair, proof):
    """``proof``: A's receiver is given its old group journal (minimal failback), or, as the
    reference measured in the same run, nothing: B's base cannot be proven and B copies the
    whole group, every chunk read and hashed on both sides."""
    # 1. Site A: group db over two members, replicating to B (a provisioning receiver).
    gid_a = uuid.uuid4()
    groups_a, vols_a = pair.root / "a-groups", pair.root / "a-volumes"
    vols_a.mkdir()
    mirrors_a = {"log": vols_a / "log.img", "data": vols_a / "data.img"}
    site_a = pair.site("site-a", blocks=GROUP_BLOCKS, vol=gid_a, identity="site-a",
                       cert="site-a")
    site_a.tx_config.write_text(site_a.tx_config.read_text().replace(
        str(site_a.dir / "journal"), str(groups_a / "db.jnl")))
    rx_b = provisioning_receiver(pair)
    log_a = pair.root / "writelog-a"
    w = group_writer(pair, "writer-a", groups_a, gid_a, mirrors_a, log_a, SHIPPED, seed=1)
    tx_a = pair.transmitter(site_a).start()
    wait_logged(log_a, SHIPPED, "site A's first writes", w)
    replica = pair.replica_dir(gid_a)
    try:
        wait_for(lambda: (replica / "db.group.json").exists() and
                 members_image(replica / "db.group.json") ==
                 members_image(groups_a / "db.group.json"), 60,
                 "the DR's members to equal site A's")
    except AssertionError:
        print(pair.logs())
        raise
    # 2. B stops hearing from A; A writes on (writes B never gets), then stops.
    rx_b.stop()
    tx_a.stop()
    w.stop()
    w = group_writer(pair, "writer-a2", groups_a, gid_a, mirrors_a, log_a,
                     SHIPPED + UNSHIPPED, seed=2)
    wait_logged(log_a, SHIPPED + UNSHIPPED, "site A's unshipped writes", w)
    w.stop()
    ops_a = read_log(log_a)
    image_a = members_image(groups_a / "db.group.json")

    # 3. B promotes the group and serves its members as its own group db.
    done = dr_tool(pair.rx_config, "promote", str(gid_a))
    assert done.returncode == 0, done.stderr
    promoted = json.loads(done.stdout)
    assert promoted["promoted_at_seq"] == SHIPPED, promoted
    assert "/replication/groups create name=db" in done.stderr and "promoted=" in done.stderr
    image_b = members_image(replica / "db.group.json")
    gid_b, groups_b = uuid.uuid4(), pair.root / "b-groups"
    log_b = pair.root / "writelog-b"
    promoted_layout = group_layout.load(replica / "db.group.json")
    w_b = group_writer(pair, "writer-b", groups_b, gid_b,
                       {m.name: Path(m.mirror) for m in promoted_layout.members}, log_b,
                       B_WRITES, seed=4, promoted=replica / "db.group.json")
    wait_logged(log_b, B_WRITES, "the new primary's writes", w_b)
    layout_b = group_layout.load(groups_b / "db.group.json")
    assert [(m.name, m.offset_blocks) for m in layout_b.members] == \
        [(m.name, m.offset_blocks) for m in promoted_layout.members]
    header, snap = bitmap_state(groups_b / "db.bitmap")
    assert snap.dirty_chunks == 0, (snap, w_b.output()[-3000:])
    assert header.base is not None and (header.base.seq, header.base.lineage) == \
        (SHIPPED, gid_a), header

    # 4. A's receiver runs (it provisions; A still serves group db as a primary) when B's
    # transmitter first connects: B's promoted copy is refused, not provisioned.
    port_a = free_port()
    rx_a_state = pair.root / "site-a-replicas"
    rx_a_config, rx_a_control = write_failback_receiver(
        pair, site_a, port_a, vol=gid_b, mirror=groups_a / "db.group.json",
        size_bytes=GROUP_BLOCKS * BLOCK, failback_journal=groups_a / "db.jnl")
    failback_text = rx_a_config.read_text()
    if proof == "none":
        failback_text = "\n".join(line for line in failback_text.splitlines()
                                  if not line.startswith("failback_journal")) + "\n"
    before = failback_text[:failback_text.index("[[volume]]")]
    rx_a_config.write_text(f'provision = true\nlocal_primaries = ["{gid_a}"]\n' + before)
    start_failback_receiver(pair, rx_a_config, rx_a_control)
    site_b = pair.site("site-b", blocks=GROUP_BLOCKS, vol=gid_b, identity="dr-site",
                       cert="dr-site", port=port_a,
                       extra=f'generation = {promoted["generation"]}\n')
    text = site_b.tx_config.read_text().replace(str(site_b.dir / "journal"),
                                                str(groups_b / "db.jnl"))
    site_b.tx_config.write_text(text.replace('peer_identity = "dr-site"',
                                             'peer_identity = "site-a"')
                                .replace("generation = 1\n", ""))
    tx_b = pair.transmitter(site_b).start()
    st = wait_for(lambda: (s := status(site_b.control))["link"]["state"] ==
                  "refused:failback-first" and s, 30, "B's promoted copy refused by A")
    assert f"the promoted copy of {gid_a}, which this site serves as a primary" in \
        st["link"]["last_error"], st["link"]
    assert not (rx_a_state / str(gid_b)).exists(), "nothing may be provisioned"
    # 5. A is made B's DR over its old layout ('failback'): its receiver reloads, B's next
    # contact proves what A's members hold from A's old group journal.
    rx_a_config.write_text(failback_text)
    appliancectl(rx_a_control, "call", "reload", "{}")
    try:
        wait_for(lambda: resync_done(site_b.control, rx_a_control, str(gid_b)), 60,
                 "the group's failback to complete on site A")
        wait_for(lambda: members_image(groups_a / "db.group.json") ==
                 members_image(groups_b / "db.group.json"), 20,
                 "site A's members to equal the new primary's")
    except AssertionError:
        print(pair.logs())
        raise
    tx_status = status(site_b.control)
    r = tx_status["resync"]
    w_b.stop()
    tx_b.stop()

    final = members_image(groups_b / "db.group.json")
    assert final == overlay(image_b, read_log(log_b)), "the new primary lost writes"
    assert image_a != image_b, "site A's unshipped writes should differ from the promoted image"
    beyond = ops_a[SHIPPED - 1:]
    mine = chunk_bytes(beyond)
    print(f"group failback ({proof}): {r}; A's own writes touch {mine} bytes of chunks")
    assert tx_status["acked_seq"] == B_WRITES, tx_status
    if proof == "none":       # the reference: the whole group read and compared
        assert r["total_bytes"] == GROUP_BLOCKS * BLOCK and r["failback_marked_bytes"] == 0, r
        return
    # Copied: B's writes as records; only the chunks of A's own writes as regions (a restarted
    # writer submits its last logged op again: seq 201 is op 200 once more).
    assert r["failback_marked_bytes"] == mine and r["total_bytes"] == mine, (r, mine)
    assert mine < GROUP_BLOCKS * BLOCK // 4, "the test's writes should touch few chunks"
    reports = sorted(rx_a_state.glob(f"{gid_b}/lost-writes-*-promoted-at-{SHIPPED}.json"))
    assert len(reports) == 1, list(rx_a_state.rglob("*"))
    body = json.loads(reports[0].read_text())
    assert [(w["lba"], w["blocks"]) for w in body["writes"]] == \
        [(op.lba, op.nblocks) for op in beyond]
    v = status(rx_a_control)["volumes"][str(gid_b)]
    assert v["failback"]["state"] == "done" and v["failback"]["records"] == len(beyond), v
    assert [m["name"] for m in v["group"]["members"]] == ["log", "data"], v["group"]
