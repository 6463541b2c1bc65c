"""/replication/monitoring: the appliance's Prometheus endpoint and alerts (appliance-exporter,
docs/monitoring.md), as the admin sets and reads them (docs/shell.md, "Monitoring").

Two parameter groups, as a volume's ``replication`` group: ``exporter`` (address, port,
interval) and ``alerts`` (the thresholds and the webhook). ``set`` checks every value
(targetcli_ext/model.py), then saves site.json, renders exporter.toml and restarts the exporter
(targetcli_ext/monitoring.py); a refusal, by the shell or because the exporter did not start
with the new settings, changes nothing. ``status`` asks the running exporter; ``info`` shows
the saved settings.
"""

from __future__ import annotations

import datetime as dt

from configshell_fb import ExecutionError
from targetcli.ui_node import UINode

from targetcli_ext import status_text
from targetcli_ext.daemon_config import is_generated
from targetcli_ext.model import (
    ALERT_SETTINGS,
    EXPORTER_SETTINGS,
    ModelError,
    Monitoring,
    format_duration,
)
from targetcli_ext.operations import Notes
from targetcli_ext.steering import complete, nothing_changed
from targetcli_ext.units import EXPORTER_UNIT

GROUPS = {"exporter": EXPORTER_SETTINGS, "alerts": ALERT_SETTINGS}

# (group, parameter, type, description) in the order 'set <group>' lists them.
PARAMETERS = (
    ("exporter", "address", "ip",
     "The IP address the metrics endpoint listens on: one of this appliance's (its management "
     "address), or 127.0.0.1 (the default: this appliance only). 0.0.0.0 listens on every "
     "interface and must be given explicitly."),
    ("exporter", "port", "port", "The TCP port of the metrics endpoint (default 9477)."),
    ("exporter", "interval", "duration",
     "How often the alerts are evaluated, from 0.2s to 60s (default 2s)."),
    ("alerts", "journal_high_water", "percent",
     "JournalHighWater is raised when a volume's journal is this full (1 to 100, default 80)."),
    ("alerts", "journal_clear", "percent",
     "JournalHighWater clears when the journal drains below this; at least 1 below "
     "journal_high_water (default 70)."),
    ("alerts", "recovery_point_age", "duration",
     "RecoveryPointAge is raised when the DR's copy is older than this, e.g. 5m (default)."),
    ("alerts", "link_down", "duration",
     "LinkDown is raised when a volume's link has been down this long, e.g. 60s (default)."),
    ("alerts", "webhook", "url",
     "An http:// or https:// URL every alert is POSTed to (JSON) when raised and cleared; "
     "'none' for no webhook (the default)."),
    ("alerts", "webhook_timeout", "duration",
     "How long one delivery to the webhook may take, up to 60s (default 5s)."),
    ("alerts", "webhook_queue", "count",
     "How many undelivered alerts are kept for the webhook; when full the oldest is dropped "
     "(default 1000)."),
)

# What Tab offers for each parameter's value.
EXAMPLES = {
    "address": ["127.0.0.1", "::1"], "port": ["9477"], "interval": ["1s", "2s", "5s", "10s"],
    "journal_high_water": ["80", "90", "95"], "journal_clear": ["60", "70", "85"],
    "recovery_point_age": ["1m", "5m", "15m", "1h"], "link_down": ["30s", "60s", "5m"],
    "webhook": ["none", "https://", "http://"], "webhook_timeout": ["5s", "10s", "30s"],
    "webhook_queue": ["1000", "10000"],
}


def saved_value(m: Monitoring, param: str) -> object:
    """A parameter's value in the saved settings (None: no webhook)."""
    hook = m.webhook
    return {"address": m.address, "port": m.port, "interval": m.interval,
            "journal_high_water": m.alerts.journal_high_water_percent,
            "journal_clear": m.alerts.journal_clear_percent,
            "recovery_point_age": m.alerts.recovery_point_age_s,
            "link_down": m.alerts.link_down_s,
            "webhook": hook.url if hook else None,
            "webhook_timeout": hook.timeout_s if hook else None,
            "webhook_queue": hook.queue_size if hook else None}[param]


