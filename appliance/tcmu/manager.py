"""The set of TCMU devices this daemon serves: add (or adopt), remove, reconfigure.

Called from three threads (netlink events, udev events, start-up adoption); one lock keeps
them from racing on the same device. Every device gets its own loop thread.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.tcmu import cfgstring
from appliance.tcmu.configfs import BackstoreControl, ConfigfsError
from appliance.tcmu.device import CommandExecutor, TcmuDevice
from appliance.tcmu.discovery import TcmuName, parse_uio_name
from appliance.tcmu.events import DeviceEvent
from appliance.tcmu.groups import GroupError
from appliance.tcmu.ring import RingError
from appliance.tcmu.transport import RingTransport
from appliance.volume.errors import NoSpaceError
from appliance.volume.mirror_lock import MirrorInUse
from appliance.volume.sync_mode import SyncSettings

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What serves one device's commands: ScsiDisk over a Volume (appliance.tcmu.backend)."""

    executor: CommandExecutor
    size_bytes: int

    def resize(self, size_bytes: int) -> None: ...
    def set_write_cache(self, enabled: bool) -> None: ...
    def set_journal_paused(self, paused: bool) -> bool: ...
    def set_sync(self, settings: SyncSettings) -> bool: ...
    def stopping(self) -> None: ...
    def sync_settings(self) -> SyncSettings: ...
    def status(self) -> dict: ...
    def close(self) -> None: ...


BackendFactory = Callable[[TcmuName, cfgstring.MirrorConfig, BackstoreControl | None], Backend]
TransportOpener = Callable[[int, str], RingTransport]
ControlFinder = Callable[[TcmuName], BackstoreControl | None]


@dataclass
class ServedDevice:
    minor: int
    uio_name: str
    name: TcmuName
    config: cfgstring.MirrorConfig
    control: BackstoreControl | None
    backend: Backend
    transport: RingTransport
    device: TcmuDevice
    thread: threading.Thread | None = None


