"""/replication/groups: the consistency groups replicated from this appliance (docs/groups.md,
docs/shell.md "Consistency groups").

A group is one volume to replication: 'create' writes its layout (no members yet) and its
transmitter's configuration and starts the transmitter (targetcli_ext/group_ops.py). Members
join when their backstore is created with ``group=<name>`` in its cfgstring, and leave with
'remove member=' once their backstore is deleted. 'status' shows each group's replication
state and consistent point, whether a joining member's initial copy runs, and its members.
"""

from __future__ import annotations

from functools import partial

from configshell_fb import ExecutionError
from targetcli.ui_node import UINode

from targetcli_ext.failback import failback_text
from targetcli_ext.group_ops import DEFAULT_JOURNAL_SIZE, active_members, known_group
from targetcli_ext.group_status import group_state, group_summary, group_text
from targetcli_ext.model import Group, ModelError, format_bandwidth
from targetcli_ext.replica_nodes import became_replica, run_operation
from targetcli_ext.status_text import group_entry
from targetcli_ext.steering import complete
from targetcli_ext.volume_sync import SyncGroup


class UIGroups(UINode):
    """
    Consistency groups: several LUNs replicated with one write order, so the DR holds every
    member as of the same write, whatever happens (docs/groups.md). 'create' makes a group
    (its layout and its transmitter); members join when their backstore is created with
    group=<name> in its cfgstring; 'status' shows each group and its members.
    """

    def __init__(self, parent) -> None:
        UINode.__init__(self, "groups", parent)
        self.ctx = parent.ctx
        self.refresh()

    def _groups(self) -> dict[str, Group]:
        try:
            return self.ctx.store.load().groups
        except ModelError as err:
            self.shell.log.error(str(err))
            return {}

    def refresh(self):
        self._children = set()
        for name in sorted(self._groups()):
            UIGroup(name, self)

    def ui_command_refresh(self):
        """
        Re-reads the consistency groups (site.json).
        """
        self.refresh()

    def summary(self):
        count = len(self._children)
        if not count:
            return "Groups: 0", None
        healths = [c.summary()[1] for c in self.children]
        health = True if all(h is True for h in healths) else (
            False if any(h is False for h in healths) else None)
        return f"Groups: {count}", health

    def ui_command_status(self):
        """
        Shows every consistency group, one block each: its transmitter's link and
        replication state, the group's consistent point (the seq up to which the DR holds
        every member), whether a joining member's initial copy is under way, and its
        members (name, size, where each starts in the group's address space).
        """
        groups = self._groups()
        if not groups:
            self.shell.con.display("no consistency groups: create one with "
                                   "'create name=<group> peer=<peer>'")
            return
        self.ctx.snapshot(fresh=True)
        self.shell.con.display("\n".join(group_text(self.ctx, g) for _, g in
                                         sorted(groups.items())))

    def ui_command_create(self, name, peer, journal_size=None, block_size=None,
                          promoted=None):
        """
        Creates a consistency group replicating to a paired peer: writes its layout (a new
        uuid, no members yet) in the groups directory and its transmitter's configuration,
        and starts its transmitter (appliance-transmitter@<name>), which waits for the
        group's journal: the handler makes it when the first member's backstore opens.
        journal_size is the group's journal (default 256M); block_size every member's
        (512 or 4096, default 512).

        Then add members: create each backstore with group=<name> in its cfgstring, e.g.
        /backstores/user:mirror create name=log size=1G
        cfgstring=mirror=/var/lib/appliance/volumes/log.img;group=db

        After a failover, promoted=<layout> (the path 'promote' of a group replica
        printed) makes the group over the promoted members, each at its offset, and takes
        over the promotion's base: the new journal records only what changes here, so the
        old site's failback ('/replication/groups/<name> failback uuid=<this group's
        uuid>') copies back only what changed. It prints the members' backstores to create.

        Refused, with nothing changed: a name in use (a group or a volume), a peer that is
        not paired or whose certificate is not fetched yet, a bad size, a promoted= that is
        not a group replica's layout.

        EXAMPLE
        =======
        create name=db peer=dr
        create name=db peer=dr journal_size=1G block_size=4096
        create name=db peer=primary promoted=/var/lib/appliance/replicas/<uuid>/db.group.json
        """
        self.assert_root()
        size = DEFAULT_JOURNAL_SIZE if journal_size is None else journal_size
        group = run_operation(self, partial(self.ctx.create_group, promoted=promoted), name,
                              peer, size, block_size)
        return self.new_node(UIGroup(group.name, self))

    def ui_complete_create(self, parameters, text, current_param):
        if current_param == "peer":
            try:
                return complete(sorted(self.ctx.store.load().peers), text)
            except ModelError:
                return []
        if current_param == "block_size":
            return complete(["512", "4096"], text)
        if current_param == "journal_size":
            return complete(["256M", "1G", "4G"], text)
        return []

    def ui_command_delete(self, name):
        """
        Deletes an empty consistency group: stops its transmitter, removes its
        configuration and its layout. Refused while it has members (delete their
        backstores and 'remove member=' each first). The group's replica stays at the peer
        until the peer's admin forgets it.

        EXAMPLE
        =======
        delete name=db
        """
        self.assert_root()
        group = run_operation(self, self.ctx.delete_group, name)
        for child in list(self.children):
            if child.name == group.name:
                self.remove_child(child)

    def ui_complete_delete(self, parameters, text, current_param):
        return complete(sorted(self._groups()), text) if current_param == "name" else []