class UIMonitoring(UINode):
    """
    The appliance's Prometheus metrics endpoint and its alerts (appliance-exporter): where
    it listens ('set exporter'), the alert thresholds and the webhook alerts are posted to
    ('set alerts'), the active alerts and the webhook's deliveries ('status'), the saved
    settings ('info'). Every change is checked, saved and applied by restarting the
    exporter; if it does not start with it, nothing changes.
    """

    def __init__(self, parent) -> None:
        UINode.__init__(self, "monitoring", parent)
        self.ctx = parent.ctx
        for group, param, kind, description in PARAMETERS:
            self.define_config_group_param(group, param, kind, description)

    # --- ls -----------------------------------------------------------------------------

    def _status(self, fresh: bool = False) -> dict | None:
        """The exporter's status: asked (``fresh``), else from the daemons' snapshot when it
        carries it (one round of calls for a whole ``ls``)."""
        if not fresh:
            snap = self.ctx.snapshot()
            if "exporter" in snap:
                return snap["exporter"] if isinstance(snap["exporter"], dict) else None
        return self.ctx.exporter_status()

    def summary(self):
        status = self._status()
        if status is None:
            return f"exporter does not answer: 'systemctl status {EXPORTER_UNIT}'", False
        listen = status.get("listen") or "listen address unknown"
        alerts = len(status.get("alerts") or [])
        if alerts:
            return f"{listen}, alerts: {alerts} active", False
        return f"{listen}, alerts: none", True

    # --- status and info ----------------------------------------------------------------

    def ui_command_status(self):
        """
        Shows what the running exporter reports: where it listens, when it last evaluated
        the alerts, each active alert (severity, name, since when, message), the webhook's
        deliveries (delivered, waiting, failed attempts, dropped, last error) and the daemons
        it could not ask.
        """
        status = self._status(fresh=True)
        sock = self.ctx.layout.exporter_socket
        if status is None:
            state = "does not answer on" if sock.exists() else "is not running (no"
            self.shell.con.display(
                f"exporter: {state} {sock}{')' if not sock.exists() else ''}: check "
                f"'systemctl status {EXPORTER_UNIT}' and 'journalctl -u {EXPORTER_UNIT}'")
            return
        self.shell.con.display(status_lines(status, now=self.ctx.clock(), tz=self.ctx.tz))

    def ui_command_info(self):
        """
        Shows the saved monitoring settings (site.json), the exporter's configuration file
        and whether its unit runs.
        """
        m = self._saved()
        a = m.alerts
        hook = m.webhook
        path = self.ctx.layout.exporter_toml
        written = "" if not path.exists() or is_generated(path) else \
            " (written by hand: the settings here do not reach it)"
        rows = [
            ("listen", f"{m.listen} (metrics: http://{m.listen}/metrics)"),
            ("interval", format_duration(m.interval)),
            ("alerts", f"journal_high_water={a.journal_high_water_percent:g}% "
                       f"journal_clear={a.journal_clear_percent:g}% "
                       f"recovery_point_age={format_duration(a.recovery_point_age_s)} "
                       f"link_down={format_duration(a.link_down_s)}"),
            ("webhook", "none" if hook is None else
             f"{hook.url} (timeout {format_duration(hook.timeout_s)}, queue "
             f"{hook.queue_size})"),
            ("file", f"{path}{written}" if path.exists() else f"{path} (not written yet)"),
            ("unit", f"{EXPORTER_UNIT} "
                     f"({'running' if self.ctx.units.is_active(EXPORTER_UNIT) else 'not running'})"),
        ]
        for key, value in rows:
            self.shell.con.display(f"{key + ':':<10}{value}")

    # --- set / get ----------------------------------------------------------------------

    def ui_command_set(self, group=None, **parameter):
        """
        Sets configuration parameters of a group: 'exporter' (address, port, interval) or
        'alerts' (journal_high_water, journal_clear, recovery_point_age, link_down, webhook,
        webhook_timeout, webhook_queue). Each value is checked, then saved (site.json and
        exporter.toml) and the exporter restarted with it; if it does not start (e.g. the
        port is in use) it gets the previous settings back and the error is shown. Run
        with just a group name to list its parameters; 'set global' sets the shell's
        preferences.

        Durations take s, m or h (60s, 5m); percentages a number (80 or 80%); webhook an
        http(s) URL or none.

        EXAMPLE
        =======
        set exporter address=192.0.2.10 port=9477
        set alerts journal_high_water=80 journal_clear=70 recovery_point_age=5m link_down=60s
        set alerts webhook=https://ops.example/hook
        set alerts webhook=none

        SEE ALSO
        ========
        get, status, info
        """
        if group not in GROUPS or not parameter:
            return UINode.ui_command_set(self, group, **parameter)
        self.assert_root()
        unknown = sorted(set(parameter) - set(GROUPS[group]))
        if unknown:
            raise ExecutionError(f"no parameter {', '.join(unknown)} in group '{group}' "
                                 f"(parameters: {', '.join(GROUPS[group])}); nothing changed")
        notes = Notes()
        try:
            saved = self.ctx.set_monitoring(dict(parameter), notes)
        except ModelError as err:
            self._say(notes)
            raise ExecutionError(nothing_changed(str(err))) from err
        except OSError as err:
            self._say(notes)
            raise ExecutionError(f"cannot write in {self.ctx.config.state_dir}: {err} (run as "
                                 f"root); nothing changed") from err
        for param in parameter:
            kind = self.get_group_param(group, param)["type"]
            shown = self.get_type_method(kind)(saved_value(saved, param), reverse=True)
            self.shell.con.display(f"Parameter {param} is now '{shown}'.")
        self._say(notes)
        return None

    def ui_complete_set(self, parameters, text, current_param):
        group = parameters.get("group")
        if current_param == "group" or group not in GROUPS:
            return UINode.ui_complete_set(self, parameters, text, current_param)
        if current_param in GROUPS[group]:
            return complete(EXAMPLES[current_param], text)
        return complete([f"{p}=" for p in GROUPS[group] if p not in parameters], text)

    def ui_setgroup_exporter(self, parameter, value):
        self.ui_command_set("exporter", **{parameter: value})

    def ui_setgroup_alerts(self, parameter, value):
        self.ui_command_set("alerts", **{parameter: value})

    def ui_getgroup_exporter(self, parameter):
        return saved_value(self._saved(), parameter)

    def ui_getgroup_alerts(self, parameter):
        return saved_value(self._saved(), parameter)

    # configshell's value types: 'get' shows a saved value (reverse=True), Tab the examples
    # (enum=True); 'set' passes the text on to the model, which parses it.

    def ui_type_ip(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "IP", "address", str)

    def ui_type_port(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "PORT", "port", str)

    def ui_type_duration(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "DURATION", "interval", format_duration)

    def ui_type_percent(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "PERCENT", "journal_high_water",
                      lambda v: f"{v:g}%")

    def ui_type_url(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "URL|none", "webhook", str)

    def ui_type_count(self, value=None, enum=False, reverse=False):
        return _typed(value, enum, reverse, "COUNT", "webhook_queue", str)

    # --- helpers ------------------------------------------------------------------------

    def _saved(self) -> Monitoring:
        try:
            return self.ctx.store.load().monitoring
        except ModelError as err:
            raise ExecutionError(f"{err}; nothing changed") from err

    def _say(self, notes: Notes) -> None:
        for level, text in notes.lines:
            (self.shell.log.warning if level == "warning" else self.shell.log.info)(text)


