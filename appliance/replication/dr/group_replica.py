"""The DR side of a consistency group (docs/groups.md): one replica whose mirror is a group
layout, one file per member, laid out exactly as the primary lays out its members.

The HELLO of a group's transmitter carries the members (name, offset, blocks). A provisioned
replica makes its layout from it (``<state_dir>/<uuid>/<group>.group.json``, member mirrors in
``members/``) and follows a member joining later (the layout grows, the new member's file is
made); a replica configured with a ``[[volume]]`` table names its own layout (``mirror =
".../<name>.group.json"``), and a member it lacks is refused (``group-member``) rather than
replicated into nowhere. Members the primary retired stay in the DR's layout as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.replication.handshake import HandshakeError, Hello, Refused
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout, GroupLayoutError, GroupMember

MEMBERS_DIR = "members"


def members_of(hello: Hello) -> tuple[str, int, list[tuple[str, int, int]]]:
    """(group name, align_blocks, [(member, offset_blocks, num_blocks)]) from a HELLO;
    HandshakeError for a malformed one."""
    g = hello.group or {}
    name, align, members = g.get("name"), g.get("align_blocks"), g.get("members")
    if not isinstance(name, str) or not name or type(align) is not int or align < 1 \
            or not isinstance(members, list):
        raise HandshakeError(f"handshake field 'group' is malformed: {g!r}")
    out = []
    for m in members:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or any(
                type(m.get(k)) is not int or m[k] < 0 for k in ("offset_blocks", "num_blocks")):
            raise HandshakeError(f"handshake field 'group' has a malformed member: {m!r}")
        out.append((m["name"], m["offset_blocks"], m["num_blocks"]))
    return name, align, out


def layout_path(directory: Path, group: str) -> Path:
    return directory / f"{group}{group_layout.SUFFIX}"


def provision(directory: Path, hello: Hello) -> Path:
    """A new provisioned replica's layout, from the HELLO (member files are made when the
    replica opens). Returns its path."""
    name, align, members = members_of(hello)
    layout = GroupLayout(name, hello.volume_uuid, hello.block_size, align)
    path = layout_path(directory, name)
    return _save(path, _grown(path, layout, members))


def follow(path: Path, hello: Hello, *, may_grow: bool) -> GroupLayout:
    """The replica's layout checked against the HELLO's members, grown by the members that
    joined since (``may_grow``: a provisioned replica) and saved; Refused otherwise."""
    try:
        layout = group_layout.load(path)
    except GroupLayoutError as err:
        raise Refused("group-member", f"volume {hello.volume_uuid}: the replica's group "
                                      f"layout cannot be used: {err}") from err
    if hello.group is None:
        raise Refused("group-member", f"volume {hello.volume_uuid}: this replica is the "
                                      f"consistency group {layout.name!r} but the primary "
                                      f"replicates a single volume; point the [[volume]] "
                                      f"table's mirror at a file or device instead")
    name, _, members = members_of(hello)
    if hello.block_size != layout.block_size:
        raise Refused("geometry", f"group {name}: the primary has {hello.block_size}-byte "
                                  f"blocks, the replica's layout {layout.block_size}")
    grown = _grown(path, layout, members, may_grow=may_grow)
    if grown != layout:
        _save(path, grown)
    return grown


def _grown(path: Path, layout: GroupLayout, members: list[tuple[str, int, int]], *,
           may_grow: bool = True) -> GroupLayout:
    have = {m.name: m for m in layout.members}
    added = list(layout.members)
    for name, offset, blocks in members:
        mine = have.get(name)
        if mine is not None:
            if (mine.offset_blocks, mine.num_blocks) != (offset, blocks):
                raise Refused("group-member", f"group {layout.name}: member {name!r} is "
                                              f"{blocks} blocks at {offset} on the primary, "
                                              f"{mine.num_blocks} at {mine.offset_blocks} in "
                                              f"the replica's layout {path}")
            continue
        if not may_grow:
            raise Refused("group-member", f"group {layout.name}: the DR replica lacks member "
                                          f"{name!r} ({blocks} blocks at block {offset}): add "
                                          f"it to {path} with a mirror of that size, then "
                                          f"'reload'")
        mirror = path.parent / MEMBERS_DIR / f"{name}.img"
        added.append(GroupMember(name, str(mirror), offset, blocks))
    added.sort(key=lambda m: m.offset_blocks)
    try:
        return GroupLayout.from_json(GroupLayout(layout.name, layout.uuid, layout.block_size,
                                                 layout.align_blocks, tuple(added)).to_json(),
                                     f"group {layout.name}")
    except GroupLayoutError as err:
        raise Refused("group-member", str(err)) from err


def _save(path: Path, layout: GroupLayout) -> Path:
    os.makedirs(path.parent / MEMBERS_DIR, exist_ok=True)
    group_layout.save(path, layout)
    return path


def status(path: Path) -> dict | None:
    """The group's members as status shows them; None for a replica that is not a group."""
    if not group_layout.is_layout_path(path):
        return None
    try:
        layout = group_layout.load(path)
    except GroupLayoutError as err:
        return {"error": str(err)}
    return {"name": layout.name, "block_size": layout.block_size,
            "members": [{"name": m.name, "mirror": m.mirror, "offset_blocks": m.offset_blocks,
                         "num_blocks": m.num_blocks} for m in layout.members]}
