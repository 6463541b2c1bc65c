"""A consistency group's layout: its member volumes laid end to end in one block address space
(docs/groups.md).

A group has one journal, one bitmap and one sequence space, like a volume; its "mirror" is the
members' mirrors concatenated (``concat_io.ConcatBlockIO``), each at a fixed offset that a
record's LBA falls into. So one write order covers every member: the DR applies the group's
records to the members strictly in sequence, and rollback, promote and verify act on all of
them at one seq. The layout file names the members; it is what a group's journal publishes as
its mirror (a path ending in ``.group.json``), so every process that opens "the mirror" opens
the same members in the same places.

Members start at multiples of ``align_blocks`` (a bitmap chunk), so no chunk spans two members
and a member's blocks keep their own chunks; all members have the group's block size.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.statefile import write_json_atomic

SUFFIX = ".group.json"
FORMAT_VERSION = 1


class GroupLayoutError(ValueError):
    """A layout that cannot be a group's: the message names the key and what to fix."""


@dataclass(frozen=True, slots=True)
class GroupMember:
    name: str
    mirror: str               # the member's own mirror (file or block device)
    offset_blocks: int        # where its block 0 is in the group's address space
    num_blocks: int

    @property
    def end_blocks(self) -> int:
        return self.offset_blocks + self.num_blocks


@dataclass(frozen=True, slots=True)
class GroupLayout:
    name: str
    uuid: uuid.UUID
    block_size: int
    align_blocks: int                         # members start on these boundaries
    members: tuple[GroupMember, ...] = field(default_factory=tuple)

    @property
    def num_blocks(self) -> int:
        """The group's address space: up to the end of its last member."""
        return max((m.end_blocks for m in self.members), default=0)

    def member(self, name: str) -> GroupMember:
        for m in self.members:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.members) or "none"
        raise GroupLayoutError(f"group {self.name!r} has no member {name!r} (members: {known})")

    def with_member(self, name: str, mirror: str, num_blocks: int) -> GroupLayout:
        """The layout with a new member appended at the next aligned offset."""
        if any(m.name == name for m in self.members):
            raise GroupLayoutError(f"group {self.name!r} already has a member {name!r}")
        if any(os.path.abspath(m.mirror) == os.path.abspath(mirror) for m in self.members):
            raise GroupLayoutError(f"mirror {mirror} is already a member of group "
                                   f"{self.name!r}")
        offset = -(-self.num_blocks // self.align_blocks) * self.align_blocks
        member = GroupMember(name, str(mirror), offset, num_blocks)
        return _checked(GroupLayout(self.name, self.uuid, self.block_size, self.align_blocks,
                                    (*self.members, member)))

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "name": self.name, "uuid": str(self.uuid),
                "block_size": self.block_size, "align_blocks": self.align_blocks,
                "members": [{"name": m.name, "mirror": m.mirror,
                             "offset_blocks": m.offset_blocks, "num_blocks": m.num_blocks}
                            for m in self.members]}

    @classmethod
    def from_json(cls, d: object, where: str = "group layout") -> GroupLayout:
        if not isinstance(d, dict):
            raise GroupLayoutError(f"{where}: not a JSON object")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise GroupLayoutError(f"{where}: format_version {version!r} is not "
                                   f"{FORMAT_VERSION}")
        try:
            members = tuple(GroupMember(_str(m, "name", where), _str(m, "mirror", where),
                                        _int(m, "offset_blocks", where),
                                        _int(m, "num_blocks", where))
                            for m in _list(d, "members", where))
            layout = cls(_str(d, "name", where), uuid.UUID(_str(d, "uuid", where)),
                         _int(d, "block_size", where), _int(d, "align_blocks", where), members)
        except (TypeError, AttributeError) as err:
            raise GroupLayoutError(f"{where}: {err}") from err
        except ValueError as err:
            if isinstance(err, GroupLayoutError):
                raise
            raise GroupLayoutError(f"{where}: uuid is not a uuid ({err})") from err
        return _checked(layout, where)


def _str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise GroupLayoutError(f"{where}: {key} must be a non-empty string, not {v!r}")
    return v


def _int(d: dict, key: str, where: str) -> int:
    v = d.get(key)
    if type(v) is not int or v < 0:
        raise GroupLayoutError(f"{where}: {key} must be a whole number >= 0, not {v!r}")
    return v


def _list(d: dict, key: str, where: str) -> list:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(m, dict) for m in v):
        raise GroupLayoutError(f"{where}: {key} must be a list of objects")
    return v


def _checked(layout: GroupLayout, where: str = "group layout") -> GroupLayout:
    if layout.block_size not in (512, 4096):
        raise GroupLayoutError(f"{where}: block_size must be 512 or 4096, not "
                               f"{layout.block_size}")
    if layout.align_blocks < 1:
        raise GroupLayoutError(f"{where}: align_blocks must be at least 1")
    end = 0
    for m in layout.members:
        if m.num_blocks < 1:
            raise GroupLayoutError(f"{where}: member {m.name!r} has no blocks")
        if m.offset_blocks % layout.align_blocks:
            raise GroupLayoutError(f"{where}: member {m.name!r} starts at block "
                                   f"{m.offset_blocks}, not a multiple of align_blocks "
                                   f"{layout.align_blocks}")
        if m.offset_blocks < end:
            raise GroupLayoutError(f"{where}: member {m.name!r} overlaps the member before it")
        end = m.end_blocks
    return layout


def is_layout_path(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and os.fspath(path).endswith(SUFFIX)


def load(path: str | os.PathLike[str]) -> GroupLayout:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise GroupLayoutError(f"group layout {path} cannot be read: {err}") from err
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise GroupLayoutError(f"group layout {path} is not JSON: {err}") from err
    return GroupLayout.from_json(doc, f"group layout {path}")


def save(path: str | os.PathLike[str], layout: GroupLayout) -> None:
    """Durably (temporary file, fsync, rename, fsync of the directory)."""
    if not is_layout_path(path):
        raise GroupLayoutError(f"a group layout's file name ends in {SUFFIX}: {path}")
    write_json_atomic(Path(path), layout.to_json())