def _typed(value, enum: bool, reverse: bool, name: str, example: str, show) -> object:
    if reverse:
        return "none" if value is None else show(value)
    if value is None:
        return EXAMPLES[example] if enum else name
    return value


def status_lines(status: dict, *, now: float, tz: dt.tzinfo | None = None) -> str:
    """The exporter's status as '/replication/monitoring status' prints it."""
    listen = status.get("listen") or "unknown"
    when = status.get("evaluated_at")
    every = status.get("interval")
    evaluated = "" if not isinstance(when, int | float) else \
        f"; alerts evaluated {'every ' + format_duration(every) + ', ' if every else ''}" \
        f"last at {status_text.when(when, now=now, tz=tz)}"
    lines = [f"exporter: listening on {listen} (metrics: http://{listen}/metrics){evaluated}"]
    lines.append(status_text.render_alerts(status, now=now, tz=tz, webhook=False)
                 or "alerts: none")
    hook = status.get("webhook")
    if isinstance(hook, dict):
        last = hook.get("last_delivered_at")
        at = f" (the last at {status_text.when(last, now=now, tz=tz)})" if last else ""
        failed = hook.get("failed_attempts") or 0
        lines.append(f"webhook: {hook.get('url')}: {hook.get('delivered') or 0} delivered{at}, "
                     f"{hook.get('queued') or 0} waiting, {failed} failed "
                     f"attempt{'' if failed == 1 else 's'}, {hook.get('dropped') or 0} dropped; "
                     f"last error: {hook.get('last_error') or 'none'}")
    else:
        lines.append("webhook: none ('set alerts webhook=https://...' to post alerts)")
    for what, why in sorted((status.get("errors") or {}).items()):
        lines.append(f"not asked: {what}: {why}")
    return "\n".join(lines)
