"""What /replication/groups does to the appliance (docs/groups.md, "From the shell"): a
consistency group is one volume to replication, so it gets what a volume gets from
'/replication/volumes create' (targetcli_ext/operations.py): an entry in site.json, a
generated transmitter-<group>.toml and appliance-transmitter@<group>. Its members are not the
shell's: they join when their backstore is created with ``group=<name>`` in the cfgstring
(the handler adds them to the layout) and leave through the handler's ``leave-group``.

The layout file (``<groups_dir>/<name>.group.json``, written with ``group_layout.save``) is
made here with no members and a new uuid, the group's volume uuid: its journal (made by the
handler when the first member opens) and its replica at the DR carry it.

As for volumes, every check runs before anything is written, and a refusal (ModelError)
names the key and changes nothing.
"""

from __future__ import annotations

import os
import re
import uuid as uuidlib
from dataclasses import dataclass, replace
from pathlib import Path

from configshell_fb import ExecutionError

from appliance.config_file import field_default
from appliance.statefile import remove_durably
from appliance.volume import group_layout
from appliance.volume.config import VolumeConfig
from appliance.volume.group_layout import GroupLayout, GroupLayoutError
from appliance.volume.promoted_group import (
    member_backstore_commands,
    serve_promoted_group,
    unserve_promoted_group,
)
from targetcli_ext import daemon_config as dc
from targetcli_ext.backstores import group_members
from targetcli_ext.model import Group, ModelError, Site, known_peer, parse_name
from targetcli_ext.units import UnitError, transmitter_unit

# The handler's bitmap chunk (appliance/volume/config.py): members start on chunk boundaries
# so no chunk spans two members (docs/groups.md, "Rules").
CHUNK_BYTES: int = field_default(VolumeConfig, "chunk_size")
DEFAULT_JOURNAL_SIZE: int = field_default(VolumeConfig, "journal_size")
# The handler's rule for a journal_size (appliance/tcmu/cfgstring.py, parse_config).
MIN_JOURNAL_SIZE = 1 << 20
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def active_members(layout: GroupLayout) -> list:
    """The members that have not left (a member that left stays in the layout, retired, so
    the others keep their offsets)."""
    return [m for m in layout.members if not getattr(m, "retired", False)]


def parse_journal_size(value: object) -> int:
    """``256M``, ``1G`` or bytes: at least 1M and a multiple of 4K, as the handler's."""
    how = "give a size with K, M or G of at least 1M, a multiple of 4K, e.g. journal_size=256M"
    m = _SIZE.fullmatch(str(value).strip())
    if isinstance(value, bool) or not m:
        raise ModelError(f"journal_size={value!r} is not a size: {how}")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size < MIN_JOURNAL_SIZE or size % 4096:
        raise ModelError(f"journal_size={value!r} is out of range: {how}")
    return size


def parse_block_size(value: object) -> int:
    text = str(value).strip()
    if text not in ("512", "4096"):
        raise ModelError(f"block_size={value!r}: use 512 or 4096, the members' block size")
    return int(text)


def promoted_layout(value: object) -> GroupLayout:
    """The layout a promoted group replica left (``promoted=``), every member's file there."""
    path = str(value)
    if not group_layout.is_layout_path(path) or not os.path.isabs(path):
        raise ModelError(f"promoted={value!r}: give the promoted group replica's layout, the "
                         f"absolute path ending in {group_layout.SUFFIX} that 'promote' "
                         f"printed")
    try:
        layout = group_layout.load(path)
    except GroupLayoutError as err:
        raise ModelError(f"promoted={value}: {err}") from err
    missing = [m.mirror for m in layout.active_members if not os.path.exists(m.mirror)]
    if missing:
        raise ModelError(f"promoted={value}: member file {missing[0]} is missing: is this the "
                         f"layout 'promote' printed?")
    return layout


