"""The consistency groups this handler serves (docs/groups.md, "The handler").

A `user:mirror` device with `group=<name>` is a member of group <name>: its SCSI disk runs
over a member view (``group_member.MemberVolume``) of the group's one Volume, whose mirror is
the layout `<groups dir>/<name>.group.json` (the members' mirrors end to end), whose journal
and bitmap are `<name>.jnl` and `<name>.bitmap` beside it. One Volume per group is open in
this process, shared by its member devices, and closed with the last of them.

A device whose backstore name is not yet a member joins: it is appended to the layout
(durably, before the Volume grows over it), and if its mirror already holds data its chunks
are marked for the transmitter's resync, which gives the DR its first copy. The layout
records ``needs_copy`` until the marks are durable, so a crash in between marks them on the
next open; a crash before the Volume grew is finished on the next open too (it opens at the
size its journal records, then grows to the layout's).

Every refusal (`GroupError`) happens before anything is written: the layout, the journal and
the member's mirror stay as they were.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.journal import JournalMismatch
from appliance.journal.header import load_superblock, read_header
from appliance.storage import open_file
from appliance.tcmu.cfgstring import MirrorConfig
from appliance.volume import group_layout
from appliance.volume.errors import NoSpaceError
from appliance.volume.group_layout import GroupLayout, GroupLayoutError, GroupMember
from appliance.volume.journal_link import mirror_holds_data
from appliance.volume.mirror_lock import check_free

log = logging.getLogger(__name__)

DEFAULT_GROUPS_DIR = Path("/var/lib/appliance/groups")
DEFAULT_JOURNAL_SIZE = 256 << 20


class GroupError(ValueError):
    """A member device or a leave refused; nothing was changed. The message says why."""


@dataclass
class OpenGroup:
    """One group's Volume in this process, and the members whose devices are open."""

    name: str
    layout_path: Path
    layout: GroupLayout
    volume: Any                         # appliance.volume.Volume
    acks: Any                           # backend.AckListener | None
    devices: set[str] = field(default_factory=set)

    @property
    def size_bytes(self) -> int:
        return self.layout.num_blocks * self.layout.block_size


