"""A consistency group made by the shell's operations (docs/shell.md, "Consistency groups"),
with the real transmitter and receivers: site A's '/replication/groups create' writes the
group's layout and transmitter file and starts the transmitter, which waits for the group's
journal; two members join the layout as the handler adds them; their writes go through the
group's one Volume (the handler's engine, in a writer process: its journal, the layout as its
mirror); the DR receives the group into a replica whose mirror is its own layout of the same
members, and each member's image there converges to the primary's byte for byte. The status
A's admin reads shows the group in sync at the journal's last seq, with its members; the group
is not listed as a volume; 'delete' is refused while it has members.

What systemd does is done by ``ProcessUnits`` (test_repl_shell_chain.py). The handler daemon
itself is not run here (no TCMU rings on the host tier): tests/integration/tcmu/
test_handler_groups.py runs it over simulated rings."""

from __future__ import annotations

import dataclasses
import shutil
import stat
import subprocess
import tempfile
import types
from pathlib import Path

import pytest
from repl_harness import PY, free_port, read_log, status, wait_for
from test_repl_shell_chain import ProcessUnits, pair, start_receiver

from appliance.volume import group_layout
from targetcli_ext import daemons
from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.group_status import group_text
from targetcli_ext.model import ModelError
from targetcli_ext.operations import Notes
from targetcli_ext.units import transmitter_unit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MEMBERS = {"log": 256, "data": 512}          # blocks of 512 bytes: 128 KiB and 256 KiB

# The host writes of the group's members, through the group's one Volume as the handler opens
# it (appliance/tcmu/groups.py): uuid, chunk and journal size from the layout.
WRITER = """
import sys
from pathlib import Path
from appliance.journal import OpKind, WriteOp
from appliance.volume import Volume, VolumeConfig, group_layout
path, journal, bitmap, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
lay = group_layout.load(path)
vol = Volume.open(VolumeConfig(
    uuid=lay.uuid, num_blocks=lay.num_blocks, block_size=lay.block_size,
    journal_size=lay.journal_size, chunk_size=lay.align_blocks * lay.block_size,
    max_transfer_bytes=64 * 1024, mirror_path=path, journal_path=journal,
    bitmap_path=bitmap))
try:
    for r in range(rounds):
        for m in lay.members:
            for i in range(0, m.num_blocks, 8):
                data = b"".join(f"{m.name}:{r}:{i + k}".encode().ljust(512, b".")
                                for k in range(8))
                vol.submit([WriteOp(OpKind.WRITE, m.offset_blocks + i, 8, data)])
        vol.flush()
finally:
    vol.close()
"""


def group_site(root: Path, name: str) -> ReplicationContext:
    """A site whose shell asks the running daemons for their status (as targetcli does)."""
    base = root / name
    (base / "run").mkdir(parents=True)
    cfg = ShellConfig(state_dir=base / "state", replicas_dir=base / "replicas",
                      groups_dir=base / "groups",
                      sockets=DaemonSockets(base / "handler.sock", base / "run"),
                      fetch_timeout_s=5.0)
    ctx = ReplicationContext(cfg, collect=lambda: daemons.collect(cfg.sockets, timeout=3.0),
                             units=ProcessUnits(cfg.layout, base),
                             storage_objects=lambda: [], ttl_s=0.0)
    with ctx.store.locked():
        ctx.store.save(dataclasses.replace(ctx.store.load(), identity=name,
                                           listen=f"127.0.0.1:{free_port()}"))
    return ctx


def join(path: Path, images: Path) -> group_layout.GroupLayout:
    """The members join the layout, as the handler appends them (offsets on chunks)."""
    layout = group_layout.load(path)
    for name, blocks in MEMBERS.items():
        layout = layout.with_member(name, str(images / f"{name}.img"), blocks)
    group_layout.save(path, layout)
    return layout


def files(*dirs: Path) -> dict:
    return {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for d in dirs for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".site.lock"}