def _promoted_notes(notes, layout: GroupLayout, base, peer: str, address: str,
                    journal, size: int) -> None:
    notes.info(f"Created consistency group {layout.name} (uuid {layout.uuid}: the old site's "
               f"'/replication/groups/{layout.name} failback uuid={layout.uuid}' names it), "
               f"journal {journal} of {size} bytes, replicating to peer {peer} ({address}), "
               f"over the promoted members at their offsets:")
    for line in member_backstore_commands(layout):
        notes.info(f"  {line}")
    if base is not None:
        notes.info(f"It holds the image of group {base.lineage} after seq {base.seq}: the new "
                   f"journal records only what changes here, and a failback copies only that.")
    else:
        notes.warning("The promoted layout had no usable promotion marker: the new journal "
                      "marks every chunk, and a failback compares the members by hash.")


def known_group(site: Site, name: str) -> Group:
    if name not in site.groups:
        known = ", ".join(sorted(site.groups)) or "none"
        raise ModelError(f"no consistency group named {name!r} (groups: {known})")
    return site.groups[name]


@dataclass(frozen=True)
class MemberBackstore:
    """A user:mirror backstore that names a group in its cfgstring."""

    backstore: str
    group: str
    mirror: str | None


class GroupOperations:
    """Mixed into ReplicationContext, beside SiteOperations (whose ``store``, ``layout``,
    ``units``, ``storage_objects``, ``ensure_identity`` and certificate checks it uses)."""

    # --- reading ------------------------------------------------------------------------

    def group_layout(self, name: str) -> GroupLayout:
        """The group's layout as the handler keeps it (ModelError when it cannot be read)."""
        try:
            return group_layout.load(self.layout.group_layout(name))
        except GroupLayoutError as err:
            raise ModelError(str(err)) from err

    def member_backstores(self) -> dict[str, MemberBackstore]:
        """Every user:mirror backstore in a group, by backstore name (none when LIO cannot
        be read: the listing must still show)."""
        try:
            found = group_members(self.storage_objects())
        except Exception:           # rtslib without configfs
            return {}
        return {n: MemberBackstore(n, g, m) for n, (g, m) in found.items()}

    def group_of_backstore(self, backstore: str, mirror: str | None = None) -> str | None:
        """The group a backstore is a member of: its cfgstring's ``group=``, or a group
        layout holding its mirror."""
        member = self.member_backstores().get(backstore)
        if member is not None:
            return member.group
        if mirror is None:
            return None
        try:
            groups = self.store.load().groups
        except ModelError:
            return None
        for name in sorted(groups):
            try:
                layout = self.group_layout(name)
            except ModelError:
                continue
            if any(m.mirror == mirror for m in layout.members):
                return name
        return None

    # --- create -------------------------------------------------------------------------

    def create_group(self, name: str, peer: str, journal_size: object, block_size: object,
                     notes, promoted: object = None) -> Group:
        """A new group with no members; with ``promoted`` (a promoted group replica's layout,
        which 'promote' printed) a group over those members at their offsets, taking over the
        promotion's base (appliance/volume/promoted_group.py)."""
        name = parse_name(name, "name")
        peer = parse_name(peer, "peer")
        size = parse_journal_size(journal_size)
        source = None if promoted is None or str(promoted) == "" else \
            promoted_layout(promoted)
        if source is not None:
            if block_size is not None and parse_block_size(block_size) != source.block_size:
                raise ModelError(f"block_size={block_size}: the promoted group's members have "
                                 f"{source.block_size}-byte blocks; leave block_size out")
            bs = source.block_size
        else:
            bs = parse_block_size(512 if block_size is None else block_size)
        layout_path = self.layout.group_layout(name)
        journal = self.layout.group_journal(name)
        tx_path = self.layout.transmitter_toml(name)

        def check(site: Site) -> None:
            if name in site.groups:
                raise ModelError(f"name={name}: a consistency group of that name exists "
                                 f"(/replication/groups/{name})")
            if name in site.volumes:
                raise ModelError(f"name={name}: a replicated volume has that name "
                                 f"(/replication/volumes/{name}); a group's transmitter would "
                                 f"share its unit: choose another name")
            if tx_path.exists():
                raise ModelError(f"name={name}: {tx_path} exists (a transmitter of that name "
                                 f"is configured): choose another name")
            for path in (layout_path, journal):
                if path.exists():
                    raise ModelError(f"name={name}: {path} exists (left by an earlier group "
                                     f"of that name?): move it away or choose another name")
            known_peer(site, peer, to_replicate=True)

        check(self.store.load())
        self._fetch_pending_first(notes)
        why = self.certificate_pending(peer)
        if why is not None:
            raise ModelError(f"peer={peer}: its certificate has not been fetched yet ({why}): "
                             f"the transmitter needs it to authenticate the peer; make it "
                             f"reachable, run '/replication/peers refresh' and create the "
                             f"group again")
        self.ensure_identity()
        with self.store.locked():
            site = self.store.load()
            check(site)
            gid = uuidlib.uuid4()
            try:
                layout = GroupLayout(name, gid, bs, max(1, CHUNK_BYTES // bs),
                                     journal_size=size)
                layout = GroupLayout.from_json(layout.to_json())
            except GroupLayoutError as err:
                raise ModelError(str(err)) from err
            group = Group(name, peer, str(gid), bs, size)
            blocks = max(source.num_blocks, source.align_blocks) if source else layout.align_blocks
            doc = dc.group_transmitter_document(site, group, self.layout,
                                                size_bytes=blocks * bs)
            dc.check_transmitter(doc, tx_path)
            dc.check_replaceable(tx_path)
            self.layout.groups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            base = None
            if source is not None:
                try:
                    layout, base = serve_promoted_group(Path(str(promoted)), layout_path,
                                                        name=name, group_uuid=gid,
                                                        journal_size=size)
                except (GroupLayoutError, OSError) as err:
                    remove_durably(layout_path)
                    raise ModelError(f"promoted={promoted}: {err}") from err
            else:
                group_layout.save(layout_path, layout)
            try:
                dc.write_generated(tx_path, doc)
                new_site = replace(site, groups={**site.groups, name: group})
                self.store.save(new_site)
            except BaseException:
                remove_durably(tx_path)
                if source is not None:      # the promotion's marker goes back where it was
                    unserve_promoted_group(Path(str(promoted)), layout_path, base)
                else:
                    remove_durably(layout_path)
                raise
            receiver_changed = self.receiver_follows(new_site)
        self.reload_running_receiver(receiver_changed, notes)
        if source is None:
            notes.info(f"Created consistency group {name} (uuid {gid}, {bs}-byte blocks, "
                       f"journal {journal} of {size} bytes), replicating to peer {peer} "
                       f"({site.peers[peer].address}); no members yet.")
        else:
            _promoted_notes(notes, layout, base, peer, site.peers[peer].address, journal, size)
        try:
            self.units.start(transmitter_unit(name))
            notes.info(f"Started {transmitter_unit(name)} (it waits for the group's journal, "
                       f"made when the first member's backstore opens).")
        except UnitError as err:
            notes.warning(f"The transmitter did not start: {err}; the group is configured: "
                          f"run 'systemctl start {transmitter_unit(name)}'")
        if source is None:
            notes.info(f"Add members: /backstores/user:mirror create name=<member> "
                       f"size=<size> cfgstring=mirror=<path of its image>;group={name}")
        return group

    # --- members ------------------------------------------------------------------------

    def remove_member(self, name: str, member: str, notes) -> GroupLayout:
        """The handler's ``leave-group``; refused while the member's backstore exists (its
        handler serves it as part of the group)."""
        group = known_group(self.store.load(), name)
        layout = self.group_layout(group.name)
        if not member:
            raise ModelError(f"member= is missing: give one of "
                             f"{', '.join(x.name for x in active_members(layout)) or 'none'}")
        try:
            m = layout.member(member)
        except GroupLayoutError as err:
            raise ModelError(f"member={member}: {err}") from err
        if getattr(m, "retired", False):
            raise ModelError(f"member={member}: it has left group {name} already")
        for b in self.member_backstores().values():
            if b.group == name and (b.backstore == member or b.mirror == m.mirror):
                raise ModelError(f"member={member}: backstore user:mirror/{b.backstore} still "
                                 f"serves it in group {name}: delete "
                                 f"/backstores/user:mirror/{b.backstore} first (the hosts "
                                 f"lose that LUN; its image stays)")
        sock = self.config.sockets.handler                  # type: ignore[attr-defined]
        try:
            self.call(sock, "leave-group", group=name, member=member)  # type: ignore[attr-defined]
        except ExecutionError as err:
            raise ModelError(f"leave-group refused by the handler: {err}") from err
        notes.info(f"Member {member} left group {name}: its image {m.mirror} stays as it is; "
                   f"the DR's copy of it is no longer updated.")
        try:
            return self.group_layout(name)
        except ModelError:
            return layout

    # --- delete -------------------------------------------------------------------------

    def delete_group(self, name: str, notes) -> Group:
        site = self.store.load()
        group = known_group(site, name)
        try:
            layout = self.group_layout(name)
        except ModelError:
            layout = None               # unreadable or gone: nothing of the handler's left
        if layout is not None and active_members(layout):
            members = ", ".join(m.name for m in active_members(layout))
            raise ModelError(f"group {name} has members ({members}): delete their backstores "
                             f"and 'remove member=<name>' each first")
        try:
            self.units.stop(transmitter_unit(name))
        except UnitError as err:
            raise ModelError(f"cannot stop the group's transmitter: {err}") from err
        with self.store.locked():
            site = self.store.load()
            group = known_group(site, name)
            path = self.layout.transmitter_toml(name)
            if dc.is_generated(path):
                remove_durably(path)
            remove_durably(self.layout.group_layout(name))
            new_site = replace(site, groups={n: g for n, g in site.groups.items() if n != name})
            self.store.save(new_site)
            receiver_changed = self.receiver_follows(new_site)
        self.reload_running_receiver(receiver_changed, notes)
        peer = site.peers.get(group.peer)
        where = f"peer {group.peer}" + (f" ({peer.address})" if peer else "")
        notes.info(f"Deleted group {name}: its transmitter is stopped, {path.name} and "
                   f"{self.layout.group_layout(name).name} removed.")
        left = [p for p in (self.layout.group_journal(name), self.layout.group_bitmap(name))
                if p.exists()]
        if left:
            notes.info(f"Still on disk here: {' and '.join(map(str, left))} (remove them "
                       f"before a new group of this name).")
        notes.info(f"At {where}: the group's replica (uuid {group.uuid}) stays until that "
                   f"appliance's admin forgets it.")
        return group

    def apply_group(self, name: str) -> bool:
        """Rewrite the group's transmitter file from site.json (its settings); True when it
        changed. The running transmitter gets the change live from the caller."""
        with self.store.locked():
            site = self.store.load()
            group = known_group(site, name)
            path = self.layout.transmitter_toml(name)
            doc = dc.group_transmitter_document(site, group, self.layout,
                                                size_bytes=self.group_size_bytes(group))
            dc.check_transmitter(doc, path)
            return dc.write_generated(path, doc)

    def group_size_bytes(self, group: Group) -> int:
        """The group's address space now (at least one chunk: the transmitter's file needs a
        size; the transmitter reads the journal's)."""
        try:
            layout = self.group_layout(group.name)
            blocks = max(layout.num_blocks, layout.align_blocks)
        except ModelError:
            blocks = max(1, CHUNK_BYTES // group.block_size)
        return blocks * group.block_size
