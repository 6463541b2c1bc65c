"""A consistency group's layout and its concatenated mirror (group_layout.py, concat_io.py):
members at aligned offsets, reads and writes cut at member boundaries landing in each
member's own file, gaps reading zeros, bad layouts refused naming the key."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.volume import group_layout
from appliance.volume.concat_io import ConcatBlockIO, open_mirror
from appliance.volume.group_layout import GroupLayout, GroupLayoutError

GID = uuid.UUID(int=21)


def layout(tmp_path, sizes=(10, 7, 16), align=8) -> GroupLayout:
    g = GroupLayout("db", GID, 512, align)
    for i, n in enumerate(sizes):
        g = g.with_member(f"m{i}", str(tmp_path / f"m{i}.img"), n)
    return g


def test_members_are_laid_end_to_end_at_aligned_offsets(tmp_path):
    g = layout(tmp_path)
    assert [(m.offset_blocks, m.num_blocks) for m in g.members] == [(0, 10), (16, 7), (24, 16)]
    assert g.num_blocks == 40
    path = tmp_path / "db.group.json"
    group_layout.save(path, g)
    assert group_layout.load(path) == g


def test_bad_layouts_are_refused_naming_the_key(tmp_path):
    g = layout(tmp_path)
    with pytest.raises(GroupLayoutError, match="already has a member 'm0'"):
        g.with_member("m0", str(tmp_path / "other"), 4)
    with pytest.raises(GroupLayoutError, match="already a member"):
        g.with_member("x", str(tmp_path / "m1.img"), 4)
    doc = g.to_json()
    doc["members"][1]["offset_blocks"] = 12
    with pytest.raises(GroupLayoutError, match="not a multiple of align_blocks"):
        GroupLayout.from_json(doc)
    doc["members"][1]["offset_blocks"] = 8
    with pytest.raises(GroupLayoutError, match="overlaps"):
        GroupLayout.from_json(doc)
    with pytest.raises(GroupLayoutError, match="block_size must be 512 or 4096"):
        GroupLayout.from_json({**g.to_json(), "block_size": 1000})
    with pytest.raises(GroupLayoutError, match="num_blocks must be"):
        GroupLayout.from_json({**g.to_json(), "members": [{"name": "a", "mirror": "/x",
                                                            "offset_blocks": 0}]})
    (tmp_path / "bad.group.json").write_text(json.dumps({"format_version": 9}))
    with pytest.raises(GroupLayoutError, match="format_version 9"):
        group_layout.load(tmp_path / "bad.group.json")
    with pytest.raises(GroupLayoutError, match="ends in .group.json"):
        group_layout.save(tmp_path / "db.json", g)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 39), st.integers(1, 40), st.integers(1, 255)),
                    max_size=12))
def test_reads_and_writes_land_in_each_members_own_file(tmp_path_factory, ops):
    tmp_path = tmp_path_factory.mktemp("g")
    g = layout(tmp_path)
    path = tmp_path / "db.group.json"
    group_layout.save(path, g)
    model = bytearray(g.num_blocks * 512)
    gaps = {b for b in range(40) if not any(m.offset_blocks <= b < m.end_blocks
                                             for m in g.members)}
    with open_mirror(path, create_size=0) as io:
        assert isinstance(io, ConcatBlockIO) and io.size() == 40 * 512
        for lba, n, byte in ops:
            n = min(n, 40 - lba)
            blocks = [b for b in range(lba, lba + n) if b not in gaps]
            if len(blocks) != n:          # a write into a gap: refused, nothing written
                with pytest.raises(OSError, match="between members"):
                    io.pwritev(lba * 512, [bytes([byte]) * n * 512])
                continue
            half = n * 512 // 2
            data = bytes([byte]) * (n * 512)
            io.pwritev(lba * 512, [data[:half], data[half:]])
            model[lba * 512:(lba + n) * 512] = data
        got = bytearray(len(model))
        io.pread_into(0, memoryview(got))
        assert got == model
    for m in g.members:      # each member's file holds exactly its slice
        raw = (tmp_path / f"{m.name}.img").read_bytes()
        assert raw == bytes(model[m.offset_blocks * 512:m.end_blocks * 512])


def test_a_missing_or_short_member_is_an_error_naming_it(tmp_path):
    g = layout(tmp_path)
    path = tmp_path / "db.group.json"
    group_layout.save(path, g)
    with pytest.raises(FileNotFoundError):
        open_mirror(path)
    open_mirror(path, create_size=0).close()
    os.truncate(tmp_path / "m1.img", 512)
    with pytest.raises(OSError, match="member 'm1'"):
        open_mirror(path)
