"""One device's backend: the SCSI disk emulation over a Volume (journal + mirror).

The volume uuid is derived from the mirror path (``appliance/volume/identity.py``), so it is
the same on every start without any state of our own. The unit serial is the backstore's
configfs WWN. rtslib writes it only after `enable`, i.e. after ADDED_DEVICE was answered
(rtslib `UserBackedStorageObject`), so like tcmu-runner we read it lazily: until it is known,
every INQUIRY re-reads `wwn/vpd_unit_serial` first. The first INQUIRY comes after the LUN is
mapped, when the WWN is final; a restarted handler finds it at once. Without this the serial
(and the NAA id) would change across a handler restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.control import sync_events
from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.configfs import BackstoreControl
from appliance.tcmu.discovery import TcmuName
from appliance.volume.identity import mirror_volume_uuid

log = logging.getLogger(__name__)

DEFAULT_JOURNAL_SIZE = 256 << 20
# Used when configfs gives no hw_max_sectors: far below the default 1 GiB data area.
DEFAULT_MAX_TRANSFER = 1 << 20


@dataclass
class VolumeBackend:
    """ScsiDisk over Volume; satisfies appliance.tcmu.manager.Backend."""

    volume: Any
    executor: Any
    size_bytes: int
    acks: AckListener | None = field(default=None, repr=False)

    @classmethod
    def open(cls, config: MirrorConfig, size_bytes: int, serial: str | None = None,
             *, max_transfer_bytes: int | None = None,
             read_serial: Callable[[], str | None] | None = None) -> VolumeBackend:
        """`max_transfer_bytes` (VPD 0xB0) must fit hw_max_sectors and the ring's data area,
        or the kernel fails larger commands itself (docs/scsi.md, "Decisions")."""
        from appliance.scsi import DiskIdentity, DiskLimits, ScsiDisk
        from appliance.volume import Volume, VolumeConfig

        vol_uuid = mirror_volume_uuid(config.mirror)
        max_transfer = max_transfer_bytes or DEFAULT_MAX_TRANSFER
        volume = Volume.open(VolumeConfig(
            uuid=vol_uuid, num_blocks=size_bytes // config.block_size,
            block_size=config.block_size,
            journal_size=config.journal_size or DEFAULT_JOURNAL_SIZE,
            mirror_path=config.mirror, journal_path=config.journal,
            bitmap_path=config.bitmap_path, max_transfer_bytes=max_transfer))
        try:
            volume.write_cache_enabled = config.wce
            disk = ScsiDisk(volume, DiskIdentity(serial or vol_uuid.hex),
                            DiskLimits(max_transfer_bytes=max_transfer))
        except BaseException:
            volume.close()
            raise
        executor = disk if serial or read_serial is None else _LazySerialDisk(disk, read_serial)
        return cls(volume, executor, size_bytes, AckListener.start(volume))

    def resize(self, size_bytes: int) -> None:
        """Grow/shrink the volume, then the disk reports CAPACITY DATA HAS CHANGED."""
        resize = getattr(self.volume, "resize", None)
        if resize is None:
            raise NotImplementedError("Volume.resize is not available")
        resize(size_bytes // self.volume.block_size)
        self.executor.resized()
        self.size_bytes = size_bytes

    def set_write_cache(self, enabled: bool) -> None:
        self.volume.write_cache_enabled = enabled

    def set_sync(self, settings: Any) -> bool:
        """The admin's replication mode (a SyncSettings); False if it already was so."""
        return self.volume.set_sync(settings)

    def sync_settings(self) -> Any:
        return self.volume.sync.settings

    def set_journal_paused(self, paused: bool) -> bool:
        """The admin pauses (or resumes) journaling; False if it already was (not)."""
        return self.volume.pause_journal() if paused else self.volume.resume_journal()

    def status(self) -> dict:
        return volume_status(self.volume, self.size_bytes)

    def stopping(self) -> None:
        """The device loop stops: release writes waiting for the DR (SyncAborted)."""
        self.volume.sync.close()

    def close(self) -> None:
        if self.acks is not None:
            self.acks.stop()
        self.volume.close()


