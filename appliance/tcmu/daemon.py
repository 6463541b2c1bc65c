"""`appliance-handler`: the machine's TCMU daemon for `user:mirror` backstores.

Start-up follows tcmu-runner's order (its main.c; docs/tcmu.md): block netlink events and fail any
reply wait a previous daemon left behind; join TCM-USER and announce reply support; adopt the
devices that already exist (reopen: block_dev, reset_ring, open, unblock); serve and unblock
netlink; own the D-Bus name last (tcmu-runner owns it before unblocking; we make the name the
readiness signal, so nothing ordered after us can hit a blocked netlink). Then three event
sources run: netlink (its own thread, answering every event), udev (devices appearing and
disappearing) and the D-Bus service (asyncio, main thread). SIGTERM or SIGINT stops everything
in reverse order, finishing in-flight commands first. SIGUSR1 logs each device's ring state;
SIGUSR2 dumps every thread's stack.

Every library is imported before the rings are served, on purpose. Serving first and importing
pyroute2 and dbus_fast afterwards was measured in the VM (docs/tcmu.md): host commands waited
about 30 % less across a restart, but the imports then competed with a busy ring thread, and
the daemon became ready 35-48 s after exec instead of 13-20 s.

Needs root (CAP_NET_ADMIN for netlink, /dev/uioN is 0600, configfs writes), the kernel module
target_core_user, configfs mounted at /sys/kernel/config, and the system D-Bus.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dbus_fast import BusType

from appliance import checksum, compiled
from appliance.config_file import ConfigError, Where, check_table
from appliance.control.server import CommandError, ControlServer
from appliance.daemon_entry import LEVELS, argument_parser, run, stop_event_on_signals
from appliance.tcmu import cfgstring
from appliance.tcmu.backend import open_backend
from appliance.tcmu.configfs import BackstoreControl
from appliance.tcmu.dbus_service import HandlerObject, TcmuDBusService
from appliance.tcmu.discovery import TcmuName, UdevWatcher, scan_uio
from appliance.tcmu.events import DeviceEvent, TcmuGenlCmd
from appliance.tcmu.groups import DEFAULT_GROUPS_DIR, GroupError, GroupRegistry
from appliance.tcmu.heap import KEEP_FREED_BYTES, keep_freed_heap
from appliance.tcmu.manager import BackendFactory, DeviceManager, TransportOpener
from appliance.tcmu.netlink import NetlinkError, TcmuNetlink
from appliance.tcmu.uio import UioDevice, read_uio_info
from appliance.volume.mirror_lock import MirrorInUse, check_free
from appliance.volume.sync_mode import SyncSettings, SyncSettingsError

log = logging.getLogger("appliance.handler")


HandlerConfigError = ConfigError     # the handler's configuration file is wrong (one line)
# A spin longer than a command's round trip only burns CPU: 20 ms is beyond any we measured.
MAX_RING_SPIN_US = 20_000


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """Every path and switch of the daemon; `[handler]` table of a TOML file."""

    sysfs_class_uio: Path = Path("/sys/class/uio")
    dev_dir: Path = Path("/dev")
    configfs_core: Path = Path("/sys/kernel/config/target/core")
    module_parameters: Path = Path("/sys/module/target_core_user/parameters")
    dbus: str = "system"          # "system", "session", "none" or a bus address
    netlink: bool = True
    udev: bool = True
    poll_interval: float = 0.5
    # at low queue depth, look for the next command this long before sleeping
    # (appliance/tcmu/spin.py); 0: never
    ring_spin_us: int = 0
    log_level: str = "INFO"
    # `appliancectl --socket ... status`: each volume's state and what its peer lacks
    control_socket: Path = Path("/run/appliance-handler/handler.sock")   # its RuntimeDirectory
    # consistency groups: `<name>.group.json` (layout), `<name>.jnl`, `<name>.bitmap`
    groups_dir: Path = DEFAULT_GROUPS_DIR

    @classmethod
    def load(cls, path: Path | None) -> HandlerConfig:
        """The `[handler]` table of ``path`` (None: every default). The file holds nothing
        else; each key is a field, of the type of the field's default (a path: a string)."""
        if path is None:
            return cls()
        try:
            document = tomllib.loads(path.read_text())
        except OSError as err:
            raise HandlerConfigError(f"cannot read {path}: {err.strerror or err}") from err
        except tomllib.TOMLDecodeError as err:
            raise HandlerConfigError(f"{path} is not valid TOML: {err}; fix that line") from err
        top = Where(str(path))
        where = top.table("[handler]")
        defaults = {spec.name: spec.default for spec in fields(cls)}
        schema = {key: str if isinstance(default, Path) else type(default)
                  for key, default in defaults.items()}
        table = check_table(check_table(document, {"handler": dict}, top).get("handler", {}),
                            schema, where)
        values = {key: Path(value) if isinstance(defaults[key], Path) else value
                  for key, value in table.items()}
        if "log_level" in values:
            if values["log_level"].upper() not in LEVELS:
                raise where.error("log_level", f"must be one of {', '.join(LEVELS)}, got "
                                               f"{values['log_level']!r}")
            values["log_level"] = values["log_level"].upper()
        if values.get("poll_interval", defaults["poll_interval"]) <= 0:
            raise where.error("poll_interval", f"must be positive seconds, got "
                                               f"{values['poll_interval']}")
        if not 0 <= values.get("ring_spin_us", 0) <= MAX_RING_SPIN_US:
            raise where.error("ring_spin_us", f"must be 0 (off) to {MAX_RING_SPIN_US} "
                                              f"microseconds, got {values['ring_spin_us']}")
        bus = values.get("dbus", defaults["dbus"])
        if bus not in ("system", "session", "none") and not (":" in bus and "=" in bus):
            raise where.error("dbus", f"must be \"system\", \"session\", \"none\" or a D-Bus "
                                      f"address such as \"unix:path=/run/bus\", got {bus!r}")
        return cls(**values)


