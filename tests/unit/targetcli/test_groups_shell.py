"""/replication/groups (docs/shell.md, "Consistency groups"; docs/groups.md, "From the
shell"): 'create' writes the group's layout (a new uuid, no members, one bitmap chunk of
alignment), its transmitter's file as a volume's over the group journal and site.json, and
starts appliance-transmitter@<group>; bad input is refused naming the key with every file
unchanged byte for byte; the status shows the transmitter's state, the consistent point, a
joining member's initial copy and the members; a member is not also a volume; 'remove
member=' calls the handler's leave-group only once the member's backstore is gone; 'delete'
only an empty group; 'set sync' takes the group's uuid."""

from __future__ import annotations

import copy
import os
import ssl
import stat
import tomllib
import uuid

import pytest
from recorded_states import recorded
from shell_fakes import FakeStorageObject, mirror_backstore, refused

from appliance.replication.config import receiver_config, transmitter_config
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout
from appliance.volume.promotion_base import PromotionBase, marker_path, read_marker, write_marker
from targetcli_ext import restore
from targetcli_ext.backstores import backstores_using
from targetcli_ext.daemon_config import HEADER
from targetcli_ext.identity import ensure_certificate
from targetcli_ext.operations import Notes
from targetcli_ext.replica_nodes import promote_text

TX_UNIT = "appliance-transmitter@db.service"


@pytest.fixture(scope="module")
def peer_cert(tmp_path_factory):
    """The DR site's certificate (identity 'site-b'; made once: openssl is slow)."""
    return ensure_certificate(tmp_path_factory.mktemp("site-b"), "site-b")


def files(*dirs) -> dict:
    """Every file under ``dirs``: its bytes and mode (the byte-for-byte 'nothing changed')."""
    return {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for d in dirs if d.exists()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".site.lock"}


@pytest.fixture
def site(make_shell, peer_cert):
    """The primary, paired with peer dr (its certificate pinned)."""
    der = ssl.PEM_cert_to_DER_cert(peer_cert.cert.read_text())
    sh = make_shell(fetch=lambda address, timeout: der)
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 "
           f"fingerprint={peer_cert.fingerprint}")
    sh.groups_dir = sh.ctx.config.groups_dir
    sh.units.log.clear()
    sh.calls.log.clear()
    return sh


@pytest.fixture
def with_group(site):
    site.run("/replication/groups create name=db peer=dr")
    site.units.log.clear()
    site.calls.log.clear()
    return site


def add_member(sh, lio, tmp_path, name: str, blocks: int, *, backstore: bool = True):
    """A member as the handler adds it: the layout gains it; its backstore names the
    group in its cfgstring."""
    path = sh.groups_dir / "db.group.json"
    mirror = f"{tmp_path}/volumes/{name}.img"
    group_layout.save(path, group_layout.load(path).with_member(name, mirror, blocks))
    if backstore:
        so = FakeStorageObject(name, plugin="user", udev_path="", size=blocks * 512,
                               config=f"mirror/mirror={mirror};group=db")
        lio.storage_objects.append(so)
        return so
    return None


def group_snapshot(sh, state: str) -> dict:
    """A recorded transmitter's status as the group's transmitter reports it."""
    snap = copy.deepcopy(recorded(state))
    tx = snap["transmitters"].pop("vol1")
    tx["volume_uuid"] = sh.ctx.store.load().groups["db"].uuid
    tx["name"] = "db"
    snap["transmitters"]["db"] = tx
    snap["handler"] = None
    sh.daemons.snapshot = snap
    return snap


# --- create --------------------------------------------------------------------------