def volume_status(volume: Any, size_bytes: int) -> dict:
    """The volume's state, and what it holds that the peer has not acknowledged: also
    visible when no transmitter runs (docs/protocol.md, "What status derives from")."""
    st = volume.status()
    journal = st["journal"]
    not_acked = max(0, journal["next_seq"] - 1 - journal["acked_seq"])
    dirty = st["dirty_chunks"] * st["chunk_size"]
    return {**st, "volume_state": st["state"], "uuid": str(volume.uuid),
            "size_bytes": size_bytes,
            "peer_lag_records": not_acked, "peer_lag_dirty_bytes": dirty,
            "peer_holds_everything": not_acked == 0 and dirty == 0
            and st["state"] == "journaling"}


@dataclass
class GroupMemberBackend:
    """One member device of a consistency group: ScsiDisk over its view of the group's
    Volume (appliance/tcmu/groups.py). Mode, journal pause and write cache are the group's."""

    registry: Any                       # groups.GroupRegistry
    group: Any                          # groups.OpenGroup
    member: str
    volume: Any                         # group_member.MemberVolume
    executor: Any
    size_bytes: int

    @classmethod
    def open(cls, registry: Any, name: str, config: MirrorConfig, size_bytes: int,
             serial: str | None = None, *, max_transfer_bytes: int | None = None,
             read_serial: Callable[[], str | None] | None = None) -> GroupMemberBackend:
        from appliance.scsi import DiskIdentity, DiskLimits, ScsiDisk
        from appliance.volume.group_member import MemberVolume

        max_transfer = max_transfer_bytes or DEFAULT_MAX_TRANSFER
        group, member = registry.attach(name, config, size_bytes, max_transfer)
        try:
            view = MemberVolume(group.volume, member.offset_blocks, member.num_blocks)
            # The group's Volume was opened with its first member's transfer limit.
            limit = min(max_transfer, group.volume.config.max_transfer_bytes)
            disk = ScsiDisk(view, DiskIdentity(serial or mirror_volume_uuid(config.mirror).hex),
                            DiskLimits(max_transfer_bytes=limit))
        except BaseException:
            registry.detach(group, name)
            raise
        executor = disk if serial or read_serial is None else _LazySerialDisk(disk, read_serial)
        return cls(registry, group, name, view, executor, size_bytes)

    def resize(self, size_bytes: int) -> None:
        from appliance.volume.resizing import ResizeRefused
        raise ResizeRefused(f"member {self.member} of group {self.group.name} keeps its size "
                            "(the next member starts where it ends)")

    def set_write_cache(self, enabled: bool) -> None:
        self.volume.write_cache_enabled = enabled

    def set_sync(self, settings: Any) -> bool:
        return self.group.volume.set_sync(settings)

    def sync_settings(self) -> Any:
        return self.group.volume.sync.settings

    def set_journal_paused(self, paused: bool) -> bool:
        vol = self.group.volume
        return vol.pause_journal() if paused else vol.resume_journal()

    def status(self) -> dict:
        """The group's volume state (its uuid is the group's), and where this member is."""
        return {**volume_status(self.group.volume, self.size_bytes),
                "group": self.group.name, "member": self.member,
                "offset_blocks": self.volume.offset_blocks}

    def stopping(self) -> None:
        self.registry.stopping(self.group, self.member)

    def close(self) -> None:
        self.registry.detach(self.group, self.member)