class HandlerDaemon:
    """Explicit lifecycle: start() → run until stop() → shutdown()."""

    def __init__(self, config: HandlerConfig, backend_factory: BackendFactory | None = None,
                 open_transport: TransportOpener | None = None) -> None:
        """`open_transport` replaces /dev/uioN (the tests serve the ring simulation)."""
        self.config = config
        self.groups = GroupRegistry(config.groups_dir)
        self.manager = DeviceManager(backend_factory=backend_factory
                                     or functools.partial(open_backend, groups=self.groups),
                                     open_transport=open_transport or self._open_uio,
                                     control_for=self._control_for,
                                     poll_interval=config.poll_interval,
                                     ring_spin_us=config.ring_spin_us)
        self.netlink: TcmuNetlink | None = None
        self.udev: UdevWatcher | None = None
        self.dbus: TcmuDBusService | None = None
        self._threads: list[threading.Thread] = []

    def _open_uio(self, minor: int, uio_name: str) -> UioDevice:
        info = read_uio_info(self.config.sysfs_class_uio / f"uio{minor}", self.config.dev_dir)
        if info.name != uio_name:
            raise OSError(f"uio{minor} is now {info.name!r}, expected {uio_name!r}")
        return UioDevice(info)

    def _control_for(self, name: TcmuName) -> BackstoreControl | None:
        path = name.configfs_dir(self.config.configfs_core)
        return BackstoreControl(path) if path.is_dir() else None

    def _module_param(self, param: str, value: str) -> None:
        path = self.config.module_parameters / param
        try:
            path.write_text(value)
        except OSError as err:
            log.warning("cannot write %s=%s (%s)", path, value, err)

    async def start(self) -> None:
        cfg = self.config
        if cfg.netlink:
            # A previous daemon may have left the kernel waiting for a reply forever.
            self._module_param("block_netlink", "1")
            self._module_param("reset_netlink", "1")
            try:
                # pyroute2's synchronous socket runs its own event loop: not on this one
                self.netlink = await asyncio.to_thread(TcmuNetlink.open)
            except (NetlinkError, OSError) as err:
                log.warning("netlink unavailable, relying on udev only: %s", err)
        await asyncio.to_thread(self._adopt_existing)
        log.info("rings served %.1f s after exec", _process_age())
        if self.netlink is not None:
            self._spawn("tcmu-netlink", lambda: self.netlink.serve(self.on_netlink))
        if cfg.netlink:
            self._module_param("block_netlink", "0")
        if cfg.udev:
            try:
                self.udev = UdevWatcher(self.on_udev)
            except Exception as err:  # pyudev raises plain OSError/ImportError variants
                log.warning("udev monitor unavailable: %s", err)
            else:
                self._spawn("tcmu-udev", self.udev.run)
        # Owning the bus name is the readiness signal (systemd Type=dbus, Before=target.service):
        # it comes last so a restore that starts then finds netlink served and unblocked.
        if cfg.dbus != "none":
            self.dbus = TcmuDBusService([HandlerObject(cfgstring.SUBTYPE, cfgstring.CONFIG_DESC,
                                                       functools.partial(
                                                           check_backstore,
                                                           ours=self.groups.holds))])
            if cfg.dbus in ("system", "session"):
                await self.dbus.start(bus_type=BusType.SYSTEM if cfg.dbus == "system"
                                      else BusType.SESSION)
            else:
                await self.dbus.start(bus_address=cfg.dbus)
        # Which form of the I/O path runs (docs/compiled.md): the image ships it compiled.
        log.info("appliance-handler serving %d device(s), ready %.1f s after exec "
                 "(CRC32C: %s), hot path %s", len(self.manager.devices), _process_age(),
                 checksum.IMPLEMENTATION, compiled.describe())

    def _adopt_existing(self) -> None:
        for minor, uio_name in scan_uio(self.config.sysfs_class_uio).items():
            status = self.manager.add(minor, uio_name, reopen=True)
            if status:
                log.warning("could not adopt uio%d %s (status %d)", minor, uio_name, status)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def on_netlink(self, event: DeviceEvent) -> int:
        """Runs on the netlink thread; the return value is the *_DONE status."""
        if event.cmd is TcmuGenlCmd.ADDED_DEVICE:
            return self.manager.add(event.minor, event.device)
        if event.cmd is TcmuGenlCmd.REMOVED_DEVICE:
            return self.manager.remove(event.minor)
        return self.manager.reconfig(event)

    def on_udev(self, action: str, minor: int, uio_name: str) -> None:
        if action == "add":
            self.manager.add(minor, uio_name)
        else:
            self.manager.remove(minor)

    def shutdown(self) -> None:
        if self.netlink is not None:
            self.netlink.stop()
        if self.udev is not None:
            self.udev.stop()
        for thread in self._threads:
            thread.join(timeout=10)
            if thread.is_alive():
                log.error("thread %s did not stop within 10s", thread.name)
        if self.dbus is not None:
            self.dbus.stop()
        self.manager.close_all()
        if self.netlink is not None:
            self.netlink.close()
        log.info("appliance-handler stopped")


