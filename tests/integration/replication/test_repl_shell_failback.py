"""Failback driven by the shell's operations, with the real daemons (docs/shell.md,
"Failback"): site A replicates disk0 to site B through '/replication/volumes create'; B stops
hearing from A, A writes on and is lost; B promotes its replica ('promote', over the
receiver's socket as the shell calls it) and serves the promoted mirror with a NEW journal
(a new volume uuid: its mirror path differs). A comes back: its backstore deleted, the
shell's failback turns disk0 into B's replica over A's OLD mirror (receiver.toml with
failback_journal, the transmitter retired), B replicates back with '/replication/volumes
create', and only A's own writes and B's changes are copied until A's mirror equals B's.
The status text A's admin reads says so. A split brain is refused until 'resolve'.

What systemd does is done by ``ProcessUnits`` (test_repl_shell_chain.py): each unit the shell
starts runs the daemon its unit file runs, with the file the shell generated."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import tomllib
import types
from pathlib import Path

import pytest
from repl_harness import PY, Proc, read_log, status, wait_for
from test_repl_shell_chain import BLOCKS, HERE, pair, site, start_receiver

from appliance.control.client import call
from appliance.volume.identity import mirror_volume_uuid
from targetcli_ext.context import ReplicationContext
from targetcli_ext.model import ModelError
from targetcli_ext.operations import Notes
from targetcli_ext.units import RECEIVER_UNIT, transmitter_unit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHIPPED, UNSHIPPED, B_WRITES = 150, 12, 20
CHUNK = 64 * 1024


def writer(vol_dir: Path, vol_uuid, log: Path, ops: int, seed: int,
           linger: bool = False) -> Proc:
    argv = [PY, str(HERE / "repl_writer.py"), "--volume-dir", str(vol_dir), "--uuid",
            str(vol_uuid), "--blocks", str(BLOCKS), "--log", str(log), "--ops", str(ops),
            "--seed", str(seed)] + (["--linger"] if linger else [])
    return Proc(f"writer-{vol_dir.name}", argv, log.with_name(f"writer-{vol_dir.name}.log"))


def write(vol_dir: Path, vol_uuid, log: Path, ops: int, seed: int) -> None:
    done = subprocess.run(writer(vol_dir, vol_uuid, log, ops, seed).argv, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def backstore(name: str, vol_dir: Path, mirror: Path | None = None):
    """A user:mirror storage object as rtslib shows it."""
    return types.SimpleNamespace(
        name=name, plugin="user", size=BLOCKS * 512,
        config=f"mirror/mirror={mirror or vol_dir / 'mirror'};journal={vol_dir}/journal;"
               f"bitmap={vol_dir}/bitmap")


@pytest.fixture
def failover(tmp_path):
    """A replicated disk0 to B, A's UNSHIPPED writes never reached B, B promoted and serving
    the promoted mirror with a new journal (a lingering writer with B_WRITES writes)."""
    short = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))    # cfgstrings: 255 bytes
    a_dir, b_dir = short / "a", short / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_objects = [backstore("disk0", a_dir)]
    b_objects: list = []
    a, b = site(tmp_path, "site-a", a_objects), site(tmp_path, "site-b", b_objects)
    procs: list[Proc] = []
    try:
        for ctx in (a, b):
            start_receiver(ctx)
        pair(b, a)
        pair(a, b)
        old_uuid = mirror_volume_uuid(str(a_dir / "mirror"))
        a_log = tmp_path / "a-ops.log"
        write(a_dir, old_uuid, a_log, SHIPPED, seed=1)
        a.create_volume("disk0", "site-b", Notes())
        replica = b.config.replicas_dir / str(old_uuid) / "mirror"
        wait_for(lambda: replica.exists() and status(a.layout.transmitter_socket("disk0"))
                 .get("in_sync") and replica.read_bytes() == (a_dir / "mirror").read_bytes(),
                 90, "B's replica to equal A's mirror")
        # B stops hearing from A; A writes on, then is lost (its transmitter gone with it).
        b.units.stop(RECEIVER_UNIT)
        write(a_dir, old_uuid, a_log, SHIPPED + UNSHIPPED, seed=2)
        a.units.stop(transmitter_unit("disk0"))
        b.units.start(RECEIVER_UNIT)
        wait_for(lambda: status(b.layout.receiver_socket), 30, "B's receiver again")
        promoted = call(b.layout.receiver_socket, "promote", {"volume": str(old_uuid)},
                        timeout=60)
        assert promoted["promoted_at_seq"] == SHIPPED, promoted
        # B serves the promoted mirror with a NEW journal (the cfgstring names the mirror;
        # here a link to it): its volume uuid is that path's.
        (b_dir / "mirror").symlink_to(promoted["mirror"])
        new_uuid = mirror_volume_uuid(str(b_dir / "mirror"))
        assert new_uuid != old_uuid
        b_log = tmp_path / "b-ops.log"
        w_b = writer(b_dir, new_uuid, b_log, B_WRITES, seed=4, linger=True).start()
        procs.append(w_b)
        wait_for(lambda: len(read_log(b_log)) >= B_WRITES, 30, "the new primary's writes")
        b_objects.append(backstore("disk0", b_dir))
        yield types.SimpleNamespace(a=a, b=b, a_dir=a_dir, b_dir=b_dir, a_objects=a_objects,
                                    old_uuid=old_uuid, new_uuid=new_uuid, a_log=a_log,
                                    b_log=b_log, replica=replica, procs=procs)
    finally:
        for p in procs:
            p.stop()
        for ctx in (a, b):
            ctx.units.stop_all()
        shutil.rmtree(short, ignore_errors=True)


def a_status_text(f) -> str:
    """'/replication status' on A: a context as the shell makes one, asking A's daemons."""
    return ReplicationContext(f.a.config).render()