class AckListener:
    """The volume's end of the sync events (appliance/control/sync_events.py): a thread that
    hands the transmitter's ACKED events to the volume's sync gate, and the gate's nudge
    that tells the transmitter a write waits."""

    def __init__(self, volume: Any, events: sync_events.SyncEvents) -> None:
        self.volume = volume
        self.events = events
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"acks-{volume.uuid}")

    @classmethod
    def start(cls, volume: Any) -> AckListener | None:
        try:
            events = sync_events.SyncEvents(volume.uuid, sync_events.HANDLER)
        except OSError as err:
            log.warning("volume %s: no sync events (%s): a write in a synchronous mode learns "
                        "of the DR's acknowledgements only from the journal, when its "
                        "fall-back time runs out", volume.uuid, err)
            return None
        listener = cls(volume, events)
        journal = volume.journal_uuid
        volume.sync.set_nudge(lambda seq: events.send(sync_events.Kind.WRITTEN, seq, journal))
        listener._thread.start()
        return listener

    def _run(self) -> None:
        while True:
            event = self.events.receive()
            if event is None or event[0] is sync_events.Kind.STOP:
                return
            kind, seq, journal = event
            if kind is sync_events.Kind.ACKED and journal == self.volume.journal_uuid:
                self.volume.sync.note_acked(seq)
            elif kind is sync_events.Kind.ACKED:
                log.info("volume %s: ignored an acknowledgement of journal %s (this volume's "
                         "is %s): a transmitter of an earlier journal", self.volume.uuid,
                         journal, self.volume.journal_uuid)

    def stop(self) -> None:
        self.volume.sync.set_nudge(None)
        self.events.wake()
        self._thread.join(timeout=5)
        self.events.close()


class _LazySerialDisk:
    """A ScsiDisk whose unit serial is filled in from configfs once rtslib has set it."""

    _INQUIRY = 0x12

    def __init__(self, disk: Any, read_serial: Callable[[], str | None]) -> None:
        self.disk = disk
        self._read_serial: Callable[[], str | None] | None = read_serial

    def execute(self, cmds: Sequence[Any]) -> list[Any]:
        read_serial = self._read_serial
        if read_serial is not None and any(
                cmd.cdb[:1] == bytes([self._INQUIRY]) for cmd in cmds):
            self._refresh(read_serial)
        return self.disk.execute(cmds)

    def _refresh(self, read_serial: Callable[[], str | None]) -> None:
        from appliance.scsi import DiskIdentity
        try:
            serial = read_serial()
            if serial:
                self.disk.identity = DiskIdentity(serial)
                self._read_serial = None
                log.info("unit serial is now %s", serial)
        except (OSError, ValueError):
            log.exception("cannot read the unit serial; keeping %s", self.disk.identity.serial)

    def resized(self) -> None:
        self.disk.resized()


def open_backend(name: TcmuName, config: MirrorConfig,
                 control: BackstoreControl | None, *,
                 groups: Any = None) -> VolumeBackend | GroupMemberBackend:
    """BackendFactory for the daemon: size and WWN from configfs. A `group=` device is a
    member of that group in ``groups`` (a groups.GroupRegistry)."""
    if control is None:
        raise ValueError(f"device {name.name}: no configfs directory to read its size from")
    size = control.dev_size()
    try:
        hw_block = control.hw_block_size()
        if hw_block != config.block_size:
            log.warning("device %s: LIO hw_block_size %d differs from block_size=%d in the "
                        "config string; the host sees %d", name.name, hw_block,
                        config.block_size, config.block_size)
    except (OSError, ValueError):
        pass
    try:
        serial = control.unit_serial()
    except OSError:
        serial = None  # not set yet at ADDED_DEVICE: read on the first INQUIRY
    try:
        max_transfer = control.hw_max_sectors() * config.block_size
    except (OSError, ValueError):
        max_transfer = None
    if config.group is not None:
        if groups is None:
            raise ValueError(f"device {name.name}: group={config.group} but this handler "
                             "serves no groups")
        return GroupMemberBackend.open(groups, name.name, config, size, serial,
                                       max_transfer_bytes=max_transfer,
                                       read_serial=control.unit_serial)
    return VolumeBackend.open(config, size, serial, max_transfer_bytes=max_transfer,
                              read_serial=control.unit_serial)
