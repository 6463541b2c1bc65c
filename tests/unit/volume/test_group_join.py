"""A group that changes while open (docs/groups.md, "The handler"): the layout's join, retire
and needs_copy keys (and old files still readable), the concatenated mirror growing by a
member and turning a retired one into zeros, the group's Volume growing over a joining
member without touching its data, its chunks marked for the resync, and a member's view of
the group's Volume (its own LBAs, its own end)."""

from __future__ import annotations

import os
import uuid

import pytest

from appliance.journal import InvalidRequest, OpKind, WriteOp
from appliance.storage import open_file
from appliance.volume import Volume, VolumeConfig, group_layout
from appliance.volume.concat_io import ConcatBlockIO
from appliance.volume.group_layout import GroupLayout, GroupLayoutError
from appliance.volume.group_member import MemberVolume

GID = uuid.UUID(int=33)
BS = 512
ALIGN = 8              # 4 KiB chunks


def two(tmp_path) -> GroupLayout:
    return (GroupLayout("db", GID, BS, ALIGN).with_member("a", str(tmp_path / "a.img"), 10)
            .with_member("b", str(tmp_path / "b.img"), 8))


def test_join_retire_and_needs_copy_round_trip_and_old_files_read_as_before(tmp_path):
    g = two(tmp_path).with_member("c", str(tmp_path / "c.img"), 4, needs_copy=True)
    assert g.member("c").offset_blocks == 24 and g.member("c").needs_copy
    retired = g.retire("b").copy_marked("c")
    assert retired.member("b").retired and not retired.member("c").needs_copy
    assert [m.name for m in retired.active_members] == ["a", "c"]
    assert retired.num_blocks == g.num_blocks          # the range stays
    path = tmp_path / "db.group.json"
    group_layout.save(path, retired)
    assert group_layout.load(path) == retired
    # A layout written before these keys: no retired, no needs_copy, no journal_size.
    doc = two(tmp_path).to_json()
    assert "journal_size" not in doc and all(set(m) == {"name", "mirror", "offset_blocks",
                                                        "num_blocks"} for m in doc["members"])
    assert GroupLayout.from_json(doc) == two(tmp_path)
    with pytest.raises(GroupLayoutError, match="retired must be true or false"):
        GroupLayout.from_json({**doc, "members": [{**doc["members"][0], "retired": "yes"}]})
    with pytest.raises(GroupLayoutError, match="already a member"):
        retired.with_member("b2", str(tmp_path / "b.img"), 4)   # a retired mirror stays taken
    with pytest.raises(GroupLayoutError, match="no member 'zz'"):
        g.retire("zz")
    assert group_layout.valid_name("db-1.x_2") and not group_layout.valid_name("../x")


def test_the_concatenation_grows_by_a_member_and_a_retired_one_reads_zeros(tmp_path):
    g = two(tmp_path)
    ios = [open_file(m.mirror, create_size=m.num_blocks * BS) for m in g.members]
    cat = ConcatBlockIO(g, ios, "db")
    c_img = tmp_path / "c.img"
    c_data = os.urandom(4 * BS)
    c_img.write_bytes(c_data)
    joined = g.with_member("c", str(c_img), 4)
    cat.add_member(joined, open_file(c_img))
    assert cat.size() == 28 * BS
    buf = bytearray(4 * BS)
    cat.pread_into(24 * BS, memoryview(buf))
    assert bytes(buf) == c_data
    cat.pwritev(16 * BS, [b"\x07" * BS])
    with pytest.raises(ValueError, match="does not extend"):
        cat.add_member(g, open_file(c_img))
    cat.retire(joined.retire("b"))
    got = bytearray(BS)
    cat.pread_into(16 * BS, memoryview(got))
    assert bytes(got) == bytes(BS)                     # reads zeros now
    cat.pwritev(16 * BS, [b"\x09" * BS])               # a redo's write: dropped
    cat.close()
    assert (tmp_path / "b.img").read_bytes()[:BS] == b"\x07" * BS


def open_group(tmp_path, g: GroupLayout, **kw) -> Volume:
    path = tmp_path / "db.group.json"
    group_layout.save(path, g)
    return Volume.open(VolumeConfig(uuid=GID, num_blocks=g.num_blocks, block_size=BS,
                                    journal_size=4 << 20, chunk_size=ALIGN * BS,
                                    mirror_path=str(path), journal_path=tmp_path / "db.jnl",
                                    bitmap_path=tmp_path / "db.bitmap",
                                    max_transfer_bytes=64 << 10, service_interval=None, **kw))


def test_the_group_volume_grows_over_a_joining_member_keeping_its_data(tmp_path):
    g = two(tmp_path)
    vol = open_group(tmp_path, g)
    try:
        c_img = tmp_path / "c.img"
        c_data = os.urandom(8 * BS)
        c_img.write_bytes(c_data)
        joined = g.with_member("c", str(c_img), 8)
        vol.mirror_io.add_member(joined, open_file(c_img))
        vol.resize(joined.num_blocks)
        assert vol.num_blocks == 32
        buf = bytearray(8 * BS)
        vol.read_into(24, 8, [memoryview(buf)])
        assert bytes(buf) == c_data and c_img.read_bytes() == c_data
        vol.mark_for_resync(24, 8, "member c joined with data")
        st = vol.status()
        assert st["state"] == "logging-to-bitmap" and st["dirty_chunks"] == 1, st  # 8 blocks: 1 chunk
    finally:
        vol.close()


def test_a_members_view_moves_its_lbas_and_stops_at_its_end(tmp_path):
    g = two(tmp_path)
    vol = open_group(tmp_path, g)
    try:
        b = MemberVolume(vol, g.member("b").offset_blocks, g.member("b").num_blocks)
        assert (b.num_blocks, b.block_size, b.uuid) == (8, BS, GID)
        data = os.urandom(2 * BS)
        b.submit([WriteOp(OpKind.WRITE, 3, 2, data)], fua=True)
        got = bytearray(2 * BS)
        b.read_into(3, 2, [memoryview(got)])
        assert bytes(got) == data
        vol.read_into(16 + 3, 2, [memoryview(got)])
        assert bytes(got) == data
        assert (tmp_path / "b.img").read_bytes()[3 * BS:5 * BS] == data
        with pytest.raises(InvalidRequest, match="beyond the end"):
            b.submit([WriteOp(OpKind.WRITE, 7, 2, data)])
        with pytest.raises(InvalidRequest, match="beyond the end"):
            b.read_into(7, 2, [memoryview(got)])
        assert b.compare_and_write(3, memoryview(data), memoryview(bytes(2 * BS))) is None
        assert b.compare_and_write(3, memoryview(data), memoryview(data)) == 0
        b.write_cache_enabled = False
        assert vol.write_cache_enabled is False and b.write_cache_enabled is False
        assert (tmp_path / "a.img").read_bytes() == bytes(10 * BS)
    finally:
        vol.close()
