"""The handler's registry of consistency groups (appliance/tcmu/groups.py) without rings:
one Volume per group shared by its members and closed with the last; a join that a crash
cut after the layout was saved is finished on the next open (the Volume grows, the joined
mirror's data is marked for the resync); leave refused while the member is attached."""

from __future__ import annotations

import os
import uuid

import pytest

from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.groups import GroupError, GroupRegistry
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout

GID = uuid.UUID(int=44)
BS = 512
MAX_TRANSFER = 64 << 10


def member(tmp_path, name: str, group: str = "db") -> MirrorConfig:
    return MirrorConfig(str(tmp_path / f"{name}.img"), None, None, BS, None, True, group)


@pytest.fixture
def registry(tmp_path) -> GroupRegistry:
    groups = tmp_path / "groups"
    groups.mkdir()
    layout = (GroupLayout("db", GID, BS, 8, journal_size=4 << 20)
              .with_member("a", str(tmp_path / "a.img"), 16))
    group_layout.save(groups / "db.group.json", layout)
    return GroupRegistry(groups)


def test_members_share_one_volume_closed_with_the_last(registry, tmp_path):
    g1, a = registry.attach("a", member(tmp_path, "a"), 16 * BS, MAX_TRANSFER)
    g2, b = registry.attach("b", member(tmp_path, "b"), 8 * BS, MAX_TRANSFER)
    assert g1 is g2 and (a.offset_blocks, b.offset_blocks) == (0, 16)
    assert g1.volume.num_blocks == 24 and registry.names() == ["db"]
    registry.detach(g1, "a")
    assert registry.names() == ["db"]
    registry.detach(g2, "b")
    assert registry.names() == []
    status = registry.status()["db"]
    assert status["open"] is False and [m["name"] for m in status["members"]] == ["a", "b"]


def test_a_join_cut_by_a_crash_is_finished_on_the_next_open(registry, tmp_path):
    group, _ = registry.attach("a", member(tmp_path, "a"), 16 * BS, MAX_TRANSFER)
    registry.detach(group, "a")
    # The crash: the layout names the new member (with data), the Volume never grew.
    path = registry.paths("db")[0]
    (tmp_path / "c.img").write_bytes(os.urandom(16 * BS))
    group_layout.save(path, group_layout.load(path).with_member(
        "c", str(tmp_path / "c.img"), 16, needs_copy=True))
    group, _ = registry.attach("a", member(tmp_path, "a"), 16 * BS, MAX_TRANSFER)
    try:
        st = group.volume.status()
        assert group.volume.num_blocks == 32
        assert st["state"] == "logging-to-bitmap" and st["dirty_chunks"] == 2, st
        assert not group_layout.load(path).member("c").needs_copy
    finally:
        registry.detach(group, "a")


def test_refusals_and_leave(registry, tmp_path):
    with pytest.raises(GroupError, match=r"no consistency group 'nope'.*groups create nope"):
        registry.attach("x", member(tmp_path, "x", "nope"), 8 * BS, MAX_TRANSFER)
    with pytest.raises(GroupError, match="not a whole number"):
        registry.attach("x", member(tmp_path, "x"), 8 * BS + 1, MAX_TRANSFER)
    with pytest.raises(GroupError, match="has 8192 bytes, the backstore 4096"):
        registry.attach("a", member(tmp_path, "a"), 8 * BS, MAX_TRANSFER)
    with pytest.raises(GroupError, match="a member cannot have its group's name 'db'"):
        registry.attach("db", member(tmp_path, "db"), 8 * BS, MAX_TRANSFER)
    assert sorted(os.listdir(registry.directory)) == ["db.group.json"]
    assert not (tmp_path / "db.img").exists()
    group, _ = registry.attach("a", member(tmp_path, "a"), 16 * BS, MAX_TRANSFER)
    try:
        with pytest.raises(GroupError, match="served by its device now"):
            registry.leave("db", "a")
        registry.attach("b", member(tmp_path, "b"), 8 * BS, MAX_TRANSFER)
        registry.detach(group, "b")
        assert registry.leave("db", "b")["changed"] is True
        assert group.layout.member("b").retired
        with pytest.raises(GroupError, match="left group 'db'"):
            registry.attach("b", member(tmp_path, "b"), 8 * BS, MAX_TRANSFER)
    finally:
        registry.detach(group, "a")


def test_a_member_its_file_system_cannot_hold_is_refused_before_anything_is_written(
        registry, tmp_path):
    from appliance.volume.errors import NoSpaceError

    fs = os.statvfs(tmp_path)
    huge = (fs.f_bavail * fs.f_frsize // BS + (1 << 20)) * BS
    before = registry.paths("db")[0].read_bytes()
    with pytest.raises(NoSpaceError, match="mirror .*huge.img needs"):
        registry.attach("huge", member(tmp_path, "huge"), huge, MAX_TRANSFER)
    assert not (tmp_path / "huge.img").exists()
    assert registry.paths("db")[0].read_bytes() == before and registry.names() == []