class GroupRegistry:
    """The groups of one groups directory; thread-safe (one lock for attach, detach, leave)."""

    def __init__(self, directory: Path = DEFAULT_GROUPS_DIR) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self.open: dict[str, OpenGroup] = {}

    def paths(self, name: str) -> tuple[Path, Path, Path]:
        """The group's layout, journal and bitmap."""
        d = self.directory
        return d / f"{name}{group_layout.SUFFIX}", d / f"{name}.jnl", d / f"{name}.bitmap"

    def holds(self, group: str | None, mirror: str) -> bool:
        """Whether open group ``group`` writes ``mirror`` as one of its live members: the
        lock on it is this handler's own, taken when the group opened."""
        with self._lock:
            opened = self.open.get(group) if group else None
            if opened is None:
                return False
            for member in opened.layout.members:
                if member.retired:
                    continue
                try:
                    if os.path.samefile(member.mirror, mirror):
                        return True
                except OSError:
                    continue
            return False

    # -- members ------------------------------------------------------------------------
    def attach(self, device: str, config: MirrorConfig, size_bytes: int,
               max_transfer_bytes: int) -> tuple[OpenGroup, GroupMember]:
        """Device ``device`` (its backstore name, the member's name) serves its member of
        ``config.group``: joining it first if it is not a member yet. GroupError if refused
        (nothing changed)."""
        name = config.group
        if name is None:
            raise GroupError(f"device {device}: no group= in its config string")
        with self._lock:
            group = self.open.get(name)
            layout = group.layout if group is not None else self._load(name)
            member = self._check(device, config, size_bytes, layout)
            if member is None:
                layout, member = self._join(device, config, size_bytes, layout, group)
            if group is None:
                group = self._open(name, layout, max_transfer_bytes,
                                   config.journal_size or DEFAULT_JOURNAL_SIZE, config.wce)
                member = group.layout.member(device)
            elif group.volume.num_blocks < group.layout.num_blocks:
                # An earlier join failed after its layout was saved: grow now.
                group.volume.resize(group.layout.num_blocks)
                self._mark_copies(group)
            if device in group.devices:
                raise GroupError(f"device {device}: member {device!r} of group {name!r} is "
                                 "already served by another device of that name")
            group.devices.add(device)
            return group, member

    def stopping(self, group: OpenGroup, device: str) -> None:
        """A member device's loop stops: with the last one, release writes waiting for the
        DR (the others' would otherwise be aborted too)."""
        with self._lock:
            if group.devices <= {device}:
                group.volume.sync.close()

    def detach(self, group: OpenGroup, device: str) -> None:
        """A member device closed; the group's Volume closes with the last one."""
        with self._lock:
            group.devices.discard(device)
            if group.devices or self.open.get(group.name) is not group:
                return
            del self.open[group.name]
            try:
                if group.acks is not None:
                    group.acks.stop()
            finally:
                group.volume.close()
            log.info("group %s: its last member device closed; volume closed", group.name)

    def leave(self, name: str, member: str) -> dict:
        """Retire ``member`` of group ``name`` (control command leave-group): its range stays
        as padding so the other members keep their offsets. Refused while its device is open.
        Returns {"group", "member", "changed"}."""
        with self._lock:
            group = self.open.get(name)
            if group is not None and member in group.devices:
                raise GroupError(f"member {member!r} of group {name!r} is served by its device "
                                 f"now; delete the backstore {member!r} first, then leave; "
                                 "nothing changed")
            layout = group.layout if group is not None else self._load(name)
            try:
                current = layout.member(member)
            except GroupLayoutError as err:
                raise GroupError(f"{err}; nothing changed") from None
            if current.retired:
                return {"group": name, "member": member, "changed": False}
            retired = layout.retire(member)
            if group is not None:
                # What the member wrote and the on-flush cache still holds lands in its file
                # before its range stops taking data.
                group.volume.flush()
            group_layout.save(self.paths(name)[0], retired)
            if group is not None:
                group.volume.mirror_io.retire(retired)
                group.layout = retired
            log.warning("group %s: member %s left (retired); its blocks %d..%d stay as "
                        "padding", name, member, current.offset_blocks,
                        current.end_blocks - 1)
            return {"group": name, "member": member, "changed": True}

    # -- admin --------------------------------------------------------------------------
    def find(self, key: str) -> OpenGroup:
        """An open group by name or uuid; LookupError if none."""
        with self._lock:
            for group in self.open.values():
                if key in (group.name, str(group.layout.uuid)):
                    return group
        raise LookupError(key)

    def change(self, key: str, change: Callable[[Any], bool]) -> dict:
        """Apply ``change`` to the Volume of the open group named (or with uuid) ``key``:
        {"volume", "group", "changed", **status}."""
        with self._lock:
            group = self.find(key)
            changed = change(group.volume)
            return {"volume": key, "changed": changed, **self.group_status(group)}

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self.open)

    def status(self) -> dict:
        """Every group in the directory with its members; the volume's state for those
        served here."""
        with self._lock:
            found = {p.name[:-len(group_layout.SUFFIX)]: p
                     for p in sorted(self.directory.glob(f"*{group_layout.SUFFIX}"))}
            out: dict[str, dict] = {}
            for name, path in found.items():
                group = self.open.get(name)
                if group is not None:
                    out[name] = self.group_status(group)
                    continue
                try:
                    layout = group_layout.load(path)
                except GroupLayoutError as err:
                    out[name] = {"open": False, "error": str(err)}
                    continue
                out[name] = {"open": False, **self._describe(name, layout, set())}
            for name, group in self.open.items():
                out.setdefault(name, self.group_status(group))
            return out

    def group_status(self, group: OpenGroup) -> dict:
        from appliance.tcmu.backend import volume_status
        return {**volume_status(group.volume, group.size_bytes), "open": True,
                **self._describe(group.name, group.layout, group.devices)}

    def _describe(self, name: str, layout: GroupLayout, devices: set[str]) -> dict:
        layout_path, journal, bitmap = self.paths(name)
        return {"group": name, "uuid": str(layout.uuid), "layout": str(layout_path),
                "journal_path": str(journal), "bitmap": str(bitmap),
                "block_size": layout.block_size,
                "members": [{"name": m.name, "mirror": m.mirror,
                             "offset_blocks": m.offset_blocks, "num_blocks": m.num_blocks,
                             "retired": m.retired, "served": m.name in devices}
                            for m in layout.members]}

    # -- internals ------------------------------------------------------------------------
    def _load(self, name: str) -> GroupLayout:
        path = self.paths(name)[0]
        if not path.exists():
            raise GroupError(f"no consistency group {name!r}: {path} does not exist; create "
                             f"the group first (shell: /replication/groups create {name}), "
                             f"then the member's backstore with group={name}")
        try:
            layout = group_layout.load(path)
        except GroupLayoutError as err:
            raise GroupError(str(err)) from None
        if layout.name != name:
            raise GroupError(f"{path} names group {layout.name!r}, not {name!r}")
        return layout

    def _check(self, device: str, config: MirrorConfig, size_bytes: int,
               layout: GroupLayout) -> GroupMember | None:
        """Read-only: the member ``device`` is (None: it joins), or GroupError."""
        name = layout.name
        if config.block_size != layout.block_size:
            raise GroupError(f"device {device}: block_size {config.block_size} differs from "
                             f"group {name!r}'s {layout.block_size}; every member has the "
                             "group's block size")
        if size_bytes <= 0 or size_bytes % layout.block_size:
            raise GroupError(f"device {device}: size {size_bytes} is not a whole number of "
                             f"{layout.block_size}-byte blocks")
        mine = os.path.abspath(config.mirror)
        for other, member in self._members_elsewhere(name):
            if os.path.abspath(member.mirror) == mine:
                raise GroupError(f"device {device}: mirror {config.mirror} is member "
                                 f"{member.name!r} of group {other!r}; a mirror belongs to "
                                 "one group")
        existing = next((m for m in layout.members if m.name == device), None)
        if existing is None:
            if not group_layout.valid_name(device):
                raise GroupError(f"device {device}: a member's name is letters, digits, '_', "
                                 "'.' and '-'; rename the backstore")
            if device == name:
                # The group's status, metrics and transmitter go by the group's name.
                raise GroupError(f"device {device}: a member cannot have its group's name "
                                 f"{name!r}; rename the backstore")
            taken = next((m for m in layout.members if os.path.abspath(m.mirror) == mine),
                         None)
            if taken is not None:
                raise GroupError(f"device {device}: mirror {config.mirror} is already member "
                                 f"{taken.name!r} of group {name!r}"
                                 + (" (retired)" if taken.retired else ""))
            return None
        if existing.retired:
            raise GroupError(f"device {device}: member {device!r} left group {name!r} "
                             "(retired); its range stays padding: join under another "
                             "backstore name")
        if os.path.abspath(existing.mirror) != mine:
            raise GroupError(f"device {device}: member {device!r} of group {name!r} has "
                             f"mirror {existing.mirror}, not {config.mirror}")
        have = existing.num_blocks * layout.block_size
        if have != size_bytes:
            raise GroupError(f"device {device}: member {device!r} of group {name!r} has "
                             f"{have} bytes, the backstore {size_bytes}; a member keeps its "
                             "size: create the backstore with that size")
        return existing

    def _members_elsewhere(self, name: str):
        for path in sorted(self.directory.glob(f"*{group_layout.SUFFIX}")):
            other = path.name[:-len(group_layout.SUFFIX)]
            if other == name:
                continue
            group = self.open.get(other)
            try:
                layout = group.layout if group is not None else group_layout.load(path)
            except GroupLayoutError:
                log.warning("ignoring unreadable group layout %s", path)
                continue
            for member in layout.active_members:
                yield other, member

    def _join(self, device: str, config: MirrorConfig, size_bytes: int, layout: GroupLayout,
              group: OpenGroup | None) -> tuple[GroupLayout, GroupMember]:
        """Append member ``device``: its mirror (created if missing), then the layout,
        durably; if the group is open, its Volume grows over it. A mirror with data has its
        chunks marked for the resync."""
        holds = mirror_holds_data(config.mirror)
        try:
            joined = layout.with_member(device, config.mirror, size_bytes // layout.block_size,
                                        needs_copy=holds)
        except GroupLayoutError as err:
            raise GroupError(f"device {device}: {err}") from None
        member = joined.member(device)
        _check_space(device, config.mirror, size_bytes)
        # One writer per mirror (volume/mirror_lock.py), before opening may extend the file;
        # a closed group takes the lock in _open, with the other members'.
        take = check_free if group is None else \
            lambda path, _holder: group.volume.cover_mirror(path)
        take(config.mirror, "handler")
        io = open_file(config.mirror, create_size=size_bytes)
        try:
            take(config.mirror, "handler")      # if the open created it
            if io.size() < size_bytes:
                raise GroupError(f"device {device}: mirror {config.mirror} holds {io.size()} "
                                 f"bytes, the backstore has {size_bytes}")
            layout_path = self.paths(layout.name)[0]
            group_layout.save(layout_path, joined)          # the commit point of the join
        except BaseException:
            io.close()
            raise
        log.warning("group %s: %s joined as member at block %d (%d blocks)%s", layout.name,
                    device, member.offset_blocks, member.num_blocks,
                    "; its mirror holds data: marked for the resync" if holds else "")
        if group is None:
            io.close()                 # _open opens every member and finishes the join
            return joined, member
        group.volume.mirror_io.add_member(joined, io)
        group.layout = joined
        group.volume.resize(joined.num_blocks)
        self._mark_copies(group)
        return group.layout, member

    def _mark_copies(self, group: OpenGroup) -> None:
        """Members that joined with data: their chunks marked, then the flag cleared."""
        for member in group.layout.members:
            if member.needs_copy:
                group.volume.mark_for_resync(
                    member.offset_blocks, member.num_blocks,
                    f"member {member.name} joined group {group.name} with data")
                group.layout = group.layout.copy_marked(member.name)
                group_layout.save(group.layout_path, group.layout)

    def _open(self, name: str, layout: GroupLayout, max_transfer_bytes: int,
              journal_size: int, wce: bool) -> OpenGroup:
        from appliance.tcmu.backend import AckListener
        from appliance.volume import Volume, VolumeConfig

        layout_path, journal, bitmap = self.paths(name)
        recorded = _journal_volume_blocks(journal, layout)
        volume = Volume.open(VolumeConfig(
            uuid=layout.uuid, num_blocks=recorded or layout.num_blocks,
            block_size=layout.block_size, journal_size=layout.journal_size or journal_size,
            chunk_size=layout.chunk_size, mirror_path=str(layout_path), journal_path=journal,
            bitmap_path=bitmap, max_transfer_bytes=max_transfer_bytes))
        group = OpenGroup(name, layout_path, layout, volume, None)
        try:
            volume.write_cache_enabled = wce
            if volume.num_blocks < layout.num_blocks:
                # A join committed in the layout whose grow a crash interrupted.
                log.warning("group %s: finishing a member's join: growing from %d to %d "
                            "blocks", name, volume.num_blocks, layout.num_blocks)
                volume.resize(layout.num_blocks)
            self._mark_copies(group)
            group.acks = AckListener.start(volume)
        except BaseException:
            volume.close()
            raise
        self.open[name] = group
        log.info("group %s: volume %s open over %d members (%d blocks)", name, layout.uuid,
                 len(layout.active_members), layout.num_blocks)
        return group