class DeviceManager:
    def __init__(self, *, backend_factory: BackendFactory, open_transport: TransportOpener,
                 control_for: ControlFinder, poll_interval: float = 0.5,
                 ring_spin_us: int = 0) -> None:
        self._backend_factory = backend_factory
        self._open_transport = open_transport
        self._control_for = control_for
        self._poll_interval = poll_interval
        self._ring_spin_us = ring_spin_us
        self._lock = threading.RLock()
        self.devices: dict[int, ServedDevice] = {}

    def add(self, minor: int, uio_name: str, *, reopen: bool = False) -> int:
        """Serve a device; 0 or -errno (the ADDED_DEVICE_DONE status). Idempotent."""
        with self._lock:
            if minor in self.devices:
                return 0
            try:
                name = parse_uio_name(uio_name)
            except ValueError:
                log.exception("ignoring uio%d", minor)
                return -errno.ENOENT
            if name is None or name.subtype != cfgstring.SUBTYPE:
                return -errno.ENOENT  # not ours (libtcmu answers the same)
            try:
                config = cfgstring.parse_config(name.dev_config)
            except cfgstring.ConfigStringError as err:
                log.error("device %s: bad config string: %s", name.name, err)
                return -errno.EINVAL
            control = self._control_for(name)
            try:
                served = self._start(minor, uio_name, name, config, control, reopen)
            except GroupError as err:
                # A member the group cannot take (docs/groups.md): nothing was changed.
                log.error("device %s refused: %s", name.name, err)
                return -errno.EINVAL
            except NoSpaceError as err:
                # The kernel turns this reply into the configfs `enable` error targetcli prints.
                log.error("device %s refused: %s", name.name, err)
                return -errno.ENOSPC
            except MirrorInUse as err:
                # Stock targetcli reports this only as "creation failed": its CheckConfig
                # (daemon.check_backstore) tells the admin why first; a writer that came
                # in between is refused here, the reason logged.
                log.error("device %s refused: %s", name.name, err)
                return -errno.EBUSY
            except Exception:
                log.exception("device %s (uio%d) could not be started", name.name, minor)
                return -errno.ENOENT
            self.devices[minor] = served
            log.info("serving %s (uio%d): %s", name.name, minor, config.to_cfgstring())
            return 0

    def _start(self, minor: int, uio_name: str, name: TcmuName, config: cfgstring.MirrorConfig,
               control: BackstoreControl | None, reopen: bool) -> ServedDevice:
        if reopen and control is not None:
            # tcmu-runner's reopen: in-flight commands of a dead handler come back BUSY
            # (initiators retry) and the ring restarts at 0.
            control.block_dev(True)
        try:
            if reopen and control is not None:
                control.reset_ring(1)
            if not reopen and control is not None:
                # A new device (ADDED_DEVICE, inside enable): not exported yet, so the one
                # moment the kernel lets us turn its command timer off.
                try:
                    control.disable_cmd_time_out()
                except ConfigfsError as err:
                    log.warning("device %s: cmd_time_out stays as it is: %s", name.name, err)
            backend = self._backend_factory(name, config, control)
            try:
                transport = self._open_transport(minor, uio_name)
            except BaseException:
                backend.close()
                raise
            device = TcmuDevice(transport, backend.executor, name=name.name,
                                poll_interval=self._poll_interval, spin_us=self._ring_spin_us)
            served = ServedDevice(minor, uio_name, name, config, control, backend, transport,
                                  device)
            served.thread = threading.Thread(target=self._run, args=(served,),
                                             name=f"tcmu-{name.name}", daemon=True)
            served.thread.start()
            return served
        finally:
            if reopen and control is not None:
                control.block_dev(False)

    def _run(self, served: ServedDevice) -> None:
        while True:
            try:
                served.device.run()
                return
            except OSError as err:
                # /dev/uioN answers EIO once the kernel unregistered it (device removed while
                # no netlink reply was awaited): wait for udev/netlink to remove it here too.
                log.warning("device %s: %s; loop stopped", served.name.name, err)
                return
            except RingError:
                log.exception("device %s: ring error", served.name.name)
                if served.control is None:
                    return
                # Drop what is in the ring (initiators retry on BUSY) and start over.
                served.control.block_dev(True)
                try:
                    served.control.reset_ring(1)
                    served.device.restart_ring()
                finally:
                    served.control.block_dev(False)

    def remove(self, minor: int, *, orderly: bool = False) -> int:
        """Stop serving. `orderly` (daemon shutdown, not REMOVED_DEVICE): block new commands
        while the loop finishes what it fetched, then unblock, as tcmu-runner does."""
        with self._lock:
            served = self.devices.pop(minor, None)
            if served is None:
                return 0
            blocked = False
            if orderly and served.control is not None:
                try:
                    served.control.block_dev(True)
                    blocked = True
                except OSError:
                    log.exception("device %s: block_dev failed", served.name.name)
            served.device.stop()
            served.backend.stopping()     # a write waiting for the DR must not hold the loop
            thread = served.thread
            if thread is None:      # set before the device is listed in self.devices
                raise RuntimeError(f"device {served.name.name}: listed without a loop thread")
            thread.join(timeout=30)
            if thread.is_alive():
                log.error("device %s: loop did not stop within 30s", served.name.name)
            else:
                served.device.process()  # whatever arrived before the block took effect
            if blocked:
                served.control.block_dev(False)
            served.device.close()
            served.transport.close()
            served.backend.close()
            log.info("stopped serving %s (uio%d)", served.name.name, minor)
            return 0

    def reconfig(self, event: DeviceEvent) -> int:
        """RECONFIG_DEVICE: 0 for no-ops (restore replays every attribute), else act or refuse."""
        with self._lock:
            served = self.devices.get(event.minor)
            if served is None:
                return -errno.ENODEV
            if event.dev_cfg is not None:
                return self._reconfig_cfg(served, event.dev_cfg)
            if event.dev_size is not None:
                if event.dev_size == served.backend.size_bytes:
                    return 0
                try:
                    served.backend.resize(event.dev_size)
                except NotImplementedError:
                    return -errno.EOPNOTSUPP
                except ValueError as err:
                    log.error("device %s: resize to %d refused: %s", served.name.name,
                              event.dev_size, err)
                    return -errno.EINVAL
                return 0
            if event.writecache is not None:
                served.backend.set_write_cache(bool(event.writecache))
                return 0
            return -errno.EINVAL

    def _reconfig_cfg(self, served: ServedDevice, dev_cfg: str) -> int:
        try:
            new = cfgstring.parse_config(dev_cfg)
        except cfgstring.ConfigStringError as err:
            log.error("device %s: reconfig refused: %s", served.name.name, err)
            return -errno.EINVAL
        if new == served.config:
            return 0
        # Moving a live volume to other files is a migration, not a reconfig.
        log.error("device %s: changing %s to %s at runtime is not supported",
                  served.name.name, served.config.to_cfgstring(), new.to_cfgstring())
        return -errno.EOPNOTSUPP

    def status(self) -> dict:
        """Every served device by backstore name: its config string, its volume's state, its
        I/O counters since it was opened (`io`, docs/tcmu.md "I/O counters") and how its loop
        finds commands (`ring`)."""
        with self._lock:
            served = list(self.devices.values())
        return {dev.name.name: {**self._device_status(dev), "io": dev.device.io.snapshot(),
                                "ring": dev.device.ring_status()}
                for dev in served}

    @staticmethod
    def _device_status(dev: ServedDevice) -> dict:
        return {"uio": dev.minor, "cfgstring": dev.config.to_cfgstring(),
                **dev.backend.status()}

    def names(self) -> list[str]:
        """The backstore names served, sorted."""
        with self._lock:
            return sorted(dev.name.name for dev in self.devices.values())

    def set_journal_paused(self, name: str, paused: bool) -> dict:
        """Pause or resume journaling of the volume of backstore `name` (the admin's
        pause-journal / resume-journal). Returns its status entry with ``changed`` (False:
        it already was). Raises LookupError if no served device has that name. Under the
        lock, so the device cannot be removed meanwhile."""
        return self._change(name, lambda backend: backend.set_journal_paused(paused))

    def set_sync(self, name: str, settings: Callable[[SyncSettings], SyncSettings]) -> dict:
        """The admin's replication mode of the volume of backstore `name`, made from its
        current one by ``settings`` (which may raise SyncSettingsError: nothing changed);
        its status entry with ``changed``, as `set_journal_paused`."""
        return self._change(name, lambda backend: backend.set_sync(
            settings(backend.sync_settings())))

    def _change(self, name: str, change: Callable[[Backend], bool]) -> dict:
        with self._lock:
            dev = next((d for d in self.devices.values() if d.name.name == name), None)
            if dev is None:
                raise LookupError(name)
            changed = change(dev.backend)
            return {"volume": name, "changed": changed, **self._device_status(dev)}

    def log_state(self) -> None:
        """Log every served device's ring state: `systemctl kill -s USR1 appliance-handler`."""
        with self._lock:
            served = list(self.devices.values())
        for dev in served:
            alive = dev.thread is not None and dev.thread.is_alive()
            try:
                state = dev.device.describe()
            except ValueError:          # the ring was closed under us (device going away)
                state = "ring closed"
            log.info("device %s (uio%d): loop %s; %s", dev.name.name, dev.minor,
                     "running" if alive else "STOPPED", state)

    def close_all(self) -> None:
        for minor in list(self.devices):
            self.remove(minor, orderly=True)
