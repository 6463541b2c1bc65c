"""/replication/replicas on a DR appliance: the replicas its receiver keeps, and failover.

Each replica the receiver reports is a node, named by the primary's volume name when the
receiver reports it (``name``), else by its uuid. The commands ask the running receiver over
its control socket (``receiver.sock``) with ``{"volume": <uuid>}``; the receiver closes that
volume's session first, leaves the others alone, and refuses with the reason when the step is
unsafe (docs/failover.md). A refusal changes nothing.

Each replica node also has the point-in-time commands (docs/failover.md, "Point in time"):
the ``retention`` group (``set retention retain=24h max=200G``, ``get retention``: applied
live by the receiver's ``set-retention`` and saved in the replica's state.json, not in
site.json), ``recover at=...`` (the receiver's ``recover``: an image file of that point
beside the replica, while it goes on replicating), and the recoverable range in ``status``
and ``info``.

The coordinator adds ``UIReplicas(self)`` to ``UIReplication``: the parent node carries the
``ReplicationContext`` as ``parent.ctx``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from configshell_fb import ExecutionError
from targetcli.ui_node import UINode

from appliance.replication.dr.failback_admission import KEEP_CHOICES
from appliance.replication.dr.retention import iso_time
from appliance.replication.dr.retention_settings import (
    RetentionSettingsError,
    format_duration,
    format_size,
    parse_retain,
    parse_size,
)
from appliance.volume import group_layout
from appliance.volume.identity import mirror_volume_uuid
from targetcli_ext import status_text
from targetcli_ext.model import ModelError, parse_bool
from targetcli_ext.steering import (
    call_daemon,
    complete,
    nothing_changed,
    shell_value,
    show_group,
    unreachable,
)

JOURNAL_DIR = "/var/lib/appliance/journals"

# The 'retention' group: parameter -> (the receiver's key, configshell type, description).
RETENTION = {
    "retain": ("retain_s", "retainage",
               "How far back points stay recoverable, e.g. 24h, 7d, 90m; none: no limit by "
               "age. Applied live by the receiver and saved with the replica."),
    "max": ("retain_bytes", "retainsize",
            "The most disk the retained before-images take, e.g. 200G (powers of 1024); "
            "none: no limit by size. With both none, retention is off."),
}
WINDOW = ("window", "window", "The points recoverable now: oldest and newest seq and primary "
                              "time (UTC), and the disk the window takes.")


def _replica_views(ctx, fresh: bool = False) -> list[status_text.VolumeView]:
    return [v for v in ctx.views(fresh) if v.role == "dr"]


class UIReplicas(UINode):
    """
    The replicas this appliance keeps as the DR site of its primaries, as its receiver
    reports them: each named by the primary's volume name (or its uuid), with its state
    (consistent, inconsistent, promoted) and the failover commands. 'refresh' picks up
    replicas that appeared since.
    """

    def __init__(self, parent) -> None:
        UINode.__init__(self, "replicas", parent)
        self.ctx = parent.ctx
        self.refresh()

    def refresh(self):
        self._children = set()
        for view in _replica_views(self.ctx, fresh=True):
            UIReplica(view.name, view.uuid or view.name, self)

    def summary(self):
        views = _replica_views(self.ctx)
        if not views:
            return "Replicas: 0", None
        good = sum(1 for v in views if _replica_health(v) is True)
        health = True if good == len(views) else \
            False if any(_replica_health(v) is False for v in views) else None
        return f"Replicas: {len(views)} ({good} consistent and connected)", health

    def ui_command_create(self, name, uuid, mirror, size_bytes, block_size="512",
                          failback_journal=None):
        """
        Receives a primary's volume into a block device (or file) made here by the admin,
        instead of a replica the receiver provisions in its directory: uuid is the volume's
        uuid ('/replication/volumes/<name> info' on the primary), mirror the device, whose
        size and block size must equal the primary volume's. The receiver takes it live
        (the other replicas' sessions stay up).

        failback_journal: after a failover, this site's OLD journal of that mirror (from
        when this site was its primary; its backstore deleted first): the receiver proves
        from it what the mirror holds, so the new primary copies only what changed.
        '/replication/volumes/<name> failback' does all of this for a volume the shell
        replicated.

        EXAMPLE
        =======
        create name=vol1 uuid=6f1c2a52-... mirror=/dev/vg0/vol1-replica size_bytes=10737418240
        create name=vol1 uuid=... mirror=/dev/vg0/vol1 size_bytes=10737418240 failback_journal=/var/lib/appliance/journals/vol1.jnl
        """
        self.assert_root()
        add = getattr(self.ctx, "add_replica", None)
        if add is None:
            raise ExecutionError("this shell cannot configure replicas yet; nothing changed")
        if failback_journal:
            add = functools.partial(add, failback_journal=failback_journal)
        run_operation(self, add, name, uuid, mirror, size_bytes, block_size)
        self.refresh()
        self.shell.log.info(f"Created replica {name} of volume {uuid} on {mirror}"
                            + (f", failback from journal {failback_journal}"
                               if failback_journal else "") + ".")

    def ui_command_status(self):
        """
        Shows every replica, one block each: primary, link, replica state and whether it
        is in sync; if not, what it lacks, why and what to do.
        """
        views = _replica_views(self.ctx, fresh=True)
        if not views:
            self.shell.con.display("no replicas: no receiver answers on this appliance, or "
                                   "it keeps none yet")
            return
        self.shell.con.display("\n".join(
            status_text.render_volume(v, now=self.ctx.clock(), tz=self.ctx.tz)
            for v in views))


def _replica_health(view: status_text.VolumeView) -> bool | None:
    """Green when consistent and connected; red when it needs the admin; plain otherwise
    (catching up, or promoted: served here, replicating nothing)."""
    state = view.replication.split(" ")[0]
    if state == "consistent":
        return view.link == "connected" or view.health is True
    if state == "promoted":
        return None
    return view.health


class UIReplica(UINode):
    """
    One replica of a primary's volume: 'status' shows it; 'promote' makes its mirror this
    site's primary copy (failover), 'demote' makes it a replica again, 'rollback' restores
    its last consistent image, 'invalidate' asks the primary for a full copy, 'forget'
    stops receiving it.
    """

    def __init__(self, name: str, uuid: str, parent: UIReplicas) -> None:
        UINode.__init__(self, name, parent)
        self.ctx = parent.ctx
        self.uuid = uuid
        for param, (_, kind, description) in RETENTION.items():
            self.define_config_group_param("retention", param, kind, description)
        self.define_config_group_param("retention", *WINDOW, writable=False)

    def _view(self, fresh: bool = False) -> status_text.VolumeView | None:
        for view in _replica_views(self.ctx, fresh):
            if view.uuid == self.uuid:
                return view
        return None

    def _status(self) -> dict:
        receiver = self.ctx.snapshot().get("receiver") or {}
        return (receiver.get("volumes") or {}).get(self.uuid) or {}

    def summary(self):
        view = self._view()
        if view is None:
            return "the receiver does not report this replica now: run 'refresh'", False
        parts = [view.replication, view.link or "unknown link"]
        if view.in_sync is not None:
            parts.append("in sync" if view.in_sync else "behind")
        if self.name != self.uuid:
            parts.append(self.uuid)
        return ", ".join(parts), _replica_health(view)

    def ui_command_status(self):
        """
        Shows this replica's primary, link, state (consistent, inconsistent since when,
        promoted) and whether it is in sync; if not, what it lacks, why and what to do.
        """
        view = self._view(fresh=True)
        if view is None:
            self.shell.con.display(f"the receiver does not report {self.name} now: run "
                                   f"'refresh' in /replication/replicas")
            return
        self.shell.con.display(status_text.render_volume(view, now=self.ctx.clock(),
                                                         tz=self.ctx.tz))
        retention = self._status().get("retention")
        if isinstance(retention, dict):
            self.shell.con.display(f"  retention:{retention_text(retention)}")

    def ui_command_info(self):
        """Shows the replica's uuid, name, primary, size, generation and retention window."""
        st = self._status()
        retention = st.get("retention")
        rows = [("name", self.name), ("uuid", self.uuid), ("primary", st.get("primary")),
                ("state", st.get("state")), ("size", st.get("size_bytes")),
                ("generation", st.get("generation")),
                ("retention", retention_text(retention).strip() if isinstance(retention, dict)
                 else None)]
        group = st.get("group")
        if isinstance(group, dict) and isinstance(group.get("members"), list):
            rows.append(("members", status_text.group_members_text(group)))
        for key, value in rows:
            self.shell.con.display(f"{key + ':':<13}{'unknown' if value is None else value}")

    # --- point in time: the retention group, recover ------------------------------------

    def ui_command_set(self, group=None, **parameter):
        """
        Sets configuration parameters of a group. 'set retention' sets how much of this
        replica's history the DR keeps recoverable (docs/failover.md, "Point in time"):
        retain= by age, max= by size (the window is whichever is shorter); none for no
        limit, both none for off (the default). The receiver applies it live (replication
        goes on) and keeps it with the replica; a value refused changes nothing. A window
        turned on starts with the next write the replica applies. 'set global' sets the
        shell's preferences. Run with just a group name to list its parameters.

        EXAMPLE
        =======
        set retention retain=24h max=200G
        set retention max=none
        set retention retain=none max=none

        SEE ALSO
        ========
        get recover
        """
        if group != "retention" or not parameter:
            return UINode.ui_command_set(self, group, **parameter)
        self.assert_root()
        unknown = sorted(set(parameter) - set(RETENTION))
        if unknown:
            raise ExecutionError(f"no parameter {', '.join(unknown)} in group 'retention' "
                                 f"(parameters: {', '.join(RETENTION)}); nothing changed")
        args = {}
        for param, text in parameter.items():
            parse = parse_retain if param == "retain" else parse_size
            try:
                args[RETENTION[param][0]] = parse(text, param)
            except RetentionSettingsError as err:
                raise ExecutionError(nothing_changed(str(err))) from err
        result = self._receiver("set-retention", **args)
        window = result.get("retention") if isinstance(result, dict) else None
        for param in parameter:
            shown = _setting(param, window if isinstance(window, dict) else
                             {RETENTION[param][0]: args[RETENTION[param][0]]})
            self.shell.con.display(f"Parameter {param} is now '{shown}'.")
        if isinstance(window, dict):
            self.shell.log.info(f"Retention of {self.name}:{retention_text(window)}")
        return None

    def ui_command_get(self, group=None, *parameter):
        """
        Gets the value of configuration parameters of a group. 'get retention' shows this
        replica's retention settings (retain, max) and the window recoverable now (window:
        oldest and newest seq and primary time, in UTC). Run with no group to list the
        groups.

        EXAMPLE
        =======
        get retention
        get retention window

        SEE ALSO
        ========
        set recover
        """
        if group != "retention":
            return UINode.ui_command_get(self, group, *parameter)
        def values():
            window = self._retention_status()
            return lambda p: _window(window) if p == WINDOW[0] else _setting(p, window)
        show_group(self, "retention", [*RETENTION, WINDOW[0]], parameter, values, WINDOW[0])
        return None

    def ui_setgroup_retention(self, parameter, value):
        """configshell's setter of group 'retention' (``set`` above does the work)."""
        self.ui_command_set("retention", **{parameter: value})

    def ui_getgroup_retention(self, parameter):
        window = self._retention_status()
        return _window(window) if parameter == WINDOW[0] else _setting(parameter, window)

    def ui_type_retainage(self, value=None, enum=False, reverse=False):
        """A duration with s, m, h or d, or none."""
        if reverse:
            return "none" if not value else format_duration(float(value))
        if value is None:
            return ["none", "1h", "24h", "7d"] if enum else "DURATION|none"
        return value            # parsed in set (parse_retain), which names the parameter

    def ui_type_retainsize(self, value=None, enum=False, reverse=False):
        """A size with K, M, G or T (powers of 1024), or none."""
        if reverse:
            return "none" if not value else format_size(int(value))
        if value is None:
            return ["none", "10G", "100G", "1T"] if enum else "SIZE|none"
        return value

    def ui_type_window(self, value=None, enum=False, reverse=False):
        return value if value is not None or not enum else []

    def _retention_status(self) -> dict:
        window = (self.ctx.snapshot(fresh=True).get("receiver") or {}).get("volumes", {})
        window = (window.get(self.uuid) or {}).get("retention")
        if not isinstance(window, dict):
            raise ExecutionError(f"the receiver does not report {self.name}'s retention now "
                                 f"(not running, or an older release): check 'systemctl "
                                 f"status appliance-receiver'")
        return window

    def ui_command_recover(self, at=None):
        """
        Writes the primary's image at a point of this replica's retention window to a file
        beside the replica (recovered-<seq>.img, read-only), while replication goes on:
        at=seq:<n> for the image after that write, or at=<UTC time> (ISO 8601, e.g.
        2026-12-07T05:10:00Z) for the image after the last write at or before it. 'get
        retention window' shows what can be recovered; a point outside it is refused with
        the range. Prints how to look at the image through LIO (read-only) and how to
        remove it afterwards.

        EXAMPLE
        =======
        recover at=seq:48120
        recover at=2026-12-07T05:10:00Z

        SEE ALSO
        ========
        get set
        """
        self.assert_root()
        if not at:
            raise ExecutionError("say which point: recover at=seq:<n> or at=<UTC time>, e.g. "
                                 "at=2026-12-07T05:10:00Z ('get retention window' shows the "
                                 "range); nothing changed")
        result = self._receiver("recover", at=at)
        self.shell.con.display(recover_text(self.name, result))

    # --- failover -----------------------------------------------------------------------

    def ui_command_promote(self):
        """
        Failover: makes this replica's mirror the primary copy of the volume on this site.
        The receiver applies what its journal holds, marks the replica promoted with its
        generation raised, and from then on refuses the old primary ('promoted'), so the
        two sites can never both write it. Refused for an inconsistent replica ('rollback'
        first) and one that never held an image. Prints what to do next: serve the mirror
        through a user:mirror backstore with a new journal (docs/failover.md).
        """
        self.assert_root()
        size = self._status().get("size_bytes")
        result = self._receiver("promote")
        self.shell.con.display(promote_text(self.name, self.uuid, result, size))

    def ui_command_demote(self):
        """
        Makes a promoted replica a DR replica again, once the volume's primary runs on the
        other site and this mirror is no longer served here (remove its backstore first):
        the new primary then resyncs it.
        """
        self.assert_root()
        result = self._receiver("demote")
        generation = result.get("demoted_keeping_generation") if isinstance(result, dict) \
            else None
        gen = f" (generation {generation} kept)" if generation is not None else ""
        self.shell.log.info(f"{self.name} is a DR replica again{gen}: the primary resyncs "
                            f"it when it connects.")

    def ui_command_rollback(self):
        """
        Restores the last consistent image of an inconsistent replica (a resync or full
        copy was under way) from its undo log, so the mirror can be promoted or mounted.
        What the interrupted resync had copied is given up; the primary resyncs it again.
        """
        self.assert_root()
        result = self._receiver("rollback")
        seq = result.get("rolled_back_to_seq") if isinstance(result, dict) else None
        at = f" (seq {seq})" if seq is not None else ""
        self.shell.log.info(f"{self.name} is back at its last consistent image{at}: it can "
                            f"be promoted now.")

    def ui_command_invalidate(self):
        """
        Makes the primary's next contact a full copy of the volume: for a replica that
        misses records the primary no longer holds (e.g. restored from an old backup). Its
        current image stays recoverable ('rollback') until the copy completes.
        """
        self.assert_root()
        result = self._receiver("invalidate")
        seq = result.get("invalidated_at_seq") if isinstance(result, dict) else None
        at = f" (its image at seq {seq} is kept until then)" if seq is not None else ""
        self.shell.log.info(f"{self.name}: the primary's next contact is a full copy{at}.")

    def ui_command_resolve(self, keep=None):
        """
        After a split brain in a failback (this site was written after the promotion, and
        the new primary has written since; 'status' shows it with the report of both change
        sets), says which side wins:

        keep=new-primary: the new primary's image; its next contact copies over this site's
        writes made since the promotion, which are kept with their data in a lost-write
        report first.

        keep=this-site: this site's writes; this mirror takes nothing from the new primary,
        which stays refused (docs/failover.md, split brain).

        Refused, with nothing changed, when no split brain was found.

        EXAMPLE
        =======
        resolve keep=new-primary
        resolve keep=this-site
        """
        self.assert_root()
        if keep not in KEEP_CHOICES:
            given = "missing" if keep is None else f"{keep!r} is not a choice"
            raise ExecutionError(f"keep is {given}: give keep=new-primary (the new primary's "
                                 f"image wins) or keep=this-site (this site's writes win); "
                                 f"nothing changed")
        primary = self._status().get("primary") or "the new primary"
        result = self._receiver("resolve", keep=keep)
        report = result.get("report") if isinstance(result, dict) else None
        seen = f" (both change sets: {report})" if report else ""
        if keep == "new-primary":
            self.shell.log.info(
                f"Split brain of {self.name} resolved: {primary}'s image wins{seen}. Its "
                f"transmitter retries by itself; at its next contact this site's writes since "
                f"the promotion are kept with their data in a lost-write report, then copied "
                f"over with what {primary} changed. 'status' shows the copy.")
        else:
            self.shell.log.info(
                f"Split brain of {self.name} resolved: this site's writes win{seen}. This "
                f"mirror takes nothing from {primary}, which stays refused ('split-brain'); "
                f"see docs/failover.md for making this site's image the primary again.")

    def ui_complete_resolve(self, parameters, text, current_param):
        return complete(list(KEEP_CHOICES), text) if current_param == "keep" else []

    def ui_command_forget(self, remove_data="false"):
        """
        Stops receiving this replica: the receiver drops its session and configuration.
        remove_data=true also deletes the replica's files the receiver provisioned (mirror,
        journal, state); by default they stay on disk. The primary's transmitter is then
        refused ('unknown-volume') until the volume is replicated elsewhere.

        EXAMPLE
        =======
        forget
        forget remove_data=true
        """
        self.assert_root()
        remove = shell_value(parse_bool, remove_data, "remove_data")
        own = self._admin_made()
        if own is not None:          # on the admin's device: out of receiver.toml, data kept
            if remove:
                raise ExecutionError(f"{self.name} is on {own.mirror}, a device the admin "
                                     f"made: forget keeps its data (remove_data=false), wipe "
                                     f"it yourself if you must; nothing changed")
            run_operation(self, self.ctx.remove_replica, own.name)
            self.shell.log.info(f"Forgot replica {self.name} ({self.uuid}); {own.mirror} is "
                                f"left as it is.")
            return self._gone()
        result = self._receiver("forget", remove_data=remove)
        removed = result.get("removed") if isinstance(result, dict) else None
        kept = result.get("kept") if isinstance(result, dict) else None
        self.shell.log.info(f"Forgot replica {self.name} ({self.uuid}).")
        if removed:
            self.shell.con.display("removed: " + ", ".join(map(str, removed)))
        if kept:
            self.shell.con.display("kept on disk: " + ", ".join(map(str, kept)))
        return self._gone()

    def _gone(self):
        self.parent.remove_child(self)
        if getattr(self.shell, "_current_node", None) is self:
            return self.parent          # the shell stood on the forgotten node
        return None

    def _admin_made(self):
        """The replica of site.json (one the admin made on a block device) of this uuid."""
        try:
            replicas = getattr(self.ctx.store.load(), "replicas", None) or {}
        except ModelError:
            return None
        return next((r for r in replicas.values() if str(r.uuid) == self.uuid), None)

    def ui_complete_forget(self, parameters, text, current_param):
        return complete(["true", "false"], text) if current_param == "remove_data" else []

    def _receiver(self, cmd: str, **args) -> object:
        sock = self.ctx.config.sockets.receiver
        try:
            result = call_daemon(self.ctx, sock, cmd, volume=self.uuid, **args)
        except ExecutionError as err:
            if unreachable(err):
                raise ExecutionError(f"the receiver does not answer ({err}): check "
                                     f"'systemctl status appliance-receiver'; nothing "
                                     f"changed") from err
            said = str(err)
            if said.startswith(f"{cmd} refused"):       # the receiver names the command
                raise ExecutionError(nothing_changed(f"{self.name}: {said}")) from err
            raise ExecutionError(nothing_changed(
                f"{cmd} of {self.name} refused by the receiver: {said}")) from err
        self.ctx.snapshot(fresh=True)
        return result