def check_backstore(config: str, *,
                    ours: Callable[[str | None, str], bool] = lambda group, mirror: False
                    ) -> tuple[bool, str]:
    """The D-Bus CheckConfig answer, which targetcli asks before it creates a backstore
    (and prints as ``cfgstring invalid: <answer>``): the config string parses, and no other
    writer holds its mirror. The device's open refuses such a mirror anyway (EBUSY, which
    targetcli reports only as a failed creation); this tells the admin why. ``ours(group,
    mirror)``: the lock is this handler's own (a member of a group it has open, whose device
    is being created)."""
    ok, message = cfgstring.check_config(config)
    if not ok:
        return ok, message
    parsed = cfgstring.parse_config(config)
    if ours(parsed.group, parsed.mirror):
        return ok, message
    try:
        check_free(parsed.mirror, "handler")
    except MirrorInUse as err:
        return False, str(err)
    except OSError:
        pass            # (unreadable or no directory: the device's open says what is wrong)
    return ok, message


def _process_age() -> float:
    """Seconds since this process was exec'd (/proc/self/stat starttime), for start-up logs."""
    try:
        with open("/proc/self/stat") as stat_file:
            start_ticks = int(stat_file.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def control_server(daemon: HandlerDaemon) -> ControlServer:
    """The handler's control socket: `status` shows every volume it serves, and what each
    holds that its peer has not acknowledged (also when no transmitter runs);
    `pause-journal` / `resume-journal` {"volume": "<backstore name>"} steer journaling;
    `set-sync` {"volume", "mode", "fallback_s", "hold"} sets the replication mode (of a
    consistency group too: "volume" is then the group's name or uuid; status lists each group
    under "groups"); `leave-group` {"group", "member"} retires a member whose device is
    closed (docs/groups.md)."""
    return ControlServer(daemon.config.control_socket, {
        "status": lambda args: {"role": "handler", "volumes": daemon.manager.status(),
                                "groups": daemon.groups.status()},
        "leave-group": lambda args: _leave_group(daemon, args),
        "pause-journal": lambda args: _journal_pause(daemon, "pause-journal", args, True),
        "resume-journal": lambda args: _journal_pause(daemon, "resume-journal", args, False),
        "set-sync": lambda args: _set_sync(daemon, args),
    })


async def _journal_pause(daemon: HandlerDaemon, cmd: str, args: dict, paused: bool) -> dict:
    """pause-journal / resume-journal: the volume's status entry plus ``volume`` and
    ``changed`` (False: it already was; the call is idempotent). Runs in a worker thread: it
    makes the mirror durable (fdatasync) before the bitmap header records the pause."""
    name = _volume_argument(cmd, args, (), '{"volume": "<backstore name>"}')
    result = await _on_volume(daemon, cmd, name, daemon.manager.set_journal_paused, paused)
    if result["changed"]:
        log.warning("volume %s: the admin %s journaling (%s)", name,
                    "paused" if paused else "resumed", cmd)
    return result


async def _set_sync(daemon: HandlerDaemon, args: dict) -> dict:
    """set-sync: the volume's replication mode, saved by the handler in the volume's bitmap
    header (docs/volume.md, "Synchronous modes"); its status entry with ``changed``."""
    shape = ('{"volume": "<backstore name>", "mode": "async|sync|sync-on-flush", '
             '"fallback_s": <seconds>, "hold": <bool>}')
    name = _volume_argument("set-sync", args, ("mode", "fallback_s", "hold"), shape)
    if "mode" not in args:
        raise CommandError(f"missing the mode: set-sync takes {shape}; nothing changed")

    def settings_from(current: SyncSettings) -> SyncSettings:
        """What is not given stays as it is."""
        return SyncSettings.parse(args["mode"], args.get("fallback_s", current.fallback_s),
                                  args.get("hold", current.hold))
    return await _on_volume(daemon, "set-sync", name, daemon.manager.set_sync, settings_from)


async def _leave_group(daemon: HandlerDaemon, args: dict) -> dict:
    """leave-group: retire a member of a group (its device must be closed); its range stays
    as padding, so the others keep their offsets. {"group", "member", "changed"}."""
    usage = 'leave-group takes {"group": "<group name>", "member": "<member name>"}; ' \
            'nothing changed'
    unknown = sorted(set(args) - {"group", "member"})
    if unknown:
        raise CommandError(f"unknown argument {', '.join(map(repr, unknown))}: {usage}")
    group, member = args.get("group"), args.get("member")
    if not isinstance(group, str) or not group or not isinstance(member, str) or not member:
        raise CommandError(f"missing the group or the member: {usage}")
    try:
        return await asyncio.to_thread(daemon.groups.leave, group, member)
    except GroupError as err:
        raise CommandError(str(err)) from None
    except Exception as err:
        log.exception("leave-group %s %s failed", group, member)
        raise CommandError(f"leave-group of {member} in {group} failed: {err}; check the "
                           "handler's log") from err


def _volume_argument(cmd: str, args: dict, others: tuple[str, ...], shape: str) -> str:
    """The "volume" argument of a command that takes ``others`` besides it."""
    usage = f"{cmd} takes {shape}; nothing changed"
    unknown = sorted(set(args) - {"volume", *others})
    if unknown:
        raise CommandError(f"unknown argument {', '.join(map(repr, unknown))}: {usage}")
    name = args.get("volume")
    if not isinstance(name, str) or not name:
        raise CommandError(f"missing the volume's name: {usage}")
    return name


async def _on_volume(daemon: HandlerDaemon, cmd: str, name: str,
                     change: Callable[[str, Any], dict], value: Any) -> dict:
    """Run a manager change of one volume in a worker thread, with the errors an admin
    reads."""
    try:
        return await asyncio.to_thread(_volume_or_group, daemon, cmd, change, name, value)
    except SyncSettingsError as err:
        raise CommandError(f"{err}; nothing changed") from None
    except LookupError:
        served = daemon.manager.names() + [f"group {g}" for g in daemon.groups.names()]
        raise CommandError(
            f"no volume {name!r} is served by this handler (it serves "
            f"{', '.join(served) if served else 'none'}); give the user:mirror backstore's "
            "name; nothing changed") from None
    except Exception as err:
        log.exception("%s %s failed", cmd, name)
        raise CommandError(f"{cmd} of {name} failed: {err}; check the handler's log "
                           "(the volume's state is in status)") from err


def _volume_or_group(daemon: HandlerDaemon, cmd: str, change: Callable[[str, Any], dict],
                     name: str, value: Any) -> dict:
    """The device named ``name``, else the open group of that name or uuid (set-sync)."""
    try:
        return change(name, value)
    except LookupError:
        if cmd != "set-sync":
            raise
    return daemon.groups.change(name, lambda volume: volume.set_sync(value(volume.sync.settings)))


async def _serve(daemon: HandlerDaemon) -> None:
    stop = stop_event_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, daemon.manager.log_state)
    control = control_server(daemon)
    try:
        await daemon.start()
        await control.start()
        await stop.wait()
    finally:
        await control.close()
        if daemon.dbus is not None:  # disconnect while the event loop still runs
            daemon.dbus.stop()
            daemon.dbus = None


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser("appliance-handler", __doc__.split("\n")[0],
                             config_help="TOML file with a [handler] table (default: every "
                                         "setting's default)", config_required=False)
    args = parser.parse_args(argv)
    return run("appliance-handler", args, lambda: HandlerConfig.load(args.config),
               lambda config: _run(config, args.log_level))


def _run(config: HandlerConfig, log_level_option: str | None) -> int:
    """``--log-level`` wins over the file's ``log_level``."""
    logging.getLogger().setLevel(log_level_option or config.log_level)
    # SIGUSR2 prints every thread's Python stack to stderr (the journal): where a stuck loop is.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    # Before any device thread allocates: cached writes free thousands of buffers at a time,
    # and handing those pages back cost a page fault per 4 KiB write (appliance/tcmu/heap.py).
    if keep_freed_heap():
        log.info("C heap: up to %d MiB of freed memory kept for reuse (glibc mallopt)",
                 KEEP_FREED_BYTES >> 20)
    else:
        log.info("C heap: malloc left as it is (no glibc mallopt)")
    daemon = HandlerDaemon(config)
    try:
        asyncio.run(_serve(daemon))
    except Exception:
        log.exception("appliance-handler failed")
        return 1
    finally:
        daemon.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