@pytest.fixture
def sites():
    root = Path(tempfile.mkdtemp(prefix="grp", dir="/tmp"))   # short socket paths
    a, b = group_site(root, "site-a"), group_site(root, "site-b")
    try:
        for ctx in (a, b):
            start_receiver(ctx)
        pair(a, b)
        pair(b, a)
        yield types.SimpleNamespace(a=a, b=b, root=root)
    finally:
        for ctx in (a, b):
            ctx.units.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def test_a_group_made_by_the_shell_replicates_its_members_to_the_dr(sites):
    a, b, root = sites.a, sites.b, sites.root
    notes = Notes()
    group = a.create_group("db", "site-b", "16M", "512", notes)
    unit = transmitter_unit("db")
    tx_sock = a.layout.transmitter_socket("db")
    # Before any member: the transmitter runs and waits for the group's journal.
    assert a.units.is_active(unit), read_log(a.units.procs[unit].log)
    before = wait_for(lambda: status(tx_sock), 30, "the group's transmitter to answer")
    assert before["volume_uuid"] == group.uuid and before["name"] == "db"
    assert not a.layout.group_journal("db").exists()
    assert a.units.is_active(unit), read_log(a.units.procs[unit].log)

    images = root / "a-images"
    images.mkdir()
    layout = join(a.layout.group_layout("db"), images)
    assert [(m.name, m.offset_blocks) for m in layout.members] == [("log", 0), ("data", 256)]

    # The DR: the group's replica on the admin's layout of the same members (same offsets).
    dr_images = root / "b-images"
    dr_images.mkdir()
    dr_layout = root / "b-groups" / "db.group.json"
    dr_layout.parent.mkdir()
    group_layout.save(dr_layout, dataclasses.replace(layout, members=tuple(
        dataclasses.replace(m, mirror=str(dr_images / f"{m.name}.img"))
        for m in layout.members)))
    b.add_replica("db", group.uuid, str(dr_layout), layout.num_blocks * 512, 512, Notes())

    done = subprocess.run([PY, "-c", WRITER, str(a.layout.group_layout("db")),
                           str(a.layout.group_journal("db")), str(a.layout.group_bitmap("db")),
                           "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    def converged() -> bool:
        return all((dr_images / f"{n}.img").exists()
                   and (dr_images / f"{n}.img").read_bytes()[:blocks * 512]
                   == (images / f"{n}.img").read_bytes()[:blocks * 512]
                   for n, blocks in MEMBERS.items())

    try:
        wait_for(converged, 90, "the DR's members to equal the primary's")
        st = wait_for(lambda: (lambda s: s if s.get("in_sync") else None)(status(tx_sock)),
                      30, "the group's transmitter to say in sync")
    except AssertionError:
        print(read_log(a.units.procs[unit].log))
        raise
    assert (images / "log.img").read_bytes()[:16] == b"log:2:0.........", "the writes landed"
    records = st["acked_seq"]
    assert records == 3 * sum(blocks // 8 for blocks in MEMBERS.values())

    # What A's admin reads.
    a.snapshot(fresh=True)
    lines = group_text(a, a.store.load().groups["db"]).splitlines()
    peer = b.store.load().listen
    assert lines[0] == f"group db role:primary peer:site-b ({peer})"
    assert lines[1].startswith("  link:connected replication:replicating") \
        and lines[1].endswith(" in-sync"), lines
    assert lines[2:] == [
        f"    consistent point: seq {records}: the DR holds every member as of the same, "
        f"newest write",
        "    members: 2, 512-byte blocks",
        "      log    128.0 KiB  at block 0",
        "      data   256.0 KiB  at block 256"]
    assert [v.name for v in a.views() if v.kind == "group"] == ["db"]

    # An empty group only: refused with every file as it was, the transmitter still running.
    before = files(a.layout.state_dir, a.layout.groups_dir)
    with pytest.raises(ModelError, match=r"group db has members \(log, data\)"):
        a.delete_group("db", Notes())
    assert files(a.layout.state_dir, a.layout.groups_dir) == before
    assert a.units.is_active(unit)
