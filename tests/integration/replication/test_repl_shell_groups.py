"""A consistency group made by the shell's operations (docs/shell.md, "Consistency groups"),
with the real transmitter and receivers: site A's '/replication/groups create' writes the
group's layout and transmitter file and starts the transmitter, which waits for the group's
journal; two members join the layout as the handler adds them; their writes go through the
group's one Volume (the handler's engine, in a writer process: its journal, the layout as its
mirror); the DR receives the group into a replica whose mirror is its own layout of the same
members, and each member's image there converges to the primary's byte for byte. The status
A's admin reads shows the group in sync at the journal's last seq, with its members; the group
is not listed as a volume; 'delete' is refused while it has members.

Then the shell steers a group the real handler serves (its daemon over simulated TCMU rings,
tests/integration/tcmu/group_handler.py): the status shows its members and the group's mode; 'set sync' as the shell sends it (the group's uuid as "volume") is taken;
'remove member=' is refused by the shell while LIO has the member's backstore and relays the
handler's refusal while its device is open, then retires the member; 'delete' once no member
is left.

What systemd does is done by ``ProcessUnits`` (test_repl_shell_chain.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import stat
import subprocess
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tcmu"))
from group_handler import Site as HandlerSite  # tests/integration/tcmu
from group_handler import site as handler_site
from group_handler import write10

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


def group_site(root: Path, name: str, objects: list | None = None) -> ReplicationContext:
    """A site whose shell asks the running daemons for their status (as targetcli does);
    ``objects``: LIO's storage objects as rtslib shows them (the test changes the list)."""
    objects = objects if objects is not None else []
    base = root / name
    (base / "run").mkdir(parents=True)
    cfg = ShellConfig(state_dir=base / "state", replicas_dir=base / "replicas",
                      groups_dir=base / "groups",
                      sockets=DaemonSockets(base / "handler.sock", base / "run"),
                      fetch_timeout_s=5.0)
    ctx = ReplicationContext(cfg, collect=lambda: daemons.collect(cfg.sockets, timeout=3.0),
                             units=ProcessUnits(cfg.layout, base),
                             storage_objects=lambda: list(objects), ttl_s=0.0)
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
    lio: list = []
    a, b = group_site(root, "site-a", lio), group_site(root, "site-b")
    try:
        for ctx in (a, b):
            start_receiver(ctx)
        pair(a, b)
        pair(b, a)
        yield types.SimpleNamespace(a=a, b=b, root=root, lio=lio)
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
    assert lines[2].startswith("    encryption: user space, TLSv1.3 TLS_"), lines
    assert lines[3:] == [
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


def member_object(name: str, mirror: Path, blocks: int) -> types.SimpleNamespace:
    """A member's user:mirror storage object as rtslib shows it."""
    return types.SimpleNamespace(name=name, plugin="user", size=blocks * 512,
                                 config=f"mirror/mirror={mirror};group=db")


def test_the_shell_steers_a_group_the_real_handler_serves(sites, tmp_path):
    a = sites.a
    group = a.create_group("db", "site-b", "16M", "512", Notes())
    hs = handler_site(tmp_path)             # the handler's directories; its groups_dir is A's
    hs = HandlerSite(hs.tmp, dataclasses.replace(
        hs.config, groups_dir=a.layout.groups_dir, control_socket=a.config.sockets.handler))
    images = sites.root / "a-images"
    images.mkdir()
    devs = {}
    for minor, (name, blocks) in enumerate(MEMBERS.items(), start=3):
        obj = member_object(name, images / f"{name}.img", blocks)
        sites.lio.append(obj)
        devs[name] = hs.device(minor, name, obj.config, blocks * 512)
    layout_path = a.layout.group_layout("db")
    handler_sock = a.config.sockets.handler

    def shell(fn, *args):
        return asyncio.to_thread(fn, *args)

    async def body(daemon) -> None:
        members = group_layout.load(layout_path).members
        assert [(m.name, m.offset_blocks) for m in members] == [("log", 0), ("data", 256)]
        for dev in devs.values():
            assert (await shell(dev.run, write10(0, 8), b"x" * 4096)).status == 0

        # The status: the group's members from the layout, both members
        # shown as members (not unreplicated volumes), the group not a volume.
        a.snapshot(fresh=True)
        views = {v.name: v for v in await shell(a.views, True)}
        assert views["log"].replication == views["data"].replication == "member of group db"
        assert views["db"].kind == "group", views["db"]
        text = await shell(group_text, a, a.store.load().groups["db"])
        assert "      log    128.0 KiB  at block 0" in text.splitlines(), text

        # 'set sync' as the shell sends it: the group's uuid as the volume.
        done = await shell(lambda: a.call(handler_sock, "set-sync", volume=group.uuid,
                                          mode="sync-on-flush", fallback_s=0.5, hold=False))
        assert done["changed"] is True and done["sync"]["mode"] == "sync-on-flush", done
        a.snapshot(fresh=True)
        db = next(v for v in await shell(a.views, True) if v.name == "db")
        assert db.mode is not None and db.mode.startswith(("sync-on-flush", "sync-degraded")), db
        await shell(lambda: a.call(handler_sock, "set-sync", volume=group.uuid, mode="async",
                                   fallback_s=0.5, hold=False))

        # remove member: refused while LIO has its backstore (the handler is not asked) ...
        before = layout_path.read_bytes()
        with pytest.raises(ModelError, match=r"member=log: backstore user:mirror/log still "
                                             r"serves it in group db: delete "
                                             r"/backstores/user:mirror/log first"):
            await shell(a.remove_member, "db", "log", Notes())
        # ... and, with the backstore gone from LIO but its device still open, the handler's
        # own refusal is what the admin reads.
        sites.lio.remove(next(o for o in sites.lio if o.name == "log"))
        with pytest.raises(ModelError, match=r"leave-group refused by the handler: .*member "
                                             r"'log' of group 'db' is served"):
            await shell(a.remove_member, "db", "log", Notes())
        assert layout_path.read_bytes() == before
        assert await shell(daemon.manager.remove, devs["log"].minor) == 0  # LIO closed it
        await shell(a.remove_member, "db", "log", Notes())
        assert group_layout.load(layout_path).member("log").retired
        text = await shell(group_text, a, a.store.load().groups["db"])
        assert "      log    128.0 KiB  at block 0 (left the group)" in text.splitlines(), text
        with pytest.raises(ModelError, match=r"group db has members \(data\)"):
            await shell(a.delete_group, "db", Notes())

        sites.lio.clear()
        assert await shell(daemon.manager.remove, devs["data"].minor) == 0
        await shell(a.remove_member, "db", "data", Notes())
        notes = Notes()
        await shell(a.delete_group, "db", notes)
        assert not layout_path.exists() and a.store.load().groups == {}
        assert not a.layout.transmitter_toml("db").exists()
        assert not a.units.is_active(transmitter_unit("db"))
        assert any(f"{a.layout.group_journal('db')}" in text for _, text in notes.lines)

    try:
        hs.run(body)
    finally:
        hs.close()
