"""A promoted consistency group served again (appliance/volume/promoted_group.py): the new
group's layout keeps every member at its offset, the promotion's base marker moves beside it,
and the handler's group registry opening it adopts the base and marks nothing. A marker the
members were written after is not trusted (every chunk is marked, as for a volume)."""

from __future__ import annotations

import logging
import os
import uuid

from appliance.storage import open_file
from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.groups import GroupRegistry
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout
from appliance.volume.promoted_group import serve_promoted_group
from appliance.volume.promotion_base import PromotionBase, marker_path, read_marker, write_marker
from appliance.volume.resync import ResyncSource

BS = 512
ALIGN = 8                                   # 4 KiB chunks
OLD = uuid.UUID(int=0xA)
NEW = uuid.UUID(int=0xB)
BASE = PromotionBase(OLD, 300, 2, 1_765_000_000_000_000_000)


def promoted(tmp_path, *, marker: bool = True):
    """A promoted DR group replica: layout, two members with data (one retired), a marker."""
    d = tmp_path / "replica"
    (d / "members").mkdir(parents=True)
    layout = GroupLayout("db", OLD, BS, ALIGN)
    for name, blocks in (("log", 16), ("old", 8), ("data", 24)):
        path = d / "members" / f"{name}.img"
        path.write_bytes(os.urandom(blocks * BS))
        os.utime(path, ns=(0, 1_000_000_000))
        layout = layout.with_member(name, str(path), blocks)
    layout = layout.retire("old")
    path = d / "db.group.json"
    group_layout.save(path, layout)
    if marker:
        write_marker(path, BASE, layout.num_blocks * BS)
    return path, layout


def test_the_new_layout_keeps_every_member_at_its_offset_and_takes_the_marker(tmp_path):
    path, old = promoted(tmp_path)
    dest = tmp_path / "groups" / "db.group.json"
    dest.parent.mkdir()
    new, base = serve_promoted_group(path, dest, name="db", group_uuid=NEW,
                                     journal_size=1 << 20)
    assert base == BASE
    assert group_layout.load(dest) == new
    assert (new.name, new.uuid, new.block_size, new.align_blocks, new.journal_size) == \
        ("db", NEW, BS, ALIGN, 1 << 20)
    assert [(m.name, m.mirror, m.offset_blocks, m.num_blocks, m.retired) for m in new.members] \
        == [(m.name, m.mirror, m.offset_blocks, m.num_blocks, m.retired) for m in old.members]
    assert read_marker(dest, new.num_blocks * BS) == BASE
    assert not marker_path(path).exists(), "one marker: the old one moved"


def test_without_a_marker_the_layout_is_still_made_and_no_base_carried(tmp_path):
    path, _ = promoted(tmp_path, marker=False)
    dest = tmp_path / "db.group.json"
    new, base = serve_promoted_group(path, dest, name="db", group_uuid=NEW, journal_size=None)
    assert base is None and not marker_path(dest).exists()
    assert [m.offset_blocks for m in new.members] == [0, 16, 24]


def test_a_member_written_after_the_marker_makes_it_untrusted(tmp_path, caplog):
    path, old = promoted(tmp_path)
    log = old.member("log").mirror
    st = os.stat(marker_path(path))
    os.utime(log, ns=(0, st.st_mtime_ns + 1))          # the member changed since promote
    with caplog.at_level(logging.WARNING, "appliance.volume"):
        assert read_marker(path, old.num_blocks * BS) is None
    assert "older than the last write to the mirror" in caplog.text


def test_the_group_registry_adopts_the_base_and_marks_nothing(tmp_path):
    path, old = promoted(tmp_path)
    groups = tmp_path / "groups"
    groups.mkdir()
    serve_promoted_group(path, groups / "db.group.json", name="db", group_uuid=NEW,
                         journal_size=1 << 20)
    reg = GroupRegistry(groups)
    attached = []
    for m in old.active_members:
        group, member = reg.attach(m.name, MirrorConfig(m.mirror, None, group="db"),
                                   m.num_blocks * BS, 64 << 10)
        assert member.offset_blocks == m.offset_blocks
        attached.append(m.name)
    try:
        st = group.volume.status()
        assert st["dirty_chunks"] == 0 and st["state"] == "journaling", st
        source = ResyncSource(open_file(groups / "db.bitmap"))
        try:
            assert source.header().base == BASE      # what the transmitter names in its HELLO
        finally:
            source.close()
        assert not marker_path(groups / "db.group.json").exists(), "adopted: marker removed"
    finally:
        for name in attached:
            reg.stopping(group, name)
            reg.detach(group, name)
