"""Opening the three files of a volume, and the journal facts the write fork relies on."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from appliance.journal import Journal, JournalMismatch, JournalUsage, VolumeFiles
from appliance.journal.format import (
    JBLOCK,
    SUPERBLOCK_BLOCKS,
    SUPERBLOCK_MAGIC,
    choose_segment_blocks,
)
from appliance.journal.header import load_superblock, read_header
from appliance.storage import open_file
from appliance.volume import bitmap_format, group_layout
from appliance.volume.bitmap import DirtyBitmap
from appliance.volume.concat_io import open_mirror
from appliance.volume.errors import NoSpaceError, VolumeConfigError
from appliance.volume.mirror_lock import MirrorLock
from appliance.volume.promotion_base import PromotionBase, read_marker, remove_marker

if TYPE_CHECKING:
    from appliance.storage import BlockIO
    from appliance.volume.config import VolumeConfig

__all__ = ["Journal", "Parts", "acked_seq", "mirror_durable_seq", "open_parts", "usage_dict"]

log = logging.getLogger("appliance.volume")


@dataclass
class Parts:
    journal: Journal
    mirror: BlockIO
    bitmap: DirtyBitmap
    mirror_lock: MirrorLock | None     # None for a mirror handed in open (tests)


def open_parts(config: VolumeConfig) -> Parts:
    """Open (creating what is missing) mirror, journal and bitmap; on any error close what
    was opened and leave every file as it was."""
    opened: list = []
    check_space(config)
    # Read before the mirror is opened (which may create it).
    mirror_existed = config.mirror_io is None and config.mirror_path is not None \
        and os.path.exists(config.mirror_path)
    mirror_had_data = mirror_existed and mirror_holds_data(config.mirror_path)
    try:
        if config.mirror_io is None:
            # One writer per mirror (mirror_lock.py), taken before the first byte is written
            # (opening may extend the file); the files the open created are covered after it.
            lock = MirrorLock.take(config.mirror_path, "handler")
            opened.append(lock)
            mirror = open_mirror(config.mirror_path, create_size=config.volume_bytes)
            lock.cover(config.mirror_path)
        else:
            lock, mirror = None, config.mirror_io
        opened.append(mirror)
        if mirror.size() < config.volume_bytes:
            raise VolumeConfigError(f"mirror holds {mirror.size()} bytes, the volume needs "
                                    f"{config.volume_bytes} ({config.num_blocks} blocks of "
                                    f"{config.block_size}); enlarge the mirror")
        bitmap_io = config.bitmap_io or open_file(
            config.bitmap_path, create_size=bitmap_format.file_size(config.num_chunks))
        opened.append(bitmap_io)
        # Read-only checks of everything first, so a refusal leaves every file untouched.
        target = config.journal_io if config.journal_io is not None else config.journal_path
        existing = _holds_journal(target)
        if existing:
            _check_journal(target, config)
        # The bitmap's chunk count follows the journal's size (adopt_size): they differ only
        # after a power cut in the middle of Volume.resize.
        DirtyBitmap.check(bitmap_io, volume_uuid=config.uuid, chunk_size=config.chunk_size,
                          num_chunks=config.num_chunks, adopt_size=True)
        def open_bitmap() -> DirtyBitmap:
            bitmap = DirtyBitmap.open(bitmap_io, volume_uuid=config.uuid,
                                      chunk_size=config.chunk_size,
                                      num_chunks=config.num_chunks, adopt_size=True)
            opened.append(bitmap)
            return bitmap

        # A promoted mirror (promote left a marker beside it), even one without data extents:
        # its image is the marker's base, whatever it holds.
        base = read_marker(config.mirror_path, config.volume_bytes) \
            if mirror_existed and not existing else None
        if (mirror_had_data or base is not None) and not existing:
            # The base or the marks must be durable before the journal exists (see
            # adopt_promoted_mirror, adopt_mirror); a journal that cannot be created then
            # leaves them behind, which loses nothing.
            bitmap = open_bitmap()
            if base is not None:
                adopt_promoted_mirror(bitmap, base, config)
            else:
                adopt_mirror(bitmap, config)
            journal = _open_journal(target, existing, config)
            opened.append(journal)
        else:
            journal = _open_journal(target, existing, config)
            opened.append(journal)
            bitmap = open_bitmap()
        publish_volume_files(journal, config)
        return Parts(journal, mirror, bitmap, lock)
    except BaseException:
        for part in reversed(opened):
            part.close()
        raise


def publish_volume_files(journal: Journal, config: VolumeConfig) -> None:
    """Name the mirror and bitmap in the journal, so the transmitter finds them from the
    volume itself and can always resync (docs/journal-format.md, "Volume-files slot"). A new
    journal names them from its creation on (Journal.create); this keeps an older one's
    right."""
    files = _volume_files(config)
    if files is not None:
        journal.publish_volume_files(files)


def _volume_files(config: VolumeConfig) -> VolumeFiles | None:
    """Files handed in as open BlockIOs (tests) have no path to name."""
    if config.mirror_path is None or config.bitmap_path is None:
        return None
    return VolumeFiles(os.path.abspath(config.mirror_path), os.path.abspath(config.bitmap_path))


def mirror_holds_data(path: str | os.PathLike[str] | None) -> bool:
    """Whether the mirror at `path` may hold data: a regular file with any data extent (one
    created sparse by us and never written has none), or any block device."""
    if path is None or not os.path.exists(path):
        return False
    if group_layout.is_layout_path(path):       # a group: any member's data counts
        return any(mirror_holds_data(m.mirror) for m in group_layout.load(path).members)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return True
    if st.st_size == 0:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as err:
        if err.errno == errno.ENXIO:            # holes only
            return False
        raise
    finally:
        os.close(fd)
    return True


def adopt_mirror(bitmap: DirtyBitmap, config: VolumeConfig) -> None:
    """A new journal over a mirror that already holds data (an existing disk taken over, or
    a lost journal): the peer can never get that data from the journal, so every chunk goes
    to the bitmap for a full resync. Done durably before the journal is created, so a power
    cut in between finds the journal still missing and does it again."""
    log.warning("volume %s: mirror %s already holds data that the new journal %s never "
                "recorded; every chunk is marked for a full resync to the peer", config.uuid,
                config.mirror_path, config.journal_path)
    bitmap.set_mode(True, 0, reason=bitmap_format.REASON_ADOPTED_MIRROR)
    bitmap.mark_all()
    # Every chunk is dirty now: no image before the journal is assumed, and a marker that
    # could not be trusted is not read again.
    bitmap.set_base(None)
    if config.mirror_path is not None:
        remove_marker(config.mirror_path)


def adopt_promoted_mirror(bitmap: DirtyBitmap, base: PromotionBase,
                          config: VolumeConfig) -> None:
    """A new journal over a mirror that ``promote`` left a marker beside: the mirror holds
    exactly the image the marker names, so nothing is marked; the bitmap header records that
    base (the transmitter names it to its peer, which either holds it or asks for a full copy),
    and from now on the bitmap and journal hold exactly what this site changes.

    Order, for a power cut at any point: the base durable, then the marker removed durably,
    then (the caller) the journal created. A cut before the journal exists finds no journal:
    with the marker still there it adopts again; without it, it marks every chunk (safe, only
    slower). The marker never outlives the adoption, so it is never taken again over a mirror
    this site has written since."""
    if bitmap.logging:
        # A bitmap left from an earlier life of this volume: its dirty chunks stay dirty
        # (shipping them again costs only time), its overflow seq belongs to a journal gone.
        bitmap.set_mode(True, 0)
    bitmap.set_base(base)
    remove_marker(config.mirror_path)
    log.warning("volume %s: adopted the promoted image of volume %s at seq %d (generation "
                "%d) from mirror %s: no chunk marked; a failback to the old site copies only "
                "what changes here from now on (and what that site never shipped)",
                config.uuid, base.lineage, base.seq, base.generation, config.mirror_path)


def _missing_bytes(path: str | os.PathLike[str] | None, full_size: int) -> tuple[int, str | None]:
    """Bytes a regular file at `path` still needs to allocate to hold `full_size` bytes, and
    the directory whose file system must provide them. Block devices need nothing."""
    if path is None:
        return 0, None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return full_size, os.path.dirname(os.path.abspath(path))
    if not stat.S_ISREG(st.st_mode):
        return 0, None
    return max(0, full_size - st.st_blocks * 512), os.path.dirname(os.path.abspath(path))


def check_space(config: VolumeConfig) -> None:
    """Refuse, before anything is created, a volume whose files cannot fit at full size.

    Mirror and journal are sparse files; accepting a 1 TiB disk on an 8 GiB file system would
    only move the failure to the host's writes (MEDIUM ERROR once ENOSPC hits), which is what
    an admin least wants to find out in production. We do not overcommit."""
    needs: dict[int, tuple[int, str]] = {}      # st_dev -> (bytes, directory)
    # (A group's members are checked when each joins, not as one file here.)
    mirror = None if config.mirror_io or group_layout.is_layout_path(config.mirror_path) \
        else config.mirror_path
    for path, size in ((mirror, config.volume_bytes),
                       (None if config.journal_io else config.journal_path, config.journal_size),
                       (None if config.bitmap_io else config.bitmap_path,
                        bitmap_format.file_size(config.num_chunks))):
        missing, directory = _missing_bytes(path, size)
        if not missing or directory is None or not os.path.isdir(directory):
            continue
        dev = os.stat(directory).st_dev
        total, _ = needs.get(dev, (0, directory))
        needs[dev] = (total + missing, directory)
    for missing, directory in needs.values():
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        if missing > free:
            raise NoSpaceError(
                f"the volume's files need {_human(missing)} more on the file system of "
                f"{directory}, which has {_human(free)} free; choose a smaller size or journal, "
                "or put the mirror on a bigger file system or a block device")


def _human(nbytes: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes} bytes"


def _open_journal(target: str | os.PathLike[str] | BlockIO, existing: bool,
                  config: VolumeConfig) -> Journal:
    if not existing:
        return Journal.create(target, size=config.journal_size, volume_uuid=config.uuid,
                              volume_block_size=config.block_size,
                              volume_blocks=config.num_blocks,
                              segment_size=_segment_size(config),
                              volume_files=_volume_files(config))
    journal = Journal.open(target, volume_uuid=config.uuid)
    if journal.max_op_bytes < config.max_transfer_bytes:
        journal.close()
        raise VolumeConfigError(
            f"the journal takes writes of at most {journal.max_op_bytes} bytes, less than "
            f"max_transfer_bytes {config.max_transfer_bytes}; lower it or use a bigger journal")
    return journal


def _check_journal(target: str | os.PathLike[str] | BlockIO, config: VolumeConfig) -> None:
    """Read-only: the superblock names this volume and its geometry (Journal.open would
    write its checkpoint slot before we could look)."""
    if isinstance(target, str | os.PathLike):
        with open_file(target) as io:
            return _check_journal(io, config)
    sb = load_superblock(target, read_header(target), config.uuid)
    if (sb.volume_block_size, sb.volume_blocks) != (config.block_size, config.num_blocks):
        raise JournalMismatch(
            f"journal was made for {sb.volume_blocks} blocks of {sb.volume_block_size} "
            f"bytes, the volume has {config.num_blocks} of {config.block_size}; point the "
            "volume at its own journal")
    return None


def _segment_size(config: VolumeConfig) -> int | None:
    """The journal's default segments, unless they are too small for one maximal transfer."""
    total = config.journal_size // JBLOCK
    default = choose_segment_blocks(total, None)
    need = 1 + -(-config.max_transfer_bytes // JBLOCK)     # metadata block + data
    return None if default >= need else need * JBLOCK


def _holds_journal(target: str | os.PathLike[str] | BlockIO) -> bool:
    """True unless the target is missing or blank (then a journal is created on it)."""
    if isinstance(target, str | os.PathLike):
        if not os.path.exists(target) or os.path.getsize(target) == 0:
            return False
        with open_file(target) as io:
            return _io_holds_journal(io)
    return _io_holds_journal(target)


def _io_holds_journal(io: BlockIO) -> bool:
    """Anything but zeros in the superblock copies counts (a foreign file is then refused
    by Journal.open instead of being overwritten)."""
    span = (max(SUPERBLOCK_BLOCKS) + 1) * JBLOCK
    if io.size() < span:
        return io.size() > 0
    head = bytearray(span)
    io.pread_into(0, memoryview(head))
    return SUPERBLOCK_MAGIC in head or any(head)


def mirror_durable_seq(journal: Journal) -> int:
    return journal.mirror_durable_seq


def acked_seq(journal: Journal) -> int:
    """The peer's acknowledged seq, re-read from the transmitter's slot."""
    return journal.usage().acked_seq


def usage_dict(usage: JournalUsage) -> dict:
    return asdict(usage)