def _setting(param: str, window: dict) -> str:
    value = window.get(RETENTION[param][0])
    if not value:
        return "none"
    return format_duration(float(value)) if param == "retain" else format_size(int(value))


def _point(point: object) -> str:
    if not isinstance(point, dict):
        return "?"
    shown = point.get("time_utc")
    if not shown and isinstance(point.get("time"), int | float):
        shown = iso_time(round(point["time"] * 1e9))
    return f"seq {point.get('seq')} ({shown or 'time unknown'})"


def _window(window: dict) -> str:
    if not window.get("enabled"):
        return "none (retention is off)"
    if not window.get("oldest") or not window.get("newest"):
        return "none yet (it starts with the next write applied, once the replica is " \
               "consistent)"
    return (f"{_point(window['oldest'])} to {_point(window['newest'])}, "
            f"{_mib(int(window.get('bytes') or 0))} on disk")


def _mib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def retention_text(window: dict) -> str:
    """' retain=24h max=200G, recoverable seq a (t) to seq b (t), n bytes on disk'."""
    if not window.get("enabled"):
        return " off"
    return (f" retain={_setting('retain', window)} max={_setting('max', window)}, "
            f"recoverable: {_window(window)}")


def recover_text(name: str, result: object) -> str:
    """What a recover wrote and what the admin does next (the receiver's next_steps)."""
    r = result if isinstance(result, dict) else {}
    lines = [f"Recovered {name} at seq {r.get('seq')} ({r.get('time_utc') or 'time unknown'}, "
             f"primary clock): {r.get('path')}"]
    if r.get("next_steps"):
        lines.append(str(r["next_steps"]).rstrip("\n"))
    return "\n".join(lines)


