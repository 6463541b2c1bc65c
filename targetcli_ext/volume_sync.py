"""The ``sync`` group of /replication/volumes/<name>: the volume's replication mode
(docs/shell.md, "Replication modes"; the handler's side: docs/volume.md, "Synchronous modes").

``set sync mode=sync fallback=5s hold=false`` parses every value first (targetcli_ext/model.py),
takes what is not given from the handler's status, then asks the handler (``set-sync``), which
saves the setting itself in the volume's bitmap header, as a journal pause: nothing goes to
site.json, and a refused value or a handler that does not answer changes nothing.
``get sync`` shows what the handler runs with now, and the mode in effect (``sync-degraded``
after a fall-back, with since when and why).
"""

from __future__ import annotations

from pathlib import Path

from configshell_fb import ExecutionError

from targetcli_ext import status_text
from targetcli_ext.model import (
    MODE_NAMES,
    SYNC_SETTINGS,
    ModelError,
    changed_sync,
    format_fallback,
    parse_bool,
    parse_fallback,
    parse_sync_mode,
)
from targetcli_ext.steering import call_daemon, nothing_changed, show_group, unreachable

# (parameter, type, description) in the order 'set sync' lists them; 'effective' is
# read-only (the handler's state, not a setting).
PARAMETERS = (
    ("mode", "syncmode",
     "When a host write completes: async (once local; the DR follows), sync (once the DR "
     "holds it durably too), sync-on-flush (ordinary writes as async; a FUA write or a "
     "SYNCHRONIZE CACHE once the DR holds everything before it). Saved by the handler."),
    ("fallback", "fallback",
     "The longest a write waits for the DR, e.g. 500ms, 5s, 1m (10ms to 1h, default 10s); "
     "then the volume runs async (sync-degraded) until the DR has caught up."),
    ("hold", "holdflag",
     "true: never fall back; writes wait for as long as the DR does not answer (host I/O "
     "stops). Only where a zero recovery point matters more than availability."),
)
EFFECTIVE = ("effective", "effective",
             "The mode in effect now: the mode, or sync-degraded after a fall-back (since "
             "when and why), and whether writes are held.")
HANDLER_UNIT = "appliance-handler"


