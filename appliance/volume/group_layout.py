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

The handler (appliance/tcmu/groups.py) appends a member that joins at run time
(``with_member``) and marks one that leaves ``retired`` (``retire``): its range stays, as
padding, so every other member keeps its offset. ``needs_copy`` is set while a member that
joined with data has not yet had its chunks marked for the resync (a crash in between finds
it still set and marks them again). Both keys, and ``journal_size``, are optional in the
file: layouts written before them read as they were.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.statefile import write_json_atomic

SUFFIX = ".group.json"
# A group's or member's name: a file name in the groups directory and a token in a config
# string (no '/', ';', ',', ':', '=', spaces).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMAT_VERSION = 1


class GroupLayoutError(ValueError):
    """A layout that cannot be a group's: the message names the key and what to fix."""


@dataclass(frozen=True, slots=True)
class GroupMember:
    name: str
    mirror: str               # the member's own mirror (file or block device)
    offset_blocks: int        # where its block 0 is in the group's address space
    num_blocks: int
    retired: bool = False     # left the group: its range reads zeros and takes no data
    needs_copy: bool = False  # joined with data; its chunks are not yet marked for resync

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
    journal_size: int | None = None           # bytes of the group's journal when created

    @property
    def chunk_size(self) -> int:
        """The group's bitmap chunk: one alignment unit, so no chunk spans two members."""
        return self.align_blocks * self.block_size

    @property
    def active_members(self) -> tuple[GroupMember, ...]:
        return tuple(m for m in self.members if not m.retired)

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

    def with_member(self, name: str, mirror: str, num_blocks: int, *,
                    needs_copy: bool = False) -> GroupLayout:
        """The layout with a new member appended at the next aligned offset. A retired
        member's name and mirror stay taken (its range is kept)."""
        if any(m.name == name for m in self.members):
            raise GroupLayoutError(f"group {self.name!r} already has a member {name!r}")
        if any(os.path.abspath(m.mirror) == os.path.abspath(mirror) for m in self.members):
            raise GroupLayoutError(f"mirror {mirror} is already a member of group "
                                   f"{self.name!r}")
        offset = -(-self.num_blocks // self.align_blocks) * self.align_blocks
        member = GroupMember(name, str(mirror), offset, num_blocks, needs_copy=needs_copy)
        return self._with_members((*self.members, member))

    def retire(self, name: str) -> GroupLayout:
        """The layout with member ``name`` retired (its range kept as padding)."""
        self.member(name)
        return self._with_members(tuple(dataclasses.replace(m, retired=True, needs_copy=False)
                                        if m.name == name else m for m in self.members))

    def copy_marked(self, name: str) -> GroupLayout:
        """The layout once member ``name``'s chunks are marked for the resync."""
        self.member(name)
        return self._with_members(tuple(dataclasses.replace(m, needs_copy=False)
                                        if m.name == name else m for m in self.members))

    def _with_members(self, members: tuple[GroupMember, ...]) -> GroupLayout:
        return _checked(dataclasses.replace(self, members=members))

    def to_json(self) -> dict:
        doc: dict = {"format_version": FORMAT_VERSION, "name": self.name,
                     "uuid": str(self.uuid), "block_size": self.block_size,
                     "align_blocks": self.align_blocks,
                     "members": [_member_json(m) for m in self.members]}
        if self.journal_size is not None:
            doc["journal_size"] = self.journal_size
        return doc

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
                                        _int(m, "num_blocks", where),
                                        _bool(m, "retired", where),
                                        _bool(m, "needs_copy", where))
                            for m in _list(d, "members", where))
            journal_size = _int(d, "journal_size", where) if "journal_size" in d else None
            layout = cls(_str(d, "name", where), uuid.UUID(_str(d, "uuid", where)),
                         _int(d, "block_size", where), _int(d, "align_blocks", where), members,
                         journal_size)
        except (TypeError, AttributeError) as err:
            raise GroupLayoutError(f"{where}: {err}") from err
        except ValueError as err:
            if isinstance(err, GroupLayoutError):
                raise
            raise GroupLayoutError(f"{where}: uuid is not a uuid ({err})") from err
        return _checked(layout, where)


def _member_json(m: GroupMember) -> dict:
    doc: dict = {"name": m.name, "mirror": m.mirror, "offset_blocks": m.offset_blocks,
                 "num_blocks": m.num_blocks}
    if m.retired:
        doc["retired"] = True
    if m.needs_copy:
        doc["needs_copy"] = True
    return doc


def _bool(d: dict, key: str, where: str) -> bool:
    v = d.get(key, False)
    if type(v) is not bool:
        raise GroupLayoutError(f"{where}: {key} must be true or false, not {v!r}")
    return v


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
    names = [m.name for m in layout.members]
    if len(set(names)) != len(names):
        raise GroupLayoutError(f"{where}: two members have the same name")
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


def valid_name(name: str) -> bool:
    """Letters, digits, '_', '.', '-', starting with a letter or digit, at most 64."""
    return bool(_NAME.match(name))


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