def test_create_writes_the_layout_the_transmitter_file_and_site_json(site):
    out = site.run("/replication/groups create name=db peer=dr journal_size=1G")
    layout = group_layout.load(site.groups_dir / "db.group.json")
    assert (layout.name, layout.block_size, layout.align_blocks, layout.members) == \
        ("db", 512, 128, ())                      # one 64 KiB bitmap chunk of 512-byte blocks
    assert uuid.UUID(str(layout.uuid)).version == 4

    path = site.state_dir / "transmitter-db.toml"
    assert path.read_text().startswith(HEADER)
    doc = tomllib.loads(path.read_text())
    cfg = transmitter_config(doc, str(path))      # the transmitter takes it as it is
    assert cfg.journal == site.groups_dir / "db.jnl"
    assert cfg.volume_uuid == layout.uuid
    assert cfg.name == "db" and cfg.peer_name == "dr" and cfg.peer == ("192.0.2.2", 7700)
    assert cfg.mirror is None and cfg.bitmap is None     # the journal publishes the layout
    assert "mirror" not in doc and "bitmap" not in doc
    assert doc["control_socket"].endswith("/transmitter-db.sock")
    assert doc["peer_identity"] == "site-b"

    saved = site.ctx.store.load().groups["db"]
    assert (saved.peer, saved.uuid, saved.block_size, saved.journal_size) == \
        ("dr", str(layout.uuid), 512, 1 << 30)
    assert site.units.log == [("start", TX_UNIT)]
    assert f"Created consistency group db (uuid {layout.uuid}, 512-byte blocks, journal " \
           f"{site.groups_dir}/db.jnl of 1073741824 bytes), replicating to peer dr " \
           f"(192.0.2.2:7700); no members yet." in out
    assert "cfgstring=mirror=<path of its image>;group=db" in out
    assert "db" in {c.name for c in site.root.get_node("/replication/groups").children}
    # The group is not a volume.
    assert site.root.get_node("/replication/volumes").children == set()


def test_create_4096_byte_blocks_aligns_on_the_same_chunk(site):
    site.run("/replication/groups create name=db peer=dr block_size=4096")
    layout = group_layout.load(site.groups_dir / "db.group.json")
    assert (layout.block_size, layout.align_blocks) == (4096, 16)
    assert site.ctx.store.load().groups["db"].journal_size == 256 << 20


@pytest.mark.parametrize(("cmdline", "names"), [
    ("name=db peer=dr", "name=db: a consistency group of that name exists"),
    ("name=vol1 peer=dr", "name=vol1: a replicated volume has that name"),
    ("name=db2 peer=nowhere", "no peer named 'nowhere' (peers: dr): pair it first"),
    ("name=db2 peer=dr journal_size=12Q", "journal_size='12Q' is not a size"),
    ("name=db2 peer=dr journal_size=512K", "journal_size='512K' is out of range"),
    ("name=db2 peer=dr journal_size=1000001", "journal_size='1000001' is out of range"),
    ("name=db2 peer=dr block_size=1024", "block_size='1024': use 512 or 4096"),
    ("name=../x peer=dr", "name '../x' is not valid"),
])
def test_refusals_name_the_key_and_change_nothing(with_group, lio, tmp_path, cmdline, names):
    sh = with_group
    (tmp_path / "v").mkdir()
    mirror_backstore(lio, "vol1", tmp_path / "v")
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    sh.units.log.clear()
    before = files(sh.state_dir, sh.groups_dir)
    said = refused(sh, f"/replication/groups create {cmdline}")
    assert names in said and said.endswith("; nothing changed")
    assert files(sh.state_dir, sh.groups_dir) == before
    assert sh.units.log == []


def test_an_old_journal_of_the_name_is_refused(site):
    site.groups_dir.mkdir()
    (site.groups_dir / "db.jnl").write_bytes(b"old")
    before = files(site.state_dir, site.groups_dir)
    said = refused(site, "/replication/groups create name=db peer=dr")
    assert f"name=db: {site.groups_dir}/db.jnl exists" in said
    assert files(site.state_dir, site.groups_dir) == before


# --- members and volumes ---------------------------------------------------------------