class SyncGroup:
    """Mixed into UIVolume: configshell finds the group's getters, setters and types by
    name. The node provides ``name``, ``ctx``, ``shell`` and ``_saved_volume``."""

    def _define_sync_group(self) -> None:
        for param, kind, description in PARAMETERS:
            self.define_config_group_param("sync", param, kind, description)
        self.define_config_group_param("sync", *EFFECTIVE, writable=False)

    # --- set / get ----------------------------------------------------------------------

    def _set_sync(self, parameter: dict[str, str]) -> None:
        self.assert_root()
        unknown = sorted(set(parameter) - set(SYNC_SETTINGS))
        if unknown:
            raise ExecutionError(f"no parameter {', '.join(unknown)} in group 'sync' "
                                 f"(parameters: {', '.join(SYNC_SETTINGS)}); nothing changed")
        for param, text in parameter.items():     # each value refused before any call
            self._sync_value(param, text)
        current = None if set(parameter) == set(SYNC_SETTINGS) else self._handler_sync()
        try:
            settings = changed_sync(current, parameter)
        except ModelError as err:
            raise ExecutionError(nothing_changed(str(err))) from err
        result = self._handler("set-sync", volume=self._backstore(),
                               mode=settings.mode.value, fallback_s=settings.fallback_s,
                               hold=settings.hold)
        self.ctx.snapshot(fresh=True)
        entry = result.get("sync") if isinstance(result, dict) else None
        shown = entry if isinstance(entry, dict) else settings.as_dict()
        for param in parameter:
            self.shell.con.display(f"Parameter {param} is now '{_shown(param, shown)}'.")
        if isinstance(result, dict) and result.get("changed") is False:
            self.shell.log.info(f"The replication mode of {self.name} already was so: "
                                f"nothing changed.")
            return
        self.shell.log.info(f"Replication mode of {self.name} is now {_summary(shown)}; the "
                            f"handler keeps it across restarts.")
        if shown.get("hold") and shown.get("mode") != "async":
            self.shell.log.warning(f"hold=true: while the DR does not answer, host writes to "
                                   f"{self.name} wait for it, however long; 'set sync "
                                   f"hold=false' falls back to async after the fallback time "
                                   f"instead.")

    def _get_sync(self, parameter: tuple[str, ...]) -> None:
        def values():
            entry = self._handler_sync()
            return lambda p: self._effective(entry) if p == EFFECTIVE[0] else _shown(p, entry)
        show_group(self, "sync", [p for p, _, _ in PARAMETERS] + [EFFECTIVE[0]], parameter,
                   values, EFFECTIVE[0])

    def ui_setgroup_sync(self, parameter, value):
        """configshell's setter of group 'sync' (``set`` does the work)."""
        self._set_sync({parameter: value})

    def ui_getgroup_sync(self, parameter):
        entry = self._handler_sync()
        return self._effective(entry) if parameter == EFFECTIVE[0] else entry.get(
            {"fallback": "fallback_s"}.get(parameter, parameter))

    # configshell's value types: Tab the choices (enum=True); 'get' a value (reverse=True);
    # 'set' passes the text on (parsed by model.py in _set_sync).

    def ui_type_syncmode(self, value=None, enum=False, reverse=False):
        if reverse:
            return str(value)
        if value is None:
            return list(MODE_NAMES) if enum else "|".join(MODE_NAMES)
        return value

    def ui_type_fallback(self, value=None, enum=False, reverse=False):
        if reverse:
            return format_fallback(value) if isinstance(value, int | float) else str(value)
        if value is None:
            return ["500ms", "2s", "5s", "10s", "30s", "1m"] if enum else "DURATION"
        return value

    def ui_type_holdflag(self, value=None, enum=False, reverse=False):
        if reverse:
            return str(value).lower()
        if value is None:
            return ["false", "true"] if enum else "true|false"
        return value

    def ui_type_effective(self, value=None, enum=False, reverse=False):
        if reverse:
            return str(value)
        return None if enum else "MODE"

    # --- the handler --------------------------------------------------------------------

    def _sync_value(self, param: str, text: str) -> None:
        parse = {"mode": parse_sync_mode, "fallback": parse_fallback,
                 "hold": lambda v: parse_bool(v, "hold")}[param]
        try:
            parse(text)
        except ModelError as err:
            raise ExecutionError(nothing_changed(str(err))) from err

    def _backstore(self) -> str:
        vol = self._saved_volume(required=False)
        return getattr(vol, "backstore", None) or self.name

    def _handler(self, cmd: str, **args) -> object:
        """A command of the handler's control socket; refused or unanswered: ExecutionError
        saying that nothing changed."""
        sock = Path(self.ctx.config.sockets.handler)
        try:
            return call_daemon(self.ctx, sock, cmd, **args)
        except ExecutionError as err:
            if unreachable(err):
                raise ExecutionError(f"the handler does not answer ({err}): check "
                                     f"'systemctl status {HANDLER_UNIT}'; nothing "
                                     f"changed") from err
            raise ExecutionError(nothing_changed(f"{cmd} refused by the handler: {err}")) \
                from err

    def _handler_sync(self) -> dict:
        """The handler's ``sync`` status entry of this volume."""
        backstore = self._backstore()
        status = self._handler("status")
        vols = (status.get("volumes") if isinstance(status, dict) else None) or {}
        vol = vols.get(backstore)
        if not isinstance(vol, dict):
            served = ", ".join(sorted(vols)) or "none"
            raise ExecutionError(f"the handler does not serve backstore {backstore!r} (it "
                                 f"serves: {served}): check that it is in "
                                 f"/backstores/user:mirror; nothing changed")
        entry = vol.get("sync")
        if not isinstance(entry, dict):
            raise ExecutionError(f"the handler does not report a replication mode for "
                                 f"{backstore} (a release without replication modes?): "
                                 f"update appliance-handler; nothing changed")
        return entry

    def _effective(self, entry: dict) -> str:
        return status_text.sync_effective(entry, now=self.ctx.clock(), tz=self.ctx.tz)


def _shown(param: str, entry: dict) -> str:
    if param == "fallback":
        return format_fallback(entry.get("fallback_s"))
    if param == "hold":
        return "true" if entry.get("hold") else "false"
    return str(entry.get(param) or "unknown")


def _summary(entry: dict) -> str:
    mode = entry.get("mode") or "unknown"
    if mode == "async":
        return "async: writes complete once local, the DR follows"
    if entry.get("hold"):
        return f"{mode}, holding writes while the DR does not answer (no fall-back)"
    return f"{mode}, falling back to async after {format_fallback(entry.get('fallback_s'))}"

