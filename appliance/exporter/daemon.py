"""appliance-exporter: Prometheus metrics and alerts for one appliance (docs/monitoring.md).

    appliance-exporter --config /var/lib/appliance/replication/exporter.toml

Serves ``http://<address>:<port>/metrics`` (prometheus_client's exposition; each scrape asks
the local daemons' control sockets, with bounded timeouts), evaluates the alert rules every
``interval`` seconds (the raises and clears go to the systemd journal with a fixed MESSAGE_ID
and to the optional webhook), and answers ``status`` on ``<run_dir>/exporter.sock``.

Exit codes: 0 stopped by SIGTERM/SIGINT; 2 a configuration error (one line naming the key);
1 it cannot start, e.g. the address and port cannot be bound (one line saying which and what
to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import make_wsgi_app

import appliance
from appliance.control.server import ControlServer
from appliance.control.site_status import Answer, DaemonSockets, ask_daemons
from appliance.daemon_entry import argument_parser, run, stop_event_on_signals
from appliance.exporter.alerts import AlertEngine, Transition
from appliance.exporter.config import ExporterConfig, load_exporter_config
from appliance.exporter.journal_log import JournalSender
from appliance.exporter.metrics import SiteCollector
from appliance.exporter.webhook import WebhookSender

PROG = "appliance-exporter"
log = logging.getLogger(PROG)

SOCKET_TIMEOUT_S = 2.0          # per daemon socket, per scrape or evaluation
START_ERROR_EXIT = 1
# journald PRIORITY of a raise by severity, and of any clear (syslog levels)
PRIORITY = {"critical": 2, "warning": 4}
CLEARED_PRIORITY = 5


class StartError(Exception):
    """The exporter cannot start (the endpoint cannot be bound, the state directory cannot
    be made); the one-line message says what and what to do."""


# How long a management address that is not (yet) on this appliance is waited for at start,
# and how often its bind is retried meanwhile.
ADDRESS_WAIT_S = 120.0
ADDRESS_RETRY_S = 1.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass                                # a scrape every few seconds is no news


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def bind_http(cfg: ExporterConfig, registry: CollectorRegistry) -> WSGIServer:
    """The metrics endpoint, bound (not serving yet). prometheus_client 0.16's
    start_http_server neither returns its server nor can be stopped, hence our own."""
    family = (socket.AF_INET6 if ipaddress.ip_address(cfg.address).version == 6
              else socket.AF_INET)
    server_class = type("ExporterServer", (_Server,), {"address_family": family})
    try:
        return make_server(cfg.address, cfg.port, make_wsgi_app(registry), server_class,
                           handler_class=_Quiet)
    except OSError as err:
        raise StartError(listen_error(cfg, err)) from err


def listen_error(cfg: ExporterConfig, err: OSError) -> str:
    where = f"cannot listen on {cfg.listen}"
    if err.errno == errno.EADDRINUSE:
        return (f"{where}: the port is in use by another program; choose another port "
                f"(targetcli /replication/monitoring set exporter port=...) or stop that "
                f"program (ss -ltnp 'sport = :{cfg.port}' shows it)")
    if err.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: {cfg.address} is not an address of this appliance; set the "
                f"management address (targetcli /replication/monitoring set exporter "
                f"address=...)")
    if err.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); use a port >= 1024"
    return f"{where}: {err.strerror or err}"


class Exporter:
    """The daemon: HTTP endpoint, alert loop, control socket. ``ask`` and ``journal`` can be
    replaced (tests)."""

    def __init__(self, cfg: ExporterConfig, *, journal: JournalSender | None = None,
                 ask: Callable[[], list[Answer]] | None = None,
                 webhook: WebhookSender | None = None, clock: Callable[[], float] = time.time,
                 address_wait_s: float = ADDRESS_WAIT_S):
        self.cfg = cfg
        self.address_wait_s = address_wait_s
        self._waited_for_address = False
        self.identity = cfg.identity or socket.gethostname()
        sockets = DaemonSockets(handler=cfg.handler_socket, run_dir=cfg.run_dir)
        self.ask = ask or (lambda: ask_daemons(sockets, timeout=SOCKET_TIMEOUT_S,
                                               exporter=False))
        self.journal = journal or JournalSender()
        self.webhook = webhook if webhook is not None else (
            WebhookSender(cfg.webhook) if cfg.webhook is not None else None)
        self.clock = clock
        self.engine = AlertEngine(cfg.alerts, cfg.alerts_file)
        self._lock = threading.Lock()           # the engine's state: loop vs. scrapes/status
        self.evaluated_at: float | None = None
        self.evaluations = 0
        self.errors: dict[str, str] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SiteCollector(self.ask, self.status))
        self.http: WSGIServer | None = None
        self.control = ControlServer(cfg.control_socket, {"status": lambda _args: self.status()})

    def status(self) -> dict:
        with self._lock:
            alerts = self.engine.alerts()
            evaluated_at, errors = self.evaluated_at, dict(self.errors)
        return {"role": "exporter", "version": appliance.__version__, "identity": self.identity,
                "listen": self.listen, "evaluated_at": evaluated_at,
                "evaluations": self.evaluations, "interval": self.cfg.interval,
                "alerts": alerts, "thresholds": self.cfg.alerts.as_dict(),
                "webhook": self.webhook.status() if self.webhook is not None else None,
                "errors": errors}

    @property
    def listen(self) -> str:
        """``address:port`` the endpoint is bound to (the configured one until then)."""
        server = self.http
        if server is None:
            return self.cfg.listen
        host, port = server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # --- the alert loop ---------------------------------------------------------------------

    def evaluate(self) -> list[Transition]:
        """One evaluation (blocking: asks the sockets); sends what changed."""
        answers = self.ask()
        now = self.clock()
        with self._lock:
            transitions = self.engine.evaluate(answers, now)
            self.evaluated_at = now
            self.evaluations += 1
            self.errors = {f"{a.label} ({a.path})": a.error or "no answer"
                           for a in answers if a.status is None}
        for t in transitions:
            self.announce(t)
        return transitions

    def announce(self, t: Transition) -> None:
        a = t.alert
        priority = PRIORITY[a.kind.severity] if t.state == "raised" else CLEARED_PRIORITY
        self.journal.send(f"{a.alert} {t.state}: {t.message}", priority=priority,
                          message_id=t.message_id, alert=a.alert, alert_state=t.state,
                          volume=a.volume, peer=a.peer, daemon=a.daemon,
                          severity=a.kind.severity, appliance=self.identity)
        if self.webhook is not None:
            self.webhook.submit(t.payload(self.identity))

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.evaluate)
            except Exception:               # the next evaluation tries again
                log.exception("alert evaluation failed")
            left = self.cfg.interval - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, left))

    # --- lifetime ---------------------------------------------------------------------------

    def start_http(self) -> None:
        self.http = bind_http(self.cfg, self.registry)
        threading.Thread(target=self.http.serve_forever, args=(0.1,),   # stops within 0.1 s
                         name="metrics-http", daemon=True).start()

    async def _start_http_once_the_address_exists(self, stop: asyncio.Event) -> bool:
        """At boot the management address may come up after the exporter starts (DHCP,
        appliance-netconf): wait for it up to ``address_wait_s`` instead of failing at once
        (a restart loop would reach systemd's start limit). Any other bind error, or an
        address still missing after the wait, is a StartError. False: stopped meanwhile."""
        deadline = time.monotonic() + self.address_wait_s
        while True:
            try:
                self.start_http()
                return True
            except StartError as err:
                missing = getattr(err.__cause__, "errno", None) == errno.EADDRNOTAVAIL
                if not missing or time.monotonic() >= deadline:
                    raise
                if not self._waited_for_address:
                    log.warning("%s; waiting up to %g s for it to come up", err,
                                self.address_wait_s)
                    self._waited_for_address = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ADDRESS_RETRY_S)
            if stop.is_set():
                return False

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` (default: SIGTERM/SIGINT). Raises StartError before
        anything else starts when the endpoint cannot be bound."""
        stop = stop or stop_event_on_signals()
        try:
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StartError(f"cannot create state_dir {self.cfg.state_dir}: "
                             f"{err.strerror or err}") from err
        with self._lock:
            self.engine.load()
        if not await self._start_http_once_the_address_exists(stop):
            return                          # stopped while waiting: a normal end
        try:
            if self.webhook is not None:
                self.webhook.start()
            await self.control.start()
            log.info("serving metrics on http://%s/metrics, control socket %s, alerts every "
                     "%g s", self.listen, self.cfg.control_socket, self.cfg.interval)
            await self._loop(stop)
        finally:
            await self.control.close()
            self.stop_http()
            if self.webhook is not None:
                await asyncio.to_thread(self.webhook.stop, 1.0)


def serve(cfg: ExporterConfig) -> int:
    try:
        asyncio.run(Exporter(cfg).run())
    except StartError as err:
        print(f"{PROG}: {err}", file=sys.stderr, flush=True)
        log.error("%s", err, extra={"printed_on_stderr": True})
        return START_ERROR_EXIT
    return 0


def main(argv: list[str] | None = None) -> int:
    args = argument_parser(PROG, __doc__, config_help="exporter TOML configuration",
                           raw_description=True).parse_args(argv)
    return run(PROG, args, lambda: load_exporter_config(Path(args.config)), serve)


if __name__ == "__main__":
    sys.exit(main())
