"""What /replication/monitoring does to the appliance: site.json's ``monitoring``,
``exporter.toml`` and ``appliance-exporter.service``, changed together (docs/shell.md,
"Monitoring").

A change is checked first: the input (targetcli_ext/model.py), the address (a bind: it must be
an address of this host), the port (a bind, unless the running exporter is the one holding
it), the rendered file (the exporter's own parser). Then site.json and exporter.toml are
written under site.json's lock and the exporter is restarted; the change stands once the
exporter answers on its control socket listening where it was told. An exporter that does
not (it exited, e.g. the port was taken meanwhile, or it stays silent past
``exporter_start_timeout_s``) gets the previous settings back, and the refusal carries the
exporter's own last log line.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from configshell_fb import ExecutionError

from appliance.statefile import remove_durably, write_text_atomic
from targetcli_ext import daemon_config as dc
from targetcli_ext.model import (
    ModelError,
    Monitoring,
    Site,
    SiteStore,
    changed_monitoring,
    host_identity,
)
from targetcli_ext.units import EXPORTER_UNIT, UnitError, Units

Probe = Callable[[str, int], None]
EXPORTER_PROGRAM = "appliance-exporter"


def probe_bind(address: str, port: int) -> None:
    """Bind ``address:port`` as the exporter's HTTP server does (SO_REUSEADDR), and let go;
    OSError when it cannot (EADDRNOTAVAIL: not this host's address; EADDRINUSE: taken)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))


def _text(path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def listen_of(text: object) -> tuple[str, int] | None:
    """``address:port`` / ``[v6]:port`` as the exporter reports its ``listen``."""
    host, sep, port = str(text or "").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        return None


class MonitoringOperations:
    """Mixed into ReplicationContext: needs ``store``, ``config``, ``layout``, ``units``,
    ``call``, ``clock`` and ``_monotonic``."""

    store: SiteStore
    units: Units
    clock: Callable[[], float]
    _monotonic: Callable[[], float]
    # How long a restarted exporter may take to answer (imports prometheus_client, binds; an
    # emulated VM is slow). An exporter that exits is seen at once (its unit is not active).
    exporter_start_timeout_s: float = 30.0
    exporter_poll_s: float = 0.2
    probe: Probe = staticmethod(probe_bind)
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _handler_socket(self):
        return self.config.sockets.handler  # type: ignore[attr-defined]

    # --- asking the exporter ------------------------------------------------------------

    def exporter_status(self) -> dict | None:
        """The running exporter's status (docs/monitoring.md), None when it does not answer."""
        try:
            status = self.status_of(self.layout.exporter_socket)  # type: ignore[attr-defined]
        except ExecutionError:
            return None
        return status if isinstance(status, dict) else None

    def _answers_on(self, want: Monitoring) -> bool:
        status = self.exporter_status()
        return status is not None and listen_of(status.get("listen")) == \
            (want.address, want.port)

    def _wait_exporter(self, want: Monitoring, since: float) -> str | None:
        """None once the restarted exporter answers listening on ``want``; else why not: its
        last log line (the journal since ``since``) or what was seen."""
        deadline = self._monotonic() + self.exporter_start_timeout_s
        while True:
            if self._answers_on(want):
                return None
            if not self.units.is_active(EXPORTER_UNIT):
                seen = "it exited"
                break
            if self._monotonic() >= deadline:
                seen = (f"it did not answer on {self.layout.exporter_socket} listening on "
                        f"{want.listen} within {self.exporter_start_timeout_s:g} s")
                break
            self.sleep(self.exporter_poll_s)
        said = self.units.log_lines(EXPORTER_UNIT, since)
        # Its own line on exiting is "appliance-exporter: <what to fix>" (as every daemon's:
        # appliance/daemon_entry.py); else whatever it said last.
        own = [line for line in said if line.startswith(f"{EXPORTER_PROGRAM}: ")]
        if own or said:
            return f"{seen}: {(own or said)[-1]}"
        return f"{seen} (see 'journalctl -u {EXPORTER_UNIT}')"

    # --- checks -------------------------------------------------------------------------

    def _check_listen(self, new: Monitoring, running: dict | None) -> None:
        """The address is this host's, and the port free unless the running exporter holds
        it (its restart then frees it)."""
        try:
            self.probe(new.address, 0)
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise ModelError(f"address={new.address} is not an address of this appliance: "
                                 f"give one of its own ('ip -brief address' lists them), or "
                                 f"127.0.0.1 for this appliance only") from err
            why = err.strerror or err
            raise ModelError(f"address={new.address} cannot be listened on ({why}): give "
                             f"another address of this appliance") from err
        held = listen_of((running or {}).get("listen"))
        if held is not None and held[1] == new.port:
            return
        try:
            self.probe(new.address, new.port)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ModelError(f"port={new.port} is in use on {new.address} by another "
                                 f"program: choose another port, or stop the program that "
                                 f"listens there (ss -ltnp 'sport = :{new.port}' names it)") \
                    from err
            raise ModelError(f"port={new.port} cannot be listened on at {new.address} "
                             f"({err.strerror or err}): choose another port") from err

    # --- changing the settings ----------------------------------------------------------

    def set_monitoring(self, changes: dict[str, object], notes) -> Monitoring:
        """Apply the shell's parameters (model.EXPORTER_SETTINGS, ALERT_SETTINGS): checked,
        saved, exporter.toml rendered, the exporter restarted; undone if it does not start."""
        path = self.layout.exporter_toml
        old_site = self.store.load()
        new = changed_monitoring(old_site.monitoring, changes)
        dc.check_replaceable(path)
        running = self.exporter_status()
        self._check_listen(new, running)
        if new.address in ("0.0.0.0", "::"):
            notes.warning(f"address={new.address}: the exporter listens on every interface of "
                          f"this appliance; its metrics name the volumes and peers: prefer "
                          f"the management address")
        with self.store.locked():
            site = self.store.load()
            old = site.monitoring
            new = changed_monitoring(old, changes)      # on what is saved now
            new_site = replace(site, identity=site.identity or host_identity(),
                               monitoring=new)
            doc = dc.exporter_document(new_site, self.layout, self._handler_socket())
            dc.check_exporter(doc, path)
            dc.check_replaceable(path)
            before = _text(path), _text(self.store.path)
            self.store.save(new_site)
            changed = dc.write_generated(path, doc)
        if not changed and running is not None and self._answers_on(new):
            notes.info(f"Nothing changed: the exporter runs with these settings "
                       f"(http://{new.listen}/metrics).")
            return new
        since = self.clock()
        try:
            self.units.restart(EXPORTER_UNIT)
        except UnitError as err:
            notes.warning(f"The exporter was not restarted: {err}; the settings are saved: run "
                          f"'systemctl restart {EXPORTER_UNIT}'")
            return new
        why = self._wait_exporter(new, since)
        if why is None:
            notes.info(f"Restarted {EXPORTER_UNIT}: metrics at http://{new.listen}/metrics.")
            return new
        self._undo(new, before)
        again = self._restart_previous(old, running is not None)
        raise ModelError(f"the exporter did not start with the new settings: {why}; the "
                         f"previous settings are restored{again}")

    def _undo(self, new: Monitoring, before: tuple[str | None, str | None]) -> None:
        """exporter.toml and site.json as they were (byte for byte), unless another shell
        changed the settings since."""
        with self.store.locked():
            if self.store.load().monitoring != new:
                return
            for path, text in zip((self.layout.exporter_toml, self.store.path), before,
                                  strict=True):
                if text is None:
                    remove_durably(path)
                else:
                    write_text_atomic(path, text)

    def _restart_previous(self, old: Monitoring, was_running: bool) -> str:
        """The exporter back on the previous settings; what to add to the refusal."""
        try:
            if not was_running:
                self.units.stop(EXPORTER_UNIT)
                return f" ({EXPORTER_UNIT} is stopped again, as it was)"
            since = self.clock()
            self.units.restart(EXPORTER_UNIT)
        except UnitError as err:
            return f" (but {err})"
        why = self._wait_exporter(old, since)
        if why is None:
            return f" (the exporter runs with them again on {old.listen})"
        return f" (but the exporter does not run with them either: {why})"

    # --- boot -----------------------------------------------------------------------------

    def write_exporter(self, site: Site | None, notes) -> bool:
        """exporter.toml from ``site`` (None: site.json unreadable, so an existing file is kept
        and a missing one gets the defaults); True when the file changed. A hand-written file
        is kept and said so."""
        path = self.layout.exporter_toml
        if path.exists() and not dc.is_generated(path):
            notes.warning(f"{path} was written by hand: kept as it is (move it away to let "
                          f"/replication manage the exporter)")
            return False
        if site is None:
            if path.exists():
                return False
            site = Site(identity=host_identity())
        doc = dc.exporter_document(site, self.layout, self._handler_socket())
        dc.check_exporter(doc, path)
        with self.store.locked():
            return dc.write_generated(path, doc)

    def start_exporter(self, changed: bool, notes) -> None:
        """Started when it is not running, restarted when its file changed."""
        try:
            if not self.units.is_active(EXPORTER_UNIT):
                self.units.start(EXPORTER_UNIT)
                notes.info(f"Started {EXPORTER_UNIT}.")
            elif changed:
                self.units.restart(EXPORTER_UNIT)
                notes.info(f"Restarted {EXPORTER_UNIT} (exporter.toml changed).")
        except UnitError as err:
            notes.warning(f"The exporter did not start: {err}")