def a_replica(f) -> dict:
    return status(f.a.layout.receiver_socket)["volumes"].get(str(f.new_uuid)) or {}


def fail_back(f) -> Notes:
    notes = Notes()
    f.a.failback_volume("disk0", str(f.new_uuid), notes)
    return notes


def test_the_shell_fails_back_onto_the_old_mirror_copying_only_what_changed(failover):
    f = failover
    with pytest.raises(ModelError, match="Delete /backstores/user:mirror/disk0 first"):
        fail_back(f)
    assert f.a.layout.transmitter_toml("disk0").exists()

    f.a_objects.clear()                 # 'delete disk0' in /backstores/user:mirror on A
    fail_back(f)
    doc = tomllib.loads(f.a.layout.receiver_toml.read_text())
    assert doc["volume"] == [{"uuid": str(f.new_uuid), "size_bytes": BLOCKS * 512,
                              "block_size": 512, "mirror": str(f.a_dir / "mirror"),
                              "allowed_primaries": ["site-b"],
                              "failback_journal": str(f.a_dir / "journal")}]
    assert not f.a.layout.transmitter_toml("disk0").exists()
    assert not f.a.units.is_active(transmitter_unit("disk0"))
    wait_for(lambda: a_replica(f), 20, "A's receiver to take the replica")
    assert a_replica(f)["failback"] is None         # nothing found before B's first contact

    image_a = (f.a_dir / "mirror").read_bytes()
    f.b.create_volume("disk0", "site-a", Notes())
    tx_b = f.b.layout.transmitter_socket("disk0")
    try:
        wait_for(lambda: (r := a_replica(f)).get("state") == "consistent"
                 and r.get("in_sync") and (f.a_dir / "mirror").read_bytes()
                 == f.replica.read_bytes(), 90, "A's old mirror to equal B's")
    except AssertionError:
        for ctx in (f.a, f.b):
            for p in ctx.units.procs.values():
                print(p.output()[-4000:])
        raise
    found = a_replica(f)["failback"]
    # The writer's restart submits its last op again (idempotent), so A's journal holds one
    # record more beyond the base than the new ops.
    assert found["state"] == "done" and found["records"] in (UNSHIPPED, UNSHIPPED + 1), found
    # A's writes B never had are in the lost-write report, with their data.
    lost = json.loads(Path(found["lost_writes"]).with_suffix(".json").read_text())
    assert [w["seq"] for w in lost["writes"]] == \
        list(range(SHIPPED + 1, SHIPPED + 1 + found["records"]))
    assert {(op.lba, op.nblocks) for op in read_log(f.a_log)[SHIPPED:]} <= \
        {(w["lba"], w["blocks"]) for w in lost["writes"]}
    # Only the chunks of A's own writes were marked for the copy back (B's writes went as
    # records): far less than the volume.
    chunks = {c for w in lost["writes"]
              for c in range(w["lba"] * 512 // CHUNK, ((w["lba"] + w["blocks"]) * 512 - 1)
                             // CHUNK + 1)}
    resync = status(tx_b)["resync"]
    assert resync["failback_marked_bytes"] == len(chunks) * CHUNK, (resync, len(chunks))
    assert len(chunks) * CHUNK < BLOCKS * 512 // 2
    assert image_a != f.replica.read_bytes()        # A's own writes were really overwritten
    text = a_status_text(f)
    assert "disk0 role:dr primary:site-b" in text
    assert (f"    failback: copied: this site's old mirror holds the promoted image (seq "
            f"{SHIPPED}) plus {found['extents']} extents") in text
    assert f"    lost writes: this site's writes site-b never had, with their data: " \
           f"{found['lost_writes']}" in text


def test_a_split_brain_waits_for_resolve_in_the_shell(failover):
    f = failover
    write(f.a_dir, f.old_uuid, f.a_log, SHIPPED + UNSHIPPED + 5, seed=3)   # after promotion
    f.a_objects.clear()
    fail_back(f)
    image_a = (f.a_dir / "mirror").read_bytes()
    f.b.create_volume("disk0", "site-a", Notes())
    found = wait_for(lambda: ((r := a_replica(f)).get("failback") or {}).get("state")
                     == "split-brain" and r["failback"], 30, "A to find the split brain")
    assert found["written_after_promotion"] in (5, 6), found    # (+1: the restart's resubmit)
    text = a_status_text(f)
    # Before B's first admitted contact the receiver knows no name: the shell names it as
    # site.json does, so the advice names the node the admin can go to.
    assert text.startswith("disk0 role:dr\n"), text
    assert "replica:consistent (failback: split brain)" in text
    assert "'resolve keep=new-primary'" in text and "/replication/replicas/disk0:" in text
    assert f"    report: both change sets: {found['report']}" in text
    assert "'resolve keep=new-primary'" in text
    assert (f.a_dir / "mirror").read_bytes() == image_a     # nothing copied
    tx = status(f.b.layout.transmitter_socket("disk0"))
    assert tx["link"]["state"] == "refused:split-brain", tx["link"]
    # What UIReplica.resolve sends, through the shell's control-socket caller.
    f.a.call(f.a.layout.receiver_socket, "resolve", volume=str(f.new_uuid),
             keep="new-primary")
    wait_for(lambda: (r := a_replica(f)).get("state") == "consistent"
             and r.get("in_sync") and (f.a_dir / "mirror").read_bytes()
             == f.replica.read_bytes(), 90, "the copy once the admin chose the new primary")
