"""Failover and failback, role swap: site A (primary) replicates to site B (DR); A is lost
with writes B never got; B is promoted and fences A off; B serves the promoted mirror as the
new primary; A's old mirror becomes B's DR replica and is re-synced by hash, shipping only the
chunks that differ, until it equals B byte for byte. Then the planned swap back: A's replica
promoted, B's demoted (the first epoch's transmitter stays refused by its generation), A the
primary again, B re-synced by hash."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from pathlib import Path

import pytest
from repl_harness import (
    BLOCK,
    PY,
    REPO,
    LoggedOp,
    Proc,
    converge,
    free_port,
    match_prefix,
    module_proc,
    read,
    read_log,
    status,
    wait_for,
)

pytestmark = pytest.mark.integration

BLOCKS = 16384                    # 8 MiB: 128 bitmap chunks of 64 KiB
REGION = 64 * 1024


def dr_tool(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "appliance.replication.dr.dr_tool", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def overlay(image: bytes, ops: list[LoggedOp]) -> bytes:
    img = bytearray(image)
    for op in ops:
        img[op.lba * BLOCK:(op.lba + op.nblocks) * BLOCK] = op.image_bytes()
    return bytes(img)


def write_failback_receiver(pair, site_a, port: int, *, vol: uuid.UUID | None = None,
                            mirror: Path | None = None, size_bytes: int | None = None,
                            failback_journal: Path | None = None) -> tuple[Path, Path]:
    """Site A's receiver: its OLD primary mirror (``mirror``, site A's by default) is the
    replica mirror of volume ``vol`` (site A's by default: the new primary serves the promoted
    mirror under the same uuid), the promoted site ('dr-site') the only primary it admits;
    with ``failback_journal`` A's old journal proves what the mirror holds (minimal failback).
    Returns (config, control socket)."""
    control = pair.root / "rx-a.sock"
    config = pair.root / "rx-a.toml"
    volume = ["[[volume]]", f'uuid = "{vol or site_a.uuid}"',
              f"size_bytes = {size_bytes or BLOCKS * BLOCK}", f"block_size = {BLOCK}",
              f"journal_size = {4 << 20}", f'mirror = "{mirror or site_a.mirror}"',
              'allowed_primaries = ["dr-site"]']
    if failback_journal is not None:
        volume.append(f'failback_journal = "{failback_journal}"')
    config.write_text("\n".join([
        'identity = "site-a"', f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{pair.root / "site-a-replicas"}"', f'control_socket = "{control}"',
        "heartbeat_s = 0.5", "dead_after_s = 3.0"]) + "\n" + pair.pki.tls_toml("site-a") +
        "\n".join(volume) + "\n")
    return config, control


def start_failback_receiver(pair, config: Path, control: Path) -> Proc:
    """Site A's receiver with ``config`` (write_failback_receiver), answering on ``control``."""
    rx_a = module_proc("receiver-site-a", "appliance.replication.dr.receiver", config,
                       pair.root)
    pair.procs.append(rx_a)
    rx_a.start()
    wait_for(lambda: rx_a.running() and status(control), 20, "site A's receiver")
    return rx_a


def new_primary(pair, name: str, site_a, promoted_mirror: Path, generation: int,
                peer_port: int, identity: str, peer_identity: str):
    """A primary over a promoted mirror (what the user:mirror cfgstring names, here a link)
    with a NEW journal and bitmap, and its transmitter."""
    d = pair.root / f"{name}-primary"
    d.mkdir()
    (d / "mirror").symlink_to(promoted_mirror)
    control = pair.root / f"tx-{name}.sock"
    config = pair.root / f"tx-{name}.toml"
    config.write_text("\n".join([
        f'identity = "{identity}"', f'peer = "127.0.0.1:{peer_port}"',
        f'peer_identity = "{peer_identity}"',
        f'journal = "{d / "journal"}"', f'volume_uuid = "{site_a.uuid}"',
        f"size_bytes = {BLOCKS * BLOCK}", f"block_size = {BLOCK}", f"generation = {generation}",
        f'control_socket = "{control}"', "compression = true", "heartbeat_s = 0.5",
        "dead_after_s = 3.0", "backoff_max_s = 1.0", f'mirror = "{d / "mirror"}"',
        f'bitmap = "{d / "bitmap"}"', "resync_skip_matching = true",
        f"resync_region_bytes = {REGION}"]) + "\n" + pair.pki.tls_toml(identity))
    return dataclasses.replace(site_a, name=name, dir=d, tx_config=config, control=control,
                               log=pair.root / f"writelog-{name}")


