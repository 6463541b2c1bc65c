"""Failover and failback, role swap: site A (primary) replicates to site B (DR); A is lost
with writes B never got; B is promoted and fences A off; B serves the promoted mirror as the
new primary; A's old mirror becomes B's DR replica and is re-synced by hash, shipping only the
chunks that differ, until it equals B byte for byte."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Site
from repl_harness import (
    BLOCK,
    PY,
    REPO,
    LoggedOp,
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
    return subprocess.run([PY, "-m", "appliance.replication.dr_tool", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def overlay(image: bytes, ops: list[LoggedOp]) -> bytes:
    img = bytearray(image)
    for op in ops:
        img[op.lba * BLOCK:(op.lba + op.nblocks) * BLOCK] = op.image_bytes()
    return bytes(img)


def write_failback_receiver(pair, site_a: Site, port: int) -> tuple[Path, Path]:
    """Site A's receiver: its OLD primary mirror is the replica mirror of the volume, the
    promoted site ('dr-site') the only primary it admits. Returns (config, control socket)."""
    control = pair.root / "rx-a.sock"
    config = pair.root / "rx-a.toml"
    config.write_text("\n".join([
        'identity = "site-a"', f'listen = "127.0.0.1:{port}"',
        f'state_dir = "{pair.root / "site-a-replicas"}"', f'control_socket = "{control}"',
        "heartbeat_s = 0.5", "dead_after_s = 3.0"]) + "\n" + pair.pki.tls_toml("site-a") +
        "\n".join(["[[volume]]", f'uuid = "{site_a.uuid}"', f"size_bytes = {BLOCKS * BLOCK}",
                   f"block_size = {BLOCK}", f"journal_size = {4 << 20}",
                   f'mirror = "{site_a.mirror}"', 'allowed_primaries = ["dr-site"]']) + "\n")
    return config, control


def new_primary_on_b(pair, site_a: Site, promoted_mirror: Path, generation: int,
                     peer_port: int) -> Site:
    """Site B's primary: the promoted mirror (what the user:mirror cfgstring names, here a
    link) with a NEW journal and bitmap, and a transmitter to site A's receiver."""
    d = pair.root / "site-b-primary"
    d.mkdir()
    (d / "mirror").symlink_to(promoted_mirror)
    control = pair.root / "tx-site-b.sock"
    config = pair.root / "tx-site-b.toml"
    config.write_text("\n".join([
        'identity = "dr-site"', f'peer = "127.0.0.1:{peer_port}"', 'peer_identity = "site-a"',
        f'journal = "{d / "journal"}"', f'volume_uuid = "{site_a.uuid}"',
        f"size_bytes = {BLOCKS * BLOCK}", f"block_size = {BLOCK}", f"generation = {generation}",
        f'control_socket = "{control}"', "compression = true", "heartbeat_s = 0.5",
        "dead_after_s = 3.0", "backoff_max_s = 1.0", f'mirror = "{d / "mirror"}"',
        f'bitmap = "{d / "bitmap"}"', "resync_skip_matching = true",
        f"resync_region_bytes = {REGION}"]) + "\n" + pair.pki.tls_toml("dr-site"))
    return Site("site-b", site_a.uuid, BLOCKS, d, config, control, pair.root / "writelog-site-b")


def test_failover_fences_the_old_primary_and_failback_resyncs_only_what_differs(pair):
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
    site_b = new_primary_on_b(pair, site_a, replica_mirror, promoted["generation"], port_a)
    w_b = pair.writer(site_b, 20, seed=3, linger=True).start()
    wait_for(lambda: len(read_log(site_b.log)) >= 20, 30, "the new primary's first writes")

    # 6. Failback: A's old mirror is the replica mirror of a receiver on A.
    rx_a_config, rx_a_control = write_failback_receiver(pair, site_a, port_a)
    rx_a = module_proc("receiver-site-a", "appliance.replication.receiver", rx_a_config,
                       pair.root)
    pair.procs.append(rx_a)
    rx_a.start()
    wait_for(lambda: rx_a.running() and status(rx_a_control), 20, "site A's receiver")
    tx_b = pair.transmitter(site_b).start()

    def resynced():
        r = status(site_b.control)["resync"]
        v = status(rx_a_control)["volumes"][vol]
        return (r["completed"] >= 1 and r["state"] == "idle" and v["state"] == "consistent"
                and v["applied_seq"] == v["durable_seq"] and r)
    try:
        r = wait_for(resynced, 60, "the failback resync to complete on site A")
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
