"""What the /replication nodes share: the site store, the daemons' status and the clock, the
daemons' units and control sockets, and the operations that change the site
(``targetcli_ext/operations.py``; the exporter's: ``targetcli_ext/monitoring.py``).

Everything that reaches outside the process is injectable for the unit tests: ``units`` (a
``Units`` with its ``systemctl`` runner), ``caller`` (a daemon's control socket),
``storage_objects`` (LIO's storage objects, rtslib's by default) and ``fetch`` (a peer's
certificate).

Status is asked of the daemons at most once a second (``ttl_s``), so one ``ls`` over every
volume node costs one round of control-socket calls, and a node never shows a state older
than that.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from configshell_fb import ExecutionError

from appliance.control.client import ControlError
from appliance.control.client import call as control_call
from targetcli_ext import daemons, status_text
from targetcli_ext.backstores import StorageObjects
from targetcli_ext.config import ShellConfig
from targetcli_ext.failback import FailbackOperations
from targetcli_ext.group_ops import GroupOperations
from targetcli_ext.link_settings import LinkOperations
from targetcli_ext.model import ModelError, SiteStore
from targetcli_ext.monitoring import MonitoringOperations
from targetcli_ext.operations import Fetcher, SiteOperations
from targetcli_ext.status_text import VolumeView
from targetcli_ext.units import Units


class ReplicationContext(SiteOperations, GroupOperations, FailbackOperations,
                         MonitoringOperations, LinkOperations):
    def __init__(self, config: ShellConfig, *,
                 collect: Callable[[], dict] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 tz: dt.tzinfo | None = None, ttl_s: float = 1.0,
                 units: Units | None = None, caller: Callable[..., object] | None = None,
                 storage_objects: StorageObjects | None = None,
                 fetch: Fetcher | None = None) -> None:
        self.config = config
        self.store = SiteStore(config.state_dir)
        self._caller = caller or control_call
        self._init_operations(units=units, storage_objects=storage_objects, fetch=fetch)
        self._collect = collect or (lambda: daemons.collect(
            config.sockets, timeout=config.status_timeout_s))
        self.clock, self._monotonic, self.tz, self.ttl_s = clock, monotonic, tz, ttl_s
        self._cached: tuple[float, dict] | None = None

    def call(self, socket_path: Path | str, cmd: str, **args: object) -> object:
        """Ask a daemon over its control socket; ExecutionError with the daemon's reason
        (or why it cannot be reached) when it refuses."""
        return self._ask(socket_path, cmd, args, self.config.command_timeout_s)

    def status_of(self, socket_path: Path | str) -> object:
        """One daemon's status, waited for as briefly as the whole status is."""
        return self._ask(socket_path, "status", {}, self.config.status_timeout_s)

    def _ask(self, socket_path: Path | str, cmd: str, args: dict, timeout: float) -> object:
        try:
            return self._caller(Path(socket_path), cmd, args, timeout=timeout)
        except ControlError as err:
            raise ExecutionError(str(err)) from err
        except ValueError as err:       # a reply that is not JSON
            raise ExecutionError(f"{socket_path} answered {cmd} with something that is not "
                                 f"JSON: {err}") from err

    def snapshot(self, fresh: bool = False) -> dict:
        now = self._monotonic()
        if fresh or self._cached is None or now - self._cached[0] > self.ttl_s:
            self._cached = (now, self._collect())
        return self._cached[1]

    def peer_names(self) -> dict[str, str]:
        """Peer names by address, to name a transmitter's peer (none if site.json is bad:
        the status must still show)."""
        try:
            return {p.address: p.name for p in self.store.load().peers.values()}
        except ModelError:
            return {}

    def replica_names(self) -> dict[str, str]:
        """The names of the replicas the admin made here, by uuid (none if site.json is bad)."""
        try:
            return {r.uuid: r.name for r in self.store.load().replicas.values()}
        except ModelError:
            return {}

    def group_names(self) -> dict[str, str]:
        """The consistency groups' names by uuid (none if site.json is bad)."""
        try:
            return {g.uuid: g.name for g in self.store.load().groups.values()}
        except ModelError:
            return {}

    def member_groups(self) -> dict[str, str]:
        """The group of each backstore in one, by backstore name."""
        return {n: b.group for n, b in self.member_backstores().items()}

    def views(self, fresh: bool = False) -> list[VolumeView]:
        return status_text.volume_views(self.snapshot(fresh), now=self.clock(), tz=self.tz,
                                        peer_names=self.peer_names(),
                                        replica_names=self.replica_names(),
                                        groups=self.group_names(),
                                        members=self.member_groups())

    def render(self, names: set[str] | None = None) -> str:
        """The status text of every volume, or of those named."""
        snap = self.snapshot(fresh=True)
        if names is None:
            return status_text.render_status(snap, now=self.clock(), tz=self.tz,
                                             peer_names=self.peer_names(),
                                             replica_names=self.replica_names(),
                                             groups=self.group_names(),
                                             members=self.member_groups())
        views = [v for v in self.views() if v.name in names]
        if not views:
            return f"no volume {', '.join(sorted(names))} answers now: run 'refresh'\n"
        return "\n".join(status_text.render_volume(v, now=self.clock(), tz=self.tz)
                         for v in views) + "\n"