def run_operation(node, operation, *args) -> object:
    """One of the context's site operations, its notes logged; refused: nothing changed."""
    from targetcli_ext.operations import Notes
    notes = Notes()
    try:
        return operation(*args, notes)
    except ModelError as err:
        raise ExecutionError(f"{err}; nothing changed") from err
    except OSError as err:
        raise ExecutionError(f"cannot write in {node.ctx.config.state_dir}: {err} (run as "
                             f"root); nothing changed") from err
    finally:
        for level, text in notes.lines:
            (node.shell.log.warning if level == "warning" else node.shell.log.info)(text)


def became_replica(node) -> object:
    """After a failback: the volume's (or group's) node goes, /replication/replicas shows
    the replica that took its place; the node the shell moves to if it stood on it."""
    parent = node.parent
    parent.remove_child(node)
    replicas = next((c for c in parent.parent.children if c.name == "replicas"), None)
    if replicas is not None:
        replicas.refresh()
    if getattr(node.shell, "_current_node", None) is node:
        return parent
    return None


def _group_promote_steps(r: dict) -> list[str]:
    """A consistency group replica promoted: its members are served as a group of this site's,
    at their offsets, taking over the promotion's base (docs/groups.md)."""
    layout = r["mirror"]
    try:
        name = group_layout.load(layout).name
    except group_layout.GroupLayoutError:
        name = Path(layout).name[:-len(group_layout.SUFFIX)]
    former = r.get("former_primary") or "the old primary"
    return [
        "Next:",
        "  1. a group of this site over the promoted members, each at its offset (it takes "
        "over the promotion's base: its new journal records only what changes from now on); "
        "it prints its uuid and each member's backstore to create:",
        f"     /replication/groups create name={name} peer=<{former}'s site> "
        f"promoted={layout}",
        "  2. create those backstores and export them to the hosts as on the primary site",
        f"  3. once {former}'s site is back, make it the DR over its old members: there, "
        f"delete each member's backstore, then /replication/groups/{name} failback "
        f"uuid=<the uuid step 1 printed>: only what changed on either side is copied back "
        f"(docs/groups.md)",
    ]