def resync_done(tx_control: Path, rx_control: Path, vol: str) -> dict | None:
    """The transmitter's resync progress once a resync completed and the peer is consistent
    with everything applied."""
    r = status(tx_control)["resync"]
    v = status(rx_control)["volumes"][vol]
    return r if (r["completed"] >= 1 and r["state"] == "idle" and v["state"] == "consistent"
                 and v["applied_seq"] == v["durable_seq"]) else None


def test_failover_fence_failback_and_swap_back_resync_only_what_differs(pair):
    # 1. Site A replicates to site B (the pair's receiver, 'dr-site').
    site_a = pair.site("site-a", blocks=BLOCKS, resync=True)
    vol = str(site_a.uuid)
    pair.volumes = [(site_a.uuid, BLOCKS)]
    pair.write_rx_config()
    rx_b = pair.receiver().start()
    pair.wait_rx_up(rx_b)
    w = pair.writer(site_a, 200).start()
    tx_a = pair.transmitter(site_a).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "site A's writer (200 ops)")
    assert w.popen.returncode == 0, w.output()[-3000:]
    converge(pair, site_a, timeout=30)
    refused = dr_tool(pair.rx_config, "promote", vol)
    assert refused.returncode == 1 and "the receiver is running" in refused.stderr, refused

    # 2. The disaster: B stops hearing from A, A writes on, then A dies (kill -9).
    rx_b.stop()
    w = pair.writer(site_a, 100_000, pause=0.002, seed=2).start()
    wait_for(lambda: len(read_log(site_a.log)) >= 215, 30, "site A's un-shipped writes")
    w.kill9()
    tx_a.kill9()
    replica_mirror = pair.replica_dir(site_a.uuid) / "mirror"
    assert read(site_a.mirror) != read(replica_mirror), "A holds nothing B lacks"

    # 3. Failover: promote B's replica (the receiver is stopped).
    done = dr_tool(pair.rx_config, "promote", vol)
    assert done.returncode == 0, done.stderr
    promoted = json.loads(done.stdout)
    assert promoted["former_primary"] == "site-a" and promoted["generation"] == 2, promoted
    assert f"mirror={replica_mirror}" in done.stderr and "generation = 2" in done.stderr
    image_b = read(replica_mirror)
    assert match_prefix(image_b, read_log(site_a.log)).ops_in_prefix == 200
    state = json.loads(dr_tool(pair.rx_config, "state").stdout)[0]
    assert state["state"] == "promoted" and state["promoted"]["at_seq"] == \
        promoted["promoted_at_seq"], state

    # 4. The fence: A's old transmitter comes back and is refused; B's image is untouched.
    rx_b.start()
    pair.wait_rx_up(rx_b)
    tx_a.start()
    st = wait_for(lambda: (s := status(site_a.control))["link"]["state"] == "refused:promoted"
                  and s, 20, "site A's old transmitter to be refused as fenced")
    assert "fenced off: the peer promoted its replica" in st["link"]["last_error"], st["link"]
    assert st["records_sent"] == 0, st
    wait_for(lambda: "promoted: volume" in rx_b.output(), 10, "the receiver's refusal line")
    assert f"primary 'site-a', volume {vol}: promoted: volume {vol} was promoted" \
        in rx_b.output()
    rx_vol = pair.rx_status()["volumes"][vol]
    assert rx_vol["state"] == "promoted" and pair.rx_status()["refusals"] >= 1, rx_vol
    tx_a.stop()
    assert read(replica_mirror) == image_b, "the fenced primary changed the promoted image"

    # 5. B is the primary now: its mirror with a new journal, writes go on.
    port_a = free_port()
    site_b = new_primary(pair, "site-b", site_a, replica_mirror, promoted["generation"],
                         port_a, "dr-site", "site-a")
    w_b = pair.writer(site_b, 20, seed=3, linger=True).start()
    wait_for(lambda: len(read_log(site_b.log)) >= 20, 30, "the new primary's first writes")

    # 6. Failback: A's old mirror is the replica mirror of a receiver on A.
    rx_a_config, rx_a_control = write_failback_receiver(pair, site_a, port_a)
    rx_a = start_failback_receiver(pair, rx_a_config, rx_a_control)
    tx_b = pair.transmitter(site_b).start()

    try:
        r = wait_for(lambda: resync_done(site_b.control, rx_a_control, vol), 60,
                     "the failback resync to complete on site A")
        wait_for(lambda: read(site_a.mirror) == read(replica_mirror), 20,
                 "site A's mirror to equal the new primary's")
    except AssertionError:
        print(pair.logs())
        raise
    w_b.stop()
    assert w_b.popen.returncode == 0, w_b.output()[-3000:]
    tx_b.stop()

    final = read(replica_mirror)
    assert final == overlay(image_b, read_log(site_b.log)), "the new primary lost writes"
    assert read(site_a.mirror) == final
    volume = BLOCKS * BLOCK
    print(f"failback resync: {r}")
    assert r["total_bytes"] == volume, r             # every chunk was considered ...
    assert r["skipped_bytes"] > 0 and r["done_bytes"] < volume // 2, r   # ... few shipped
    assert not (pair.root / "site-a-replicas" / vol / "undo.log").exists()

    # 7. Swap back (planned): promote A's replica, demote B's, A serves with a new journal.
    rx_a.stop()
    back = dr_tool(rx_a_config, "promote", vol)
    assert back.returncode == 0, back.stderr
    back = json.loads(back.stdout)
    assert (back["generation"], back["former_primary"]) == (3, "dr-site"), back
    rx_b.stop()
    demoted = dr_tool(pair.rx_config, "demote", vol)
    assert demoted.returncode == 0, demoted.stderr
    assert json.loads(demoted.stdout)["demoted_keeping_generation"] == promoted["generation"]
    rx_b.start()
    pair.wait_rx_up(rx_b)
    # The transmitter of the first epoch stays fenced off: now by its generation.
    tx_a.start()
    wait_for(lambda: status(site_a.control)["link"]["state"] == "refused:stale-generation",
             20, "the first epoch's transmitter to be refused as stale")
    tx_a.stop()
    assert read(replica_mirror) == final
    site_a2 = new_primary(pair, "site-a2", site_a, site_a.mirror, promoted["generation"] + 1,
                          pair.port, "site-a", "dr-site")
    w_a2 = pair.writer(site_a2, 20, seed=4, linger=True).start()
    wait_for(lambda: len(read_log(site_a2.log)) >= 20, 30, "site A's writes as primary again")
    pair.transmitter(site_a2).start()
    try:
        r2 = wait_for(lambda: resync_done(site_a2.control, pair.rx_control, vol), 60,
                      "the swap-back resync to complete on site B")
        wait_for(lambda: read(replica_mirror) == read(site_a.mirror), 20,
                 "site B's mirror to equal site A's again")
    except AssertionError:
        print(pair.logs())
        raise
    w_a2.stop()
    assert read(site_a.mirror) == overlay(final, read_log(site_a2.log))
    assert read(replica_mirror) == read(site_a.mirror)
    print(f"swap-back resync: {r2}")
    assert r2["skipped_bytes"] > 0 and r2["done_bytes"] < volume // 2, r2