class UIGroup(SyncGroup, UINode):
    """
    One consistency group: 'status' its replication and members, 'info' its uuid, journal,
    layout and members, 'set sync' / 'get sync' its replication mode (one for every member:
    they share one write order), 'remove member=' a member whose backstore is deleted.
    """

    def __init__(self, name: str, parent) -> None:
        UINode.__init__(self, name, parent)
        self.ctx = parent.ctx
        self._define_sync_group()

    def _group(self) -> Group:
        try:
            return known_group(self.ctx.store.load(), self.name)
        except ModelError as err:
            raise ExecutionError(str(err)) from err

    def summary(self):
        try:
            group = known_group(self.ctx.store.load(), self.name)
        except ModelError as err:
            return str(err), False
        view, _, layout, why = group_state(self.ctx, group)
        return group_summary(group, view, layout, why)

    def ui_command_status(self):
        """
        Shows this group's replication state (link, state, journal, in sync or what it
        lacks), its consistent point, whether a joining member's initial copy is under way,
        and its members.
        """
        self.ctx.snapshot(fresh=True)
        self.shell.con.display(group_text(self.ctx, self._group()))

    def ui_command_info(self):
        """
        Shows the group's uuid (what the DR's replica of the group carries), its peer,
        journal, layout file and block size, and its members (name, size, offset, image).
        """
        group = self._group()
        layout_path = self.ctx.layout.group_layout(group.name)
        rows = [("name", group.name), ("uuid", group.uuid), ("peer", group.peer),
                ("journal", f"{self.ctx.layout.group_journal(group.name)} "
                            f"({format_bandwidth(group.journal_size)})"),
                ("layout", str(layout_path)), ("block size", str(group.block_size))]
        for key, value in rows:
            self.shell.con.display(f"{key + ':':<13}{value}")
        try:
            layout = self.ctx.group_layout(group.name)
        except ModelError as err:
            self.shell.con.display(f"{'members:':<13}unknown: {err}")
            return
        if not layout.members:
            self.shell.con.display(f"{'members:':<13}none yet")
        for i, m in enumerate(layout.members):
            label = "members:" if i == 0 else ""
            gone = " (left the group)" if getattr(m, "retired", False) else ""
            self.shell.con.display(
                f"{label:<13}{m.name}: {m.num_blocks * layout.block_size} bytes at block "
                f"{m.offset_blocks}, image {m.mirror}{gone}")

    def ui_command_remove(self, member=None):
        """
        Takes a member out of the group (the handler's leave-group): the group's journal no
        longer carries its writes and the DR's copy of it is no longer updated; its image
        stays. Refused while the member's backstore exists: delete
        /backstores/user:mirror/<member> first.

        EXAMPLE
        =======
        remove member=log
        """
        self.assert_root()
        run_operation(self, self.ctx.remove_member, self.name, member or "")
        self.ctx.snapshot(fresh=True)

    def ui_complete_remove(self, parameters, text, current_param):
        if current_param != "member":
            return []
        try:
            return complete([m.name for m in active_members(self.ctx.group_layout(self.name))],
                            text)
        except ModelError:
            return []

    # --- failback -------------------------------------------------------------------------

    def ui_command_failback(self, uuid=None):
        """
        After a failover of this group: makes this site the DR of the promoted peer's group
        over this group's OLD members, so that only what changed on either side is copied
        back (docs/groups.md, "Failover and failback"). uuid is the uuid of the group the
        peer made over the promoted members ('/replication/groups create ... promoted='
        printed it; '/replication/groups/<name> info' there shows it).

        Stops this group's transmitter and removes it, and makes a replica of the same name
        under /replication/replicas: this group's layout as its mirror (the members stay
        where they are), the group's old journal as failback_journal (from it the receiver
        proves what the members hold beyond the promoted image), and the peer's identity as
        the only primary admitted. The receiver takes it live.

        Refused, with nothing changed, while a member's backstore still exists (the handler
        holds the group's journal and members): delete each /backstores/user:mirror/<member>
        first.

        EXAMPLE
        =======
        failback uuid=2b9d0c4e-7f1a-4c3b-9e8d-5a6f7b8c9d0e
        """
        self.assert_root()
        done = run_operation(self, self.ctx.failback_group, self.name, uuid)
        self.shell.con.display(failback_text(done))
        return became_replica(self)

    # --- set / get sync (volume_sync.SyncGroup, with the group's uuid as the volume) ------

    def ui_command_set(self, group=None, **parameter):
        """
        Sets configuration parameters of a group. 'set sync' sets this consistency group's
        replication mode, one for all its members: the handler applies it live and saves
        it itself; a parameter not given keeps its value. 'set global' sets the shell's
        preferences.

        mode=async | sync | sync-on-flush; fallback=5s: the longest a write waits for the
        DR before the group runs async (sync-degraded); hold=true: never fall back.

        EXAMPLE
        =======
        set sync mode=sync-on-flush fallback=500ms
        set sync mode=async
        """
        if group == "sync" and parameter:
            self._set_sync(parameter)
            return None
        return UINode.ui_command_set(self, group, **parameter)

    def ui_command_get(self, group=None, *parameter):
        """
        Gets the value of configuration parameters of a group. 'get sync' shows the
        replication mode the handler runs this consistency group with (mode, fallback,
        hold) and the mode in effect.

        EXAMPLE
        =======
        get sync
        get sync mode effective
        """
        if group == "sync":
            self._get_sync(parameter)
            return None
        return UINode.ui_command_get(self, group, *parameter)

    def _backstore(self) -> str:
        """What the handler's set-sync takes as "volume" for a group: its uuid."""
        return self._group().uuid

    def _handler_sync(self) -> dict:
        group = self._group()
        status = self._handler("status")
        entry = group_entry({"handler": status if isinstance(status, dict) else {}},
                            group.name, group.uuid)
        if entry is None:
            raise ExecutionError(f"the handler does not serve group {group.name} (no member's "
                                 f"backstore is open, or a handler without groups): create a "
                                 f"member with group={group.name} in its cfgstring; nothing "
                                 f"changed")
        sync = entry.get("sync")
        if not isinstance(sync, dict):
            raise ExecutionError(f"the handler does not report a replication mode for group "
                                 f"{group.name}: update appliance-handler; nothing changed")
        return sync