def promote_text(name: str, uuid: str, result: object, size_bytes: int | None) -> str:
    """What a promotion did and what the admin does next (docs/failover.md, section 1)."""
    r = result if isinstance(result, dict) else {}
    mirror = r.get("mirror") or "<the replica's mirror>"
    lines = [f"Promoted {name} ({uuid}): {mirror} holds the primary's image"
             + (f" after seq {r['promoted_at_seq']}" if r.get("promoted_at_seq") is not None
                else "")
             + (f", generation {r['generation']}" if r.get("generation") is not None else "")
             + "."]
    if r.get("former_primary"):
        lines.append(f"{r['former_primary']!r} is fenced off: the receiver refuses it "
                     f"('promoted').")
    if group_layout.is_layout_path(r.get("mirror")):
        return "\n".join(lines + _group_promote_steps(r))
    backstore = name if name != uuid else f"vol-{uuid[:8]}"
    size = size_bytes if size_bytes is not None else "<size_bytes>"
    old = name if name != uuid else "<volume>"
    # The uuid the handler gives a backstore over that mirror path (the rule is the
    # handler's own): the old site's failback names it.
    new_uuid = mirror_volume_uuid(mirror) if r.get("mirror") else "<its uuid>"
    former = r.get("former_primary") or "the old primary"
    lines += [
        "Next:",
        "  1. serve the mirror with a NEW journal (never the replica's): the handler takes "
        "over the promoted image from the marker beside the mirror and records only what "
        "changes from now on",
        f"     /backstores/user:mirror create name={backstore} size={size} "
        f"cfgstring=mirror={mirror};journal={JOURNAL_DIR}/{backstore}.jnl",
        f"     (that volume's uuid: {new_uuid})",
        "  2. export it to the hosts (iSCSI target, LUN, ACLs) as on the primary site",
        f"  3. once {former}'s site is back, make it the DR over its old mirror: there, "
        f"delete /backstores/user:mirror/{old}, then /replication/volumes/{old} failback "
        f"uuid={new_uuid}",
        f"  4. then here: /replication/volumes create backstore={backstore} peer=<that "
        f"site>: only what changed on either side is copied back (docs/failover.md, "
        f"failback)",
    ]
    extra = {k: v for k, v in r.items() if k not in (
        "volume", "promoted_at_seq", "generation", "former_primary", "mirror", "time",
        "next_steps", "name")}
    if extra:
        lines.append("receiver said: " + json.dumps(extra, sort_keys=True, default=str))
    return "\n".join(lines)
