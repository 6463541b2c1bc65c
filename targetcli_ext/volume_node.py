"""One replicated volume under /replication/volumes: its status, and the commands that
steer it (docs/shell.md, "Steering a volume").

Every command asks the running daemons over their control sockets (the shell never opens
their files, and no service is stopped by hand): shipping is the volume's transmitter's
(``transmitter-<name>.sock``), journaling the handler's. What must survive a restart is
persisted first: ``pause``/``resume`` of shipping and the ``replication`` settings go to
``site.json`` and the transmitter's generated TOML (``SiteStore.update_volume`` +
``ReplicationContext.apply_volume``), then live to the transmitter; a daemon's refusal undoes
the saved change, so a refused command changes nothing. The handler persists a journal pause
itself, and the replication mode (the ``sync`` group: targetcli_ext/volume_sync.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from configshell_fb import ExecutionError
from targetcli.ui_node import UINode

from targetcli_ext import status_text
from targetcli_ext.failback import failback_text
from targetcli_ext.model import (
    ModelError,
    format_bandwidth,
    format_blackout,
    parse_bandwidth,
    parse_blackout,
    parse_bool,
)
from targetcli_ext.replica_nodes import became_replica, run_operation
from targetcli_ext.steering import (
    call_daemon,
    complete,
    nothing_changed,
    shell_value,
    transmitter_socket,
    unreachable,
)
from targetcli_ext.volume_sync import SyncGroup

WHAT = ("shipping", "journal")
SETTINGS = ("bandwidth_limit", "blackout")


class UIVolume(SyncGroup, UINode):
    """
    One replicated volume: 'status' shows its block of the replication status; 'pause',
    'resume', 'resync', 'verify' and 'discard' steer its replication with the daemons
    running; 'set replication' / 'get replication' its bandwidth limit and blackout windows;
    'set sync' / 'get sync' its replication mode (async, sync, sync-on-flush).
    """

    def __init__(self, name: str, parent) -> None:
        UINode.__init__(self, name, parent)
        self.ctx = parent.ctx
        self.define_config_group_param(
            "replication", "bandwidth_limit", "bandwidth",
            "Most bytes per second shipped to the DR, with K, M or G (powers of 1024), e.g. "
            "50M; 'none' for no limit. Applied live and saved.")
        self.define_config_group_param(
            "replication", "blackout", "blackout",
            "Windows of local time when nothing is shipped (writes queue in the journal), "
            "HH:MM-HH:MM, comma-separated, e.g. 08:00-18:00; 'none' for none. Applied live "
            "and saved.")
        self._define_sync_group()

    def summary(self):
        view = self._view()
        if view is not None:
            return view.summary(), view.health
        try:
            saved = self._saved_volume(required=False)
        except ExecutionError:
            saved = None
        if saved is not None:
            return (f"its transmitter does not answer: 'systemctl status "
                    f"appliance-transmitter@{self.name}'", False)
        return "no daemon reports this volume now: run 'refresh'", False

    # --- status -------------------------------------------------------------------------

    def ui_command_status(self):
        """
        Shows this volume's role, peer, link, replication state, journal fill and whether
        the DR copy is in sync; if not, what it lacks, why and what to do.
        """
        view = self._view(fresh=True)
        if view is None:
            self.shell.con.display(f"{self.name}: {self.summary()[0]}")
            return
        self.shell.con.display(status_text.render_volume(view, now=self.ctx.clock(),
                                                         tz=self.ctx.tz))

    def ui_command_info(self):
        """
        Shows the volume's uuid (what the DR's 'replicas create uuid=' and, after a
        failover, the old site's 'failback uuid=' take), its backstore, journal and mirror,
        and its peer.
        """
        view = self._view(fresh=True)
        saved = self._saved_volume(required=False)
        backstore_name = saved.backstore if saved is not None else self.name
        try:
            found = self.ctx.backstore(backstore_name)
        except ModelError:
            found = None
        uuid = view.uuid if view is not None and view.uuid else (
            str(found.uuid) if found is not None else None)
        rows = [("name", self.name), ("uuid", uuid),
                ("backstore", f"user:mirror/{backstore_name}" if found is not None
                 else f"{backstore_name} (not in LIO now)"),
                ("journal", _journal_of(self.ctx, found)),
                ("mirror", found.config.mirror if found is not None else None),
                ("size", found.size_bytes if found is not None else None),
                ("peer", saved.peer if saved is not None else
                 (view.peer if view is not None and view.peer else "none (not replicated)"))]
        for key, value in rows:
            self.shell.con.display(f"{key + ':':<13}{'unknown' if value is None else value}")

    # --- steering -----------------------------------------------------------------------

    def ui_command_pause(self, what="shipping"):
        """
        Pauses replication of this volume until 'resume'.

        what=shipping (the default): the transmitter stops shipping; host writes go on and
        queue in the journal (when it fills, the volume logs to its dirty bitmap and a
        resync follows the resume). Saved: a restarted transmitter stays paused.

        what=journal: the handler stops journaling this volume; writes go to the mirror and
        the dirty bitmap only, as during a journal overflow. Saved by the handler. 'resume
        what=journal' journals again, and the dirty regions are resynced.

        EXAMPLE
        =======
        pause
        pause what=journal

        SEE ALSO
        ========
        resume, discard, status
        """
        self.assert_root()
        what = self._what(what)
        if what == "journal":
            self._journal("pause-journal", "paused")
            return
        result, saved = self._persist_and_apply({"paused": True}, "pause", {},
                                                what="pausing shipping")
        if result is None:
            self.shell.log.info(f"Shipping of {self.name} is paused (saved). Its transmitter "
                                f"does not answer now: it starts paused.")
        else:
            self.shell.log.info(f"Shipping of {self.name} is paused{_saved(saved)}; host "
                                f"writes queue in the journal. 'resume' ships again.")

    def ui_complete_pause(self, parameters, text, current_param):
        return complete(list(WHAT), text) if current_param == "what" else []

    def ui_command_resume(self, what="shipping"):
        """
        Resumes what 'pause' paused.

        what=shipping (the default): the transmitter ships again from where it stopped;
        after a 'discard' it first resyncs the dirty regions. Saved.

        what=journal: the handler journals this volume's writes again; the regions written
        while paused are resynced.

        EXAMPLE
        =======
        resume
        resume what=journal
        """
        self.assert_root()
        what = self._what(what)
        if what == "journal":
            self._journal("resume-journal", "resumed")
            return
        result, saved = self._persist_and_apply({"paused": False}, "resume", {},
                                                what="resuming shipping")
        if result is None:
            self.shell.log.info(f"Shipping of {self.name} is resumed (saved). Its transmitter "
                                f"does not answer now: it ships once it runs "
                                f"(systemctl start appliance-transmitter@{self.name}).")
        elif isinstance(result, dict) and result.get("needs_resync"):
            self.shell.log.info(f"Shipping of {self.name} is resumed{_saved(saved)}; a resync "
                                f"ships the regions of the discarded records first.")
        else:
            self.shell.log.info(f"Shipping of {self.name} is resumed{_saved(saved)}.")

    def ui_complete_resume(self, parameters, text, current_param):
        return complete(list(WHAT), text) if current_param == "what" else []

    def ui_command_resync(self):
        """
        Starts a full resync: every chunk of the volume is marked dirty and shipped to the
        DR once connected (chunks the DR already holds identically are skipped when the
        transmitter compares hashes). Use it when the DR copy is suspect. 'status' shows
        its progress, rate and ETA.
        """
        self.assert_root()
        result = self._transmitter("resync", {}, what="the resync")
        r = result if isinstance(result, dict) else {}
        dirty = r.get("dirty_bytes")
        size = f" ({status_text.human_bytes(dirty)} dirty)" if isinstance(dirty, int) else ""
        when = f", shipped {r['shipped']}" if r.get("shipped") else ""
        self.shell.log.info(f"Full resync of {self.name}: every chunk is dirty{size}{when}; "
                            f"'status' shows its progress.")

    def ui_command_verify(self, repair="false"):
        """
        Compares the DR copy with this volume, region by region, over the live link, while
        replication goes on. repair=true also copies each differing region to the DR. It
        runs in the background: 'status' shows its progress and what it found.

        EXAMPLE
        =======
        verify
        verify repair=true
        """
        self.assert_root()
        repair = shell_value(parse_bool, repair, "repair")
        result = self._transmitter("verify", {"repair": repair}, what="verify")
        if isinstance(result, dict) and result.get("started"):
            regions = result.get("regions")
            count = f" of {regions} regions" if regions is not None else ""
            self.shell.log.info(f"Verify{count} of {self.name} started"
                                f"{' with repair' if repair else ''}; 'status' shows its "
                                f"progress and outcome.")
            return
        detail = status_text.verify_detail(result if isinstance(result, dict) else {},
                                           now=self.ctx.clock(), tz=self.ctx.tz)
        self.shell.log.info(f"Verify of {self.name}: "
                            f"{detail[1] if detail else _said(result).lstrip(': ')}")

    def ui_complete_verify(self, parameters, text, current_param):
        return complete(["true", "false"], text) if current_param == "repair" else []

    def ui_command_discard(self):
        """
        Drops the journal records of this volume that are queued for the DR (an aborted
        mirror), freeing their journal space, without touching the other volumes. Their
        regions are marked dirty first, so the volume then needs a resync: 'status' says
        so, and 'resume' ships them. Refused unless shipping is paused ('pause' first).
        """
        self.assert_root()
        result = self._transmitter("discard", {}, what="discard")
        r = result if isinstance(result, dict) else {}
        if r.get("discarded_records") == 0 and not r.get("needs_resync"):
            self.shell.log.info(f"No journal records of {self.name} were queued: nothing "
                                f"discarded.")
            return
        records = r.get("discarded_records")
        nbytes = r.get("discarded_bytes")
        what = (f"{records} queued journal records" if records is not None
                else "the queued journal records")
        held = f" ({status_text.human_bytes(nbytes)} of journal freed)" \
            if isinstance(nbytes, int) else ""
        self.shell.log.info(f"Discarded {what} of {self.name}{held}. Their regions are dirty: "
                            f"it needs a resync, which 'resume' starts.")

    # --- failback -------------------------------------------------------------------------

    def ui_command_failback(self, uuid=None):
        """
        After a failover: makes this site the DR of the promoted peer over this volume's
        OLD mirror, so that only what changed is copied back (docs/failover.md). uuid is
        the new primary's volume uuid (the line 'promote' printed on the promoted site).

        Stops this volume's transmitter and removes it (as 'delete' in
        /replication/volumes), and makes a replica of the same name under
        /replication/replicas: this mirror, its size and block size, this volume's old
        journal as failback_journal (from it the receiver proves what the mirror holds
        beyond the promoted image), and the peer's identity as the only primary admitted.
        The receiver takes it live; then the peer's transmitter connects and 'status' of
        the replica shows the failback.

        Refused, with nothing changed, while the backstore still exists (its handler holds
        the journal and mirror): delete /backstores/user:mirror/<name> first.

        EXAMPLE
        =======
        failback uuid=6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91
        """
        self.assert_root()
        done = run_operation(self, self.ctx.failback_volume, self.name, uuid)
        self.shell.con.display(failback_text(done))
        return became_replica(self)

    # --- settings: set/get replication --------------------------------------------------

    def ui_command_set(self, group=None, **parameter):
        """
        Sets configuration parameters of a group. 'set replication' changes this volume's
        replication settings: each value is checked, then saved (site.json and the
        transmitter's configuration) and applied live; a value refused by the shell or the
        transmitter changes nothing. 'set sync' sets its replication mode: the handler
        applies it live and saves it itself; a parameter not given keeps its value. 'set
        global' sets the shell's preferences. Run with just a group name to list its
        parameters.

        mode=async: a write completes once it is local; the DR follows (the default).
        mode=sync: a write completes once the DR holds it durably too.
        mode=sync-on-flush: ordinary writes as async; a FUA write or a SYNCHRONIZE CACHE
        completes once the DR holds everything written before it.
        fallback=5s: the longest a write waits for the DR; then the volume runs async
        (sync-degraded) until the DR has caught up. hold=true: never fall back (host
        writes wait while the DR does not answer).

        EXAMPLE
        =======
        set replication bandwidth_limit=50M
        set replication blackout=08:00-18:00,20:00-22:00
        set replication bandwidth_limit=none blackout=none
        set sync mode=sync fallback=5s hold=false
        set sync mode=sync-on-flush fallback=500ms
        set sync mode=async

        SEE ALSO
        ========
        get
        """
        if group == "sync" and parameter:
            self._set_sync(parameter)
            return None
        if group != "replication" or not parameter:
            return UINode.ui_command_set(self, group, **parameter)
        self.assert_root()
        unknown = sorted(set(parameter) - set(SETTINGS))
        if unknown:
            raise ExecutionError(f"no parameter {', '.join(unknown)} in group 'replication' "
                                 f"(parameters: {', '.join(SETTINGS)}); nothing changed")
        changes = {}
        for param, text in parameter.items():
            try:
                changes[param] = self.get_type_method(
                    self.get_group_param("replication", param)["type"])(text)
            except ValueError as err:
                raise ExecutionError(str(err)) from err
        result, _ = self._persist_and_apply(changes, "set", None, what="the new settings")
        for param, value in changes.items():
            shown = self.get_type_method(self.get_group_param("replication", param)["type"])(
                value, reverse=True)
            self.shell.con.display(f"Parameter {param} is now '{shown}'.")
        if result is None:
            self.shell.log.info(f"Saved. The transmitter of {self.name} does not answer now: "
                                f"the settings take effect when it runs.")

    def ui_command_get(self, group=None, *parameter):
        """
        Gets the value of configuration parameters of a group. 'get replication' shows the
        saved bandwidth limit and blackout windows; 'get sync' the replication mode the
        handler runs with (mode, fallback, hold) and the mode in effect (effective:
        sync-degraded after a fall-back, since when and why). Run with no group to list
        the groups.

        EXAMPLE
        =======
        get replication
        get sync
        get sync mode effective

        SEE ALSO
        ========
        set
        """
        if group == "sync":
            self._get_sync(parameter)
            return None
        return UINode.ui_command_get(self, group, *parameter)

    def ui_setgroup_replication(self, parameter, value):
        """configshell's setter of group 'replication' (``set`` above does the work)."""
        self.ui_command_set("replication", **{parameter: value})

    def ui_getgroup_replication(self, parameter):
        vol = self._saved_volume()
        value = getattr(vol, parameter)
        return list(value) if parameter == "blackout" else value

    def ui_type_bandwidth(self, value=None, enum=False, reverse=False):
        """A rate per second with K, M or G (powers of 1024), or none."""
        if reverse:
            return format_bandwidth(value)
        if value is None:
            return ["none", "10M", "50M", "100M", "1G"] if enum else "RATE|none"
        try:
            return parse_bandwidth(value)
        except ValueError as err:
            raise ValueError(f"{err}; nothing changed") from err

    def ui_type_blackout(self, value=None, enum=False, reverse=False):
        """HH:MM-HH:MM windows, comma-separated, or none."""
        if reverse:
            return format_blackout(value)
        if value is None:
            return ["none", "08:00-18:00", "22:00-06:00"] if enum else "HH:MM-HH:MM,...|none"
        try:
            return list(parse_blackout(value))
        except ValueError as err:
            raise ValueError(f"{err}; nothing changed") from err

    # --- helpers ------------------------------------------------------------------------

    def _view(self, fresh: bool = False) -> status_text.VolumeView | None:
        """This volume as the daemons report it (a DR replica of the same name is another
        volume: /replication/replicas)."""
        for view in self.ctx.views(fresh):
            if view.name == self.name and view.role != "dr":
                return view
        return None

    def _what(self, what: str) -> str:
        if what not in WHAT:
            raise ExecutionError(f"what={what!r}: use what=shipping (the default) or "
                                 f"what=journal; nothing changed")
        return what

    def _saved_volume(self, required: bool = True):
        try:
            site = self.ctx.store.load()
        except ModelError as err:
            raise ExecutionError(f"{err}; nothing changed") from err
        vol = (getattr(site, "volumes", None) or {}).get(self.name)
        if vol is None and required:
            raise ExecutionError(
                f"{self.name} is not a volume created in /replication/volumes (its "
                f"transmitter is configured by hand, in its TOML file): its settings are "
                f"changed there; nothing changed")
        return vol

    def _transmitter_socket(self) -> Path:
        """``transmitter-<name>.sock``; else the socket of the transmitter that reports
        this volume's uuid (one named otherwise, e.g. by hand)."""
        path = transmitter_socket(self.ctx, self.name)
        if path.exists():
            return path
        view = self._view()
        if view is not None and view.uuid:
            for sock_name, tx in (self.ctx.snapshot().get("transmitters") or {}).items():
                if tx.get("volume_uuid") == view.uuid:
                    return transmitter_socket(self.ctx, sock_name)
        return path

    def _transmitter(self, cmd: str, args: dict, *, what: str) -> object:
        """A transmitter command that changes nothing saved: refused, nothing changed."""
        sock = self._transmitter_socket()
        try:
            result = call_daemon(self.ctx, sock, cmd, **args)
        except ExecutionError as err:
            if unreachable(err):
                raise ExecutionError(
                    f"the transmitter of {self.name} does not answer ({err}): check "
                    f"'systemctl status appliance-transmitter@{self.name}'; nothing "
                    f"changed") from err
            raise ExecutionError(nothing_changed(
                f"{what} refused by the transmitter of {self.name}: {err}")) from err
        self.ctx.snapshot(fresh=True)
        return result

    def _journal(self, cmd: str, done: str) -> None:
        result = self._handler(cmd, volume=self._backstore())
        self.ctx.snapshot(fresh=True)
        if isinstance(result, dict) and result.get("changed") is False:
            self.shell.log.info(f"Journaling of {self.name} was already {done}: nothing "
                                f"changed.")
        elif cmd == "pause-journal":
            self.shell.log.info(f"Journaling of {self.name} is paused (the handler keeps it "
                                f"so across restarts): writes go to the mirror and the dirty "
                                f"bitmap. 'resume what=journal' journals again.")
        else:
            self.shell.log.info(f"Journaling of {self.name} is resumed; the regions written "
                                f"meanwhile are resynced.")

    def _persist_and_apply(self, changes: dict, cmd: str, args: dict | None, *,
                           what: str) -> tuple[object | None, bool]:
        """Save ``changes`` (site.json, then the transmitter's TOML), then send ``cmd`` to
        the running transmitter (``args`` None: the settings, as saved). Returns its result,
        or None when the transmitter does not answer (the saved configuration takes effect
        when it starts). A refusal restores what was saved. A volume whose transmitter was
        configured by hand (not in site.json) is changed live only, and the shell says so.
        The second value says whether the change was saved."""
        store = self.ctx.store
        old = self._saved_volume(required=False)
        if old is None:
            return self._live_only(changes, cmd, args, what=what), False
        try:
            new = store.update_volume(self.name, **changes)
        except ModelError as err:
            raise ExecutionError(f"{err}; nothing changed") from err
        except OSError as err:
            raise ExecutionError(f"cannot save {store.path}: {err}; nothing changed") from err

        def undo() -> None:
            with contextlib.suppress(ModelError, OSError, ExecutionError):
                store.update_volume(self.name, **{k: getattr(old, k) for k in changes})
                self.ctx.apply_volume(self.name)

        try:
            self.ctx.apply_volume(self.name)
        except (ExecutionError, ModelError, OSError) as err:
            undo()
            raise ExecutionError(f"cannot write the transmitter's configuration of "
                                 f"{self.name}: {err}; nothing changed") from err
        if args is None:
            args = {"bandwidth_limit": new.bandwidth_limit, "blackout": list(new.blackout)}
        try:
            result = call_daemon(self.ctx, self._transmitter_socket(), cmd, **args)
        except ExecutionError as err:
            if unreachable(err):
                return None, True
            undo()
            raise ExecutionError(nothing_changed(
                f"{what} refused by the transmitter of {self.name}: {err}")) from err
        self.ctx.snapshot(fresh=True)
        return (result if result is not None else {}), True

    def _live_only(self, changes: dict, cmd: str, args: dict | None, *,
                   what: str) -> object:
        if args is None:
            args = {k: (list(v) if isinstance(v, list | tuple) else v)
                    for k, v in changes.items()}
        result = self._transmitter(cmd, args, what=what)
        self.shell.log.warning(f"{self.name} was not created in /replication/volumes (its "
                               f"transmitter is configured by hand): changed live only, not "
                               f"saved; its TOML file still says what a restart does.")
        return result if result is not None else {}


def _journal_of(ctx, found) -> str | None:
    """A backstore's journal; a group member's is its group's (docs/groups.md)."""
    if found is None:
        return None
    group = getattr(found.config, "group", None)
    if group:
        return f"{ctx.layout.group_journal(group)} (group {group}'s: /replication/groups/{group})"
    return found.config.journal


def _saved(saved: bool) -> str:
    return " (saved)" if saved else ""


def _said(result: object) -> str:
    """What a daemon returned, in a few words (its keys and values), or nothing."""
    if not isinstance(result, dict) or not result:
        return ""
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in result.items()
             if isinstance(v, str | int | float | bool) and k not in ("ok", "volume")]
    return f": {', '.join(parts)}" if parts else ""