def test_a_member_is_not_also_a_volume(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    before = files(sh.state_dir, sh.groups_dir)
    said = refused(sh, "/replication/volumes create backstore=log peer=dr")
    assert said.startswith("backstore 'log' is a member of consistency group db: the group "
                           "replicates it")
    assert files(sh.state_dir, sh.groups_dir) == before
    assert sh.units.log == []


def test_members_as_the_handler_reports_them_beside_the_groups_transmitter(with_group):
    """The handler reports each member under "volumes" with the group's name and uuid."""
    sh = with_group
    snap = group_snapshot(sh, "healthy")
    gid = sh.ctx.store.load().groups["db"].uuid
    snap["handler"] = {"role": "handler",
                       "volumes": {n: {"uuid": gid, "group": "db", "member": n}
                                   for n in ("log", "data")},
                       "groups": {"db": {"uuid": gid, "journal": {"percent": 7.0},
                                         "sync": {"mode": "sync-on-flush",
                                                  "effective": "sync-on-flush"}}}}
    views = {v.name: v for v in sh.ctx.views(fresh=True)}
    assert sorted(views) == ["data", "db", "log"]
    assert views["db"].kind == "group" and views["db"].journal == "7%"
    assert views["db"].mode == "sync-on-flush"
    assert views["log"].replication == "member of group db"
    lines = sh.run("/replication/groups/db status").splitlines()
    assert lines[1] == ("  link:connected replication:replicating mode:sync-on-flush "
                        "journal:7% in-sync")
    # /replication counts the group as a group and its members in it.
    me = sh.ctx.store.load().identity
    assert sh.root.get_node("/replication").summary() == \
        (f"{me}, peers: 1, volumes: 0 (0 in sync), groups: 1 (1 in sync)", True)


def test_a_member_backstore_is_shown_as_such(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    snap = group_snapshot(sh, "healthy")
    snap["handler"] = {"role": "handler", "volumes": {"log": {"uuid": "m-1"}}}
    sh.root.get_node("/replication/volumes").refresh()
    out = sh.run("/replication status")
    assert ("log role:primary\n  replication:member of group db\n    group: replicated with "
            "the group's other members in one write order: see /replication/groups/db") in out
    assert "group db role:primary peer:dr (192.0.2.2:7700)" in out
    names = {c.name for c in sh.root.get_node("/replication/volumes").children}
    assert names == {"log"}                      # the member; the group's transmitter is not
    assert sh.root.get_node("/replication/volumes/log").summary() == \
        ("primary, member of group db", True)


# --- status ----------------------------------------------------------------------------


def test_status_shows_state_consistent_point_and_members(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2097152)
    add_member(sh, lio, tmp_path, "data", 20971520 - 5)
    group_snapshot(sh, "healthy")
    out = sh.run("/replication/groups/db status")
    assert out.splitlines() == [
        "group db role:primary peer:dr (192.0.2.2:7700)",
        "  link:connected replication:replicating in-sync",
        "    consistent point: seq 48223: the DR holds every member as of the same, newest "
        "write",
        "    members: 2, 512-byte blocks",
        "      log      1.0 GiB  at block 0",
        "      data    10.0 GiB  at block 2097152",
    ]
    assert sh.run("/replication/groups status") == out
    assert sh.root.get_node("/replication/groups/db").summary() == \
        ("2 members, primary, connected, replicating, in sync", True)


def test_status_while_a_joining_member_is_copied(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    group_snapshot(sh, "resync")
    lines = sh.run("/replication/groups/db status").splitlines()
    assert lines[1] == ("  link:connected replication:resync 25.0% (12.0 MiB/s, ETA 1m04s) "
                        "behind")
    assert ("    consistent point: seq 48223 acknowledged; while the copy below runs the DR's "
            "image of the group is not consistent") in lines
    assert ("    initial copy: under way: resync 25.0% (12.0 MiB/s, ETA 1m04s); the group is "
            "in sync once it is done") in lines
    assert lines[-2:] == ["    members: 1, 512-byte blocks", "      log     1.0 MiB  at block 0"]


def test_status_without_its_transmitter_and_without_members(with_group):
    out = with_group.run("/replication/groups/db status")
    assert out.splitlines() == [
        "group db role:primary peer:dr",
        "  replication:unknown: its transmitter does not answer: 'systemctl status "
        "appliance-transmitter@db'",
        "    members: none yet (512-byte blocks): create a backstore with group=db in its "
        "cfgstring"]


def test_info_shows_uuid_journal_layout_and_members(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    gid = sh.ctx.store.load().groups["db"].uuid
    assert sh.run("/replication/groups/db info").splitlines() == [
        "name:        db", f"uuid:        {gid}", "peer:        dr",
        f"journal:     {sh.groups_dir}/db.jnl (256M)",
        f"layout:      {sh.groups_dir}/db.group.json", "block size:  512",
        f"members:     log: 1048576 bytes at block 0, image {tmp_path}/volumes/log.img"]


# --- remove member, delete -------------------------------------------------------------


def test_remove_member_refused_while_its_backstore_exists(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    before = files(sh.state_dir, sh.groups_dir)
    said = refused(sh, "/replication/groups/db remove member=log")
    assert said == ("member=log: backstore user:mirror/log still serves it in group db: "
                    "delete /backstores/user:mirror/log first (the hosts lose that LUN; its "
                    "image stays); nothing changed")
    assert files(sh.state_dir, sh.groups_dir) == before
    assert sh.calls.log == []


def test_remove_member_asks_the_handler_once_the_backstore_is_gone(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048, backstore=False)
    out = sh.run("/replication/groups/db remove member=log")
    assert sh.calls.log == [("handler.sock", "leave-group", {"group": "db", "member": "log"})]
    assert f"Member log left group db: its image {tmp_path}/volumes/log.img stays" in out
    said = refused(sh, "/replication/groups/db remove member=nope")
    assert said.startswith("member=nope: group 'db' has no member 'nope' (members: log)")


def test_delete_refused_with_members_then_retires_the_empty_group(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048, backstore=False)
    before = files(sh.state_dir, sh.groups_dir)
    said = refused(sh, "/replication/groups delete name=db")
    assert said.startswith("group db has members (log): delete their backstores and 'remove "
                           "member=<name>' each first")
    assert files(sh.state_dir, sh.groups_dir) == before and sh.units.log == []

    path = sh.groups_dir / "db.group.json"
    layout = group_layout.load(path)
    group_layout.save(path, group_layout.GroupLayout(layout.name, layout.uuid,
                                                     layout.block_size, layout.align_blocks))
    out = sh.run("/replication/groups delete name=db")
    assert sh.units.log == [("stop", TX_UNIT)]
    assert not (sh.state_dir / "transmitter-db.toml").exists() and not path.exists()
    assert sh.ctx.store.load().groups == {}
    assert "groups" not in (sh.state_dir / "site.json").read_text()
    assert "Deleted group db: its transmitter is stopped, transmitter-db.toml and " \
           "db.group.json removed." in out
    assert sh.root.get_node("/replication/groups").children == set()


def test_peer_of_a_group_cannot_be_unpaired(with_group):
    said = refused(with_group, "/replication/peers delete name=dr")
    assert "peer 'dr' is used by volume(s) db: delete them first (/replication/groups " \
           "delete name=db)" in said


# --- sync ------------------------------------------------------------------------------


def test_set_sync_takes_the_groups_uuid(with_group):
    sh = with_group
    gid = sh.ctx.store.load().groups["db"].uuid
    entry = {"mode": "sync-on-flush", "fallback_s": 0.5, "hold": False,
             "effective": "sync-on-flush"}
    sh.calls.replies["set-sync"] = {"changed": True, "sync": entry}
    sh.run("/replication/groups/db set sync mode=sync-on-flush fallback=500ms hold=false")
    assert sh.calls.log == [("handler.sock", "set-sync", {
        "volume": gid, "mode": "sync-on-flush", "fallback_s": 0.5, "hold": False})]
    sh.calls.replies["status"] = {"role": "handler", "groups": {"db": {"uuid": gid,
                                                                      "sync": entry}}}
    assert sh.run("/replication/groups/db get sync").splitlines() == [
        "mode=sync-on-flush", "fallback=500ms", "hold=false", "effective=sync-on-flush [ro]"]
    sh.calls.replies["status"] = {"role": "handler", "volumes": {}}
    said = refused(sh, "/replication/groups/db get sync")
    assert said.startswith("the handler does not serve group db")


# --- boot ------------------------------------------------------------------------------


def test_restore_keeps_and_starts_the_group_transmitter(with_group):
    sh = with_group
    path = sh.state_dir / "transmitter-db.toml"
    before = path.read_bytes()
    notes = Notes()
    restore.restore(sh.ctx, notes)
    assert path.read_bytes() == before
    assert ("start", TX_UNIT) in sh.units.log


# --- with the handler's layout keys (journal_size, members that left) -------------------

HANDLER_KEYS = hasattr(group_layout.GroupLayout, "retire")


@pytest.mark.skipif(not HANDLER_KEYS, reason="the layout has no journal_size/retired yet")
def test_the_layout_carries_the_journal_size_for_the_handler(site):
    site.run("/replication/groups create name=db peer=dr journal_size=64M")
    assert group_layout.load(site.groups_dir / "db.group.json").journal_size == 64 << 20


@pytest.mark.skipif(not HANDLER_KEYS, reason="the layout has no journal_size/retired yet")
def test_a_member_that_left_is_shown_so_and_does_not_keep_the_group(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048, backstore=False)
    add_member(sh, lio, tmp_path, "data", 4096, backstore=False)
    path = sh.groups_dir / "db.group.json"
    group_layout.save(path, group_layout.load(path).retire("log"))
    lines = sh.run("/replication/groups/db status").splitlines()
    assert lines[-3:] == ["    members: 1, 512-byte blocks",
                          "      data     2.0 MiB  at block 2048",
                          "      log      1.0 MiB  at block 0 (left the group)"]
    said = refused(sh, "/replication/groups/db remove member=log")
    assert said == "member=log: it has left group db already; nothing changed"
    group_layout.save(path, group_layout.load(path).retire("data"))
    sh.run("/replication/groups delete name=db")
    assert sh.ctx.store.load().groups == {}


def test_info_of_a_member_names_the_groups_journal(with_group, lio, tmp_path):
    sh = with_group
    add_member(sh, lio, tmp_path, "log", 2048)
    sh.daemons.snapshot = {"handler": {"role": "handler", "volumes": {"log": {"uuid": "m"}}},
                           "receiver": None, "transmitters": {}, "errors": {}}
    sh.root.get_node("/replication/volumes").refresh()
    lines = sh.run("/replication/volumes/log info").splitlines()
    assert f"journal:     {sh.groups_dir}/db.jnl (group db's: /replication/groups/db)" in lines
    # A failback's check of what LIO serves reads a member (no journal= of its own).
    assert backstores_using(sh.ctx.storage_objects(), f"{tmp_path}/volumes/log.img") == ["log"]


@pytest.mark.skipif(not HANDLER_KEYS, reason="the layout has no needs_copy yet")
def test_a_member_joining_with_data_is_shown_until_its_copy_is_set_up(with_group):
    sh = with_group
    path = sh.groups_dir / "db.group.json"
    group_layout.save(path, group_layout.load(path).with_member(
        "old", "/var/lib/appliance/volumes/old.img", 2048, needs_copy=True))
    assert sh.run("/replication/groups/db status").splitlines()[-1] == \
        "      old     1.0 MiB  at block 0 (joined with data: its initial copy is being set up)"


# --- failover and failback (docs/groups.md, "Failover and failback") --------------------
# On the promoted site 'create ... promoted=<layout>' makes the group over the promoted members
# at their offsets and moves the promotion's base beside its layout; on the old primary site
# 'failback uuid=' makes the group a replica over its old layout with its old journal.

OLD = uuid.UUID(int=0xA)
NEW = "2b9d0c4e-7f1a-4c3b-9e8d-5a6f7b8c9d0e"
BASE = PromotionBase(OLD, 812, 3, 1_765_000_000_000_000_000)


@pytest.fixture
def promoted(tmp_path):
    """A promoted group replica's layout (two members with data) and its marker."""
    d = tmp_path / "replicas" / str(OLD)
    (d / "members").mkdir(parents=True)
    layout = GroupLayout("db", OLD, 512, 128)
    for name, blocks in (("log", 2048), ("data", 4096)):
        path = d / "members" / f"{name}.img"
        path.write_bytes(os.urandom(4096) + bytes(blocks * 512 - 4096))
        os.utime(path, ns=(0, 1_000_000_000))
        layout = layout.with_member(name, str(path), blocks)
    path = d / "db.group.json"
    group_layout.save(path, layout)
    write_marker(path, BASE, layout.num_blocks * 512)
    return path


def test_create_promoted_keeps_the_members_offsets_and_takes_over_the_base(site, promoted):
    out = site.run(f"/replication/groups create name=db peer=dr journal_size=64M "
                   f"promoted={promoted}")
    old = group_layout.load(promoted)
    new = group_layout.load(site.groups_dir / "db.group.json")
    gid = site.ctx.store.load().groups["db"].uuid
    assert str(new.uuid) == gid and gid != str(OLD)
    assert [(m.name, m.mirror, m.offset_blocks, m.num_blocks) for m in new.members] == \
        [(m.name, m.mirror, m.offset_blocks, m.num_blocks) for m in old.members]
    assert new.journal_size == 64 << 20
    assert read_marker(site.groups_dir / "db.group.json", new.num_blocks * 512) == BASE
    assert not marker_path(promoted).exists()
    tx = tomllib.loads((site.state_dir / "transmitter-db.toml").read_text())
    assert tx["size_bytes"] == new.num_blocks * 512 and tx["volume_uuid"] == gid
    assert site.units.log == [("start", TX_UNIT)]
    lines = out.splitlines()
    assert any(f"(uuid {gid}: the old site's '/replication/groups/db failback uuid={gid}' "
               f"names it)" in line for line in lines), out
    assert (f"Info:   /backstores/user:mirror create name=log size={2048 * 512} "
            f"cfgstring=mirror={old.member('log').mirror};group=db") in lines
    assert (f"Info:   /backstores/user:mirror create name=data size={4096 * 512} "
            f"cfgstring=mirror={old.member('data').mirror};group=db") in lines
    assert f"It holds the image of group {OLD} after seq 812" in out
    assert "Add members" not in out


def test_create_promoted_without_a_marker_warns_of_the_compare_by_hash(site, promoted):
    marker_path(promoted).unlink()
    out = site.run(f"/replication/groups create name=db peer=dr promoted={promoted}")
    assert "no usable promotion marker: the new journal marks every chunk" in out
    assert len(group_layout.load(site.groups_dir / "db.group.json").members) == 2


@pytest.mark.parametrize(("args", "message"), [
    ("promoted=relative/db.group.json", "promoted='relative/db.group.json': give the promoted "
                                        "group replica's layout"),
    ("promoted=/nowhere/db.group.json", "promoted=/nowhere/db.group.json: group layout "
                                        "/nowhere/db.group.json cannot be read"),
    ("promoted={promoted} block_size=4096", "block_size=4096: the promoted group's members "
                                            "have 512-byte blocks; leave block_size out"),
    ("promoted={missing}", "member file"),
])
def test_create_promoted_refusals_change_nothing(site, promoted, args, message):
    missing = promoted.with_name("other.group.json")
    layout = group_layout.load(promoted)
    group_layout.save(missing, GroupLayout("db", OLD, 512, 128).with_member(
        "gone", str(promoted.parent / "members" / "gone.img"), 128))
    before = files(site.state_dir, site.groups_dir, promoted.parent)
    said = refused(site, "/replication/groups create name=db peer=dr " +
                   args.format(promoted=promoted, missing=missing))
    assert message in said and said.endswith("nothing changed"), said
    assert files(site.state_dir, site.groups_dir, promoted.parent) == before
    assert site.units.log == [] and group_layout.load(promoted) == layout


def test_create_promoted_failing_after_the_move_puts_the_marker_back(site, promoted,
                                                                     monkeypatch):
    """site.json cannot be written once the marker moved: the promoted layout is left as
    promote left it (marker and all), so the admin's next attempt still takes the base."""
    before = files(site.state_dir, site.groups_dir, promoted.parent)

    def full_disk(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(site.ctx.store), "save", full_disk)
    refused(site, f"/replication/groups create name=db peer=dr promoted={promoted}")
    assert read_marker(promoted, group_layout.load(promoted).num_blocks * 512) == BASE
    assert files(site.state_dir, site.groups_dir, promoted.parent) == before


# --- failback on the old primary site ------------------------------------------------------

def group_receiver_volumes(sh) -> list[dict]:
    path = sh.state_dir / "receiver.toml"
    doc = tomllib.loads(path.read_text())
    receiver_config(doc, str(path))                 # the receiver takes it as it is
    return doc.get("volume", [])


def old_group(sh, lio, tmp_path, *, backstores: bool):
    (tmp_path / "volumes").mkdir(exist_ok=True)
    add_member(sh, lio, tmp_path, "log", 2048, backstore=backstores)
    add_member(sh, lio, tmp_path, "data", 4096, backstore=backstores)
    (sh.groups_dir / "db.jnl").write_bytes(b"")      # the group's journal, as the handler left it


def test_failback_refused_while_a_member_backstore_exists(with_group, lio, tmp_path):
    sh = with_group
    old_group(sh, lio, tmp_path, backstores=True)
    before = files(sh.state_dir, sh.groups_dir)
    said = refused(sh, f"/replication/groups/db failback uuid={NEW}")
    assert said.startswith("backstore(s) data, log still serve members of group db: "), said
    assert files(sh.state_dir, sh.groups_dir) == before
    assert sh.units.log == [] and sh.calls.log == []


def test_failback_makes_the_group_a_replica_over_its_old_layout(with_group, lio, tmp_path):
    sh = with_group
    old_group(sh, lio, tmp_path, backstores=False)
    own = sh.ctx.store.load().groups["db"].uuid
    # Until then the receiver refuses to provision a promoted copy of the group.
    assert tomllib.loads((sh.state_dir / "receiver.toml").read_text())["local_primaries"] \
        == [own]
    said = refused(sh, f"/replication/groups/db failback uuid={own}")
    assert said.startswith(f"uuid {own} is this group's own uuid"), said
    said = refused(sh, "/replication/groups/db failback")
    assert said.startswith("uuid is missing: give the group uuid of the new primary of db")

    out = sh.run(f"/replication/groups/db failback uuid={NEW}")
    layout = sh.groups_dir / "db.group.json"
    assert group_receiver_volumes(sh) == [{
        "uuid": NEW, "size_bytes": 6144 * 512, "block_size": 512, "mirror": str(layout),
        "allowed_primaries": ["site-b"], "failback_journal": str(sh.groups_dir / "db.jnl")}]
    assert sh.units.log == [("stop", TX_UNIT)]
    assert "local_primaries" not in tomllib.loads((sh.state_dir / "receiver.toml").read_text())
    assert not (sh.state_dir / "transmitter-db.toml").exists()
    assert layout.exists(), "the layout is the replica's mirror now"
    saved = sh.ctx.store.load()
    assert saved.groups == {} and saved.replicas["db"].mirror == str(layout)
    lines = out.splitlines()
    assert (f"Group db is now the DR replica db of group {NEW} from peer dr (192.0.2.2:7700), "
            f"over this site's old members (layout {layout}).") in lines
    assert any(line.startswith("  1. on dr: the group made with '/replication/groups create "
                               "... promoted=' replicates") for line in lines), out
    assert "db" not in {c.name for c in sh.root.get_node("/replication/groups").children}


def test_promote_of_a_group_replica_prints_the_group_steps():
    mirror = f"/var/lib/appliance/replicas/{OLD}/db.group.json"
    text = promote_text("db", str(OLD), {"mirror": mirror, "former_primary": "site-a",
                                         "promoted_at_seq": 812}, None)
    lines = text.splitlines()
    assert f"     /replication/groups create name=db peer=<site-a's site> promoted={mirror}" \
        in lines
    assert any("then /replication/groups/db failback uuid=<the uuid step 1 printed>" in line
               for line in lines), text
    assert "cfgstring=mirror=" + mirror not in text