def _check_space(device: str, mirror: str, size_bytes: int) -> None:
    """Refuse (NoSpaceError: the device's enable fails with -ENOSPC) a joining member's
    mirror file that its file system cannot hold at full size, as a volume's
    (journal_link.check_space): we do not overcommit."""
    try:
        st = os.stat(mirror)
    except FileNotFoundError:
        missing, directory = size_bytes, os.path.dirname(os.path.abspath(mirror))
    else:
        if not stat.S_ISREG(st.st_mode):
            return
        missing, directory = max(0, size_bytes - st.st_blocks * 512), os.path.dirname(mirror)
    if not missing or not os.path.isdir(directory):
        return
    fs = os.statvfs(directory)
    free = fs.f_bavail * fs.f_frsize
    if missing > free:
        raise NoSpaceError(f"device {device}: mirror {mirror} needs {missing} more bytes on "
                           f"the file system of {directory}, which has {free} free; choose a "
                           "smaller size or another file system")


def _journal_volume_blocks(path: Path, layout: GroupLayout) -> int | None:
    """The group size the journal's superblock records (None: no journal yet)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open_file(path) as io:
        try:
            sb = load_superblock(io, read_header(io), layout.uuid)
        except JournalMismatch as err:
            raise GroupError(f"group {layout.name!r}: journal {path}: {err}") from None
    return sb.volume_blocks
