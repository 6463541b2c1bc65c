"""The write fork: every host write goes to the journal (write-ahead) and then the mirror.

The write-ahead rule (docs/volume.md): a write reaches the mirror only after its journal
record is durable, or, while the journal is full (``logging-to-bitmap``), after its chunk is
durably marked in the dirty-region bitmap. So after any crash the mirror holds nothing the
journal and bitmap do not account for, and recovery redoes the records above the journal's
mirror-durable checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from appliance.compiled import mypyc_attr
from appliance.journal import InvalidRequest, JournalFull, OpKind, WriteOp
from appliance.journal.resize import set_volume_blocks
from appliance.volume import bitmap_format, journal_link, resizing, scatter
from appliance.volume.applier import Mark, MirrorApplier
from appliance.volume.bitmap import DirtyBitmap
from appliance.volume.config import FlushPolicy, VolumeConfig
from appliance.volume.errors import MediumError, VolumeError
from appliance.volume.mirror import Mirror
from appliance.volume.pending import PendingWrites
from appliance.volume.requests import check_ops, check_range, split_batch
from appliance.volume.sync_mode import SyncGate, SyncSettings, from_header, to_header
from appliance.volume.ticker import Ticker

if TYPE_CHECKING:
    from appliance.storage import BlockIO
    from appliance.volume.mirror_lock import MirrorLock

log = logging.getLogger("appliance.volume")
JOURNALING: Final = "journaling"
LOGGING_TO_BITMAP: Final = "logging-to-bitmap"


# Compiled (appliance/compiled.py), a class admits interpreted subclasses only if it says so:
# the SCSI tests record what the disk asks of its volume with one (tests/unit/scsi/conftest.py).
@mypyc_attr(allow_interpreted_subclasses=True)
class Volume:
    """One volume: journal + mirror + overflow bitmap. Thread-safe (one lock per volume)."""

    def __init__(self, config: VolumeConfig, journal: journal_link.Journal, mirror: Mirror,
                 bitmap: DirtyBitmap, mirror_lock: MirrorLock | None = None) -> None:
        self.config = config
        self._mirror_lock = mirror_lock     # held until close (one writer per mirror)
        self.block_size = config.block_size
        self.num_blocks = config.num_blocks
        self.uuid = config.uuid
        self._journal = journal
        self.journal_uuid = journal.sb.journal_uuid     # what the DR's acknowledgements name
        self._mirror = mirror
        self._bitmap = bitmap
        self._lock = threading.RLock()
        self._pending = PendingWrites(config.block_size, journal.io, config.overlay_span_bytes)
        self._large_write_blocks = config.overlay_span_bytes // config.block_size
        self._direct = config.direct_io and _enable_direct((journal.io, mirror.io),
                                                           config.overlay_span_bytes)
        self._wce = config.flush_policy == FlushPolicy.ON_FLUSH
        self._max_blocks = config.max_transfer_bytes // config.block_size
        # Looked up per write; they depend on the journal's size and segments, which a resize
        # keeps.
        self._mirror_sync_bytes = config.effective_mirror_sync_bytes
        self._journal_batch_bytes = journal.max_batch_bytes
        self._applier = MirrorApplier(journal, mirror, self._pending)
        self._last_poll = 0.0
        self._overflows = 0
        self._closed = False
        self._ticker: Ticker | None = None
        self.sync = SyncGate(from_header(bitmap.sync_flags, bitmap.sync_fallback_ms),
                             read_acked=lambda: journal_link.acked_seq(journal),
                             journaling=lambda: not bitmap.logging, name=str(config.uuid))

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def open(cls, config: VolumeConfig) -> Volume:
        """Open or create journal, mirror and bitmap; redo the journal onto the mirror."""
        config.validate()
        parts = journal_link.open_parts(config)
        vol = cls(config, parts.journal, Mirror(parts.mirror, config.block_size,
                                                config.num_blocks), parts.bitmap,
                  parts.mirror_lock)
        try:
            vol._applier.redo()
        except BaseException:
            vol._close_parts()
            raise
        if config.service_interval is not None:
            vol._ticker = Ticker(vol._tick, config.service_interval, f"volume-{config.uuid}")
        return vol

    def _tick(self) -> None:
        """Background work. The periodic mirror fdatasync runs without the volume lock, so
        host I/O goes on meanwhile; it claims only what was applied before it started."""
        with self._lock:
            if self._closed:
                return
            mark = self._service(time.monotonic(), defer_mirror_sync=True)
        if mark is None:
            return
        self._mirror.sync()       # close() stops this thread before closing the mirror
        with self._lock:
            if not self._closed:
                self._applier.checkpoint_end(mark)

    def close(self) -> None:
        self.sync.close()             # nothing may wait for the DR on a closed volume
        if self._ticker is not None:
            self._ticker.stop()
        with self._lock:
            if self._closed:
                return
            try:
                if not self._bitmap.logging:
                    self._applier.commit_pending()
                    self._applier.checkpoint_mirror()
                else:
                    self._mirror.sync()
            finally:
                self._closed = True
                self._close_parts()

    def _close_parts(self) -> None:
        """Close all three even if one fails (the first error is raised)."""
        with contextlib.ExitStack() as stack:
            if self._mirror_lock is not None:
                stack.callback(self._mirror_lock.close)     # last: once nothing writes
            for part in (self._bitmap, self._mirror, self._journal):
                stack.callback(part.close)

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return LOGGING_TO_BITMAP if self._bitmap.logging else JOURNALING

    @property
    def mirror_io(self) -> BlockIO:
        """The mirror's BlockIO: a group's ConcatBlockIO, to which the handler adds a member
        that joins (appliance/tcmu/groups.py)."""
        return self._mirror.io

    def cover_mirror(self, path: str) -> None:
        """Hold the writer's lock on a member that joins (mirror_lock.py); ``MirrorInUse``
        if another writer has it."""
        if self._mirror_lock is not None:
            self._mirror_lock.cover(path)

    @property
    def journal_paused(self) -> bool:
        """The admin paused journaling (persisted in the bitmap header)."""
        return self._bitmap.journal_paused

    @property
    def write_cache_enabled(self) -> bool:
        return self._wce

    @write_cache_enabled.setter
    def write_cache_enabled(self, enabled: bool) -> None:
        with self._lock:
            if not enabled and self._wce:      # WCE off: nothing may stay volatile
                self._make_durable("write cache flush")
            self._wce = bool(enabled)

    def status(self) -> dict:
        with self._lock:
            usage = self._journal.usage()
            dirty = self._bitmap.dirty_chunks
            alert = None
            reason = self._bitmap.reason_text
            if self._bitmap.logging:
                alert = (f"{reason}: logging writes to the dirty-region bitmap "
                         f"({dirty} chunks of {self._bitmap.chunk_size} bytes to resync)")
                if self._bitmap.journal_paused:
                    alert = ("journaling " + alert + "; resume-journal to journal again "
                             "(the resync then ships them)")
            return {
                "state": self.state,
                "alert": alert,
                "journal_paused": self._bitmap.journal_paused,
                "logging_reason": reason,
                "write_cache_enabled": self._wce,
                "journal": journal_link.usage_dict(usage),
                "dirty_chunks": dirty,
                "chunk_size": self._bitmap.chunk_size,
                "overflow_seq": self._bitmap.overflow_seq,
                "logging_since": (self._bitmap.logging_since_ns / 1e9
                                  if self._bitmap.logging_since_ns else None),
                "overflows": self._overflows,
                "mirror_applied_seq": self._applier.applied_seq,
                "mirror_durable_seq": self._applier.durable_seq,
                "pending_bytes": self._pending.nbytes,
                "background_error": self._ticker.last_error if self._ticker else None,
                "sync": self.sync.status(),
            }

    # -- reads ------------------------------------------------------------------------
    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        # The usual read passes inline; check_range says what is wrong with any other.
        if not (type(lba) is int and type(nblocks) is int and lba >= 0
                and 0 < nblocks <= self._max_blocks and lba + nblocks <= self.num_blocks):
            check_range(lba, nblocks, self.num_blocks, self._max_blocks)
        if ((bufs[0].nbytes if len(bufs) == 1 else scatter.total_length(bufs))
                != nblocks * self.block_size):
            raise InvalidRequest(f"read of {nblocks} blocks into buffers of "
                                 f"{scatter.total_length(bufs)} bytes")
        with self._lock:
            self._check_open()
            try:
                self._mirror.read_into(lba, nblocks, bufs)
            except OSError as err:
                raise MediumError("read", f"mirror read at block {lba} failed: {err}") from err
            if self._pending:
                try:
                    self._pending.overlay(lba, nblocks, bufs)
                except OSError as err:
                    raise MediumError("read", f"journal read of cached writes at block {lba} "
                                              f"failed: {err}") from err

    # -- writes -----------------------------------------------------------------------
    def submit(self, ops: Sequence[WriteOp], *, fua: bool = False) -> None:
        """One group commit: one journal append, at most one journal fdatasync, then the
        mirror writes. Returns when the writes are readable (and durable if fua or WCE off),
        and, in a synchronous mode, durable at the DR (``self.sync``, outside the lock)."""
        with self._lock:
            seq = self._submit_locked(ops, fua)
        self.sync.after_write(seq, durable=fua or not self._wce)

    def _submit_locked(self, ops: Sequence[WriteOp], fua: bool) -> int | None:
        """The local part of submit; the batch's last journal seq, None if any of it went to
        the dirty bitmap."""
        payload = check_ops(ops, block_size=self.block_size, num_blocks=self.num_blocks,
                            max_transfer_blocks=self._max_blocks)
        self._check_open()
        try:
            # With a ticker the background work has a thread of its own (every
            # service_interval); without one (tests, tools) the writes drive it.
            if self._ticker is None:
                self._service_if_due()
            rest = ops if self._bitmap.logging else self._journal_write(ops, fua, payload)
            if rest:
                self._bitmap_write(rest, fua)
                return None
            return self._journal.next_seq - 1
        except OSError as err:
            raise MediumError("write", f"write failed: {err}") from err

    def _journal_write(self, ops: Sequence[WriteOp], fua: bool,
                       payload: int) -> Sequence[WriteOp]:
        """Journal the batch (`payload` data bytes) and apply it: now, or in on-flush mode
        (write cache on, no FUA) at the next sync, the overlay serving reads meanwhile.

        Normally one append; a batch bigger than the journal takes in one append is split,
        still with one sync. Returns the ops that found the journal full (they go to the
        bitmap; the mode has been switched)."""
        appended: list[tuple[Sequence[WriteOp], int, list[int] | None]] = []
        rest: Sequence[WriteOp] = ()
        cache = self._wce and not fua and not self._writes_through_directly(ops, payload)
        max_bytes = self._journal_batch_bytes
        groups = ((0, ops),) if payload <= max_bytes else split_batch(ops, max_bytes)
        for start, group in groups:
            offsets: list[int] | None = [] if cache else None
            seqs = self._append(group, offsets)
            if seqs is None:
                rest = ops[start:]
                break
            appended.append((group, seqs[-1], offsets))
        if cache and not rest:
            for group, last, offsets in appended:
                self._pending.add(group, last, offsets)
            if self._pending.nbytes > self.config.pending_limit_bytes:
                self._applier.commit_pending()
        elif appended:
            self._journal.sync()        # covers this batch and any earlier on-flush writes
            self._applier.drain_pending()
            self._applier.apply_in_order([(group, last) for group, last, _ in appended])
        if rest:
            self._enter_logging("journal full: the peer has not acknowledged enough of it",
                                bitmap_format.REASON_JOURNAL_FULL)
        elif self._applier.unsynced_mirror_bytes() > self._mirror_sync_bytes:
            self._applier.checkpoint_mirror()
        return rest

    def _writes_through_directly(self, ops: Sequence[WriteOp], payload: int) -> bool:
        """With direct I/O, a cached batch holding a large WRITE is written through at once
        (journal, sync, mirror), its data going from the caller's buffers to both files
        without the page cache: cheaper than a copy or a span, which both pass through it
        twice (docs/volume.md, "Direct I/O")."""
        if not self._direct or payload < self.config.overlay_span_bytes:
            return False
        if not (_writes_direct(self._journal.io) and _writes_direct(self._mirror.io)):
            return False    # a file refused direct I/O since: spans again
        large = self._large_write_blocks
        return any(op.kind is OpKind.WRITE and op.nblocks >= large for op in ops)

    def _append(self, ops: Sequence[WriteOp], data_offsets: list[int] | None) -> range | None:
        """journal.append, with a mirror checkpoint at need; None if the journal stays full."""
        try:
            return self._journal.append(ops, data_offsets)
        except JournalFull:
            pass
        # At need: a mirror checkpoint may free what the peer already acknowledged.
        self._applier.commit_pending()
        self._applier.checkpoint_mirror()
        try:
            return self._journal.append(ops, data_offsets)
        except JournalFull:
            return None

    def _bitmap_write(self, ops: Sequence[WriteOp], fua: bool) -> None:
        """logging-to-bitmap: mark the chunks durably, then write the mirror."""
        bm = self._bitmap
        gen = bm.begin_batch()
        ranges = [bm.chunk_range(op.lba * self.block_size, op.nblocks * self.block_size)
                  for op in ops]
        if bm.mark(ranges, gen):
            bm.sync()
        self._mirror.apply(ops)
        if fua or not self._wce:
            self._mirror.sync()
        bm.finish_batch(gen)

    def flush(self) -> None:
        """SYNCHRONIZE CACHE: everything submitted so far is durable when this returns (at
        the DR too in a synchronous mode)."""
        with self._lock:
            self._check_open()
            self._make_durable("flush")
            head = None if self._bitmap.logging else self._journal.next_seq - 1
        self.sync.after_flush(head)

    def set_sync(self, settings: SyncSettings) -> bool:
        """The admin's replication mode, durably in the bitmap header, then live. False if it
        was already so."""
        with self._lock:
            self._check_open()
            if settings == self.sync.settings:
                return False
            flags, fallback_ms = to_header(settings)
            try:
                self._bitmap.set_sync(flags, fallback_ms)
            except OSError as err:
                raise MediumError("write", f"saving the replication mode failed: {err}") \
                    from err
        return self.sync.configure(settings)

    def _make_durable(self, what: str) -> None:
        """Everything submitted so far durable: in bitmap mode the marks are already synced,
        so only the mirror; otherwise the pending journal commit (which writes the mirror)."""
        try:
            if self._bitmap.logging:
                self._mirror.sync()
            else:
                self._applier.commit_pending()
        except OSError as err:
            raise MediumError("write", f"{what} failed: {err}") from err

    def compare_and_write(self, lba: int, verify: memoryview, data: memoryview,
                          *, fua: bool = False) -> int | None:
        """COMPARE AND WRITE, atomic against other writes (the volume lock).
        Returns the byte offset of the first mismatch (nothing written) or None."""
        verify, data = memoryview(verify).cast("B"), memoryview(data).cast("B")
        if verify.nbytes != data.nbytes or verify.nbytes % self.block_size:
            raise InvalidRequest(f"compare and write: verify ({verify.nbytes} bytes) and data "
                                 f"({data.nbytes} bytes) must be the same whole blocks")
        nblocks = verify.nbytes // self.block_size
        check_range(lba, nblocks, self.num_blocks, self._max_blocks)
        with self._lock:
            current = bytearray(verify.nbytes)
            self.read_into(lba, nblocks, [memoryview(current)])
            mismatch = _first_mismatch(current, verify)
            if mismatch is not None:
                return mismatch
            seq = self._submit_locked([WriteOp(OpKind.WRITE, lba, nblocks, data)], fua)
        self.sync.after_write(seq, durable=fua or not self._wce)
        return None

    def resize(self, num_blocks: int) -> None:
        """Grow or shrink the volume to `num_blocks` (a DEV_SIZE reconfiguration).

        Everything cached is made durable on the mirror first. A shrink is refused
        (`ResizeRefused`, nothing changed) if it would discard data the peer does not hold
        yet. Crash-safe: after a power cut the volume opens at the old or the new size,
        whichever the journal's superblock records (docs/volume.md, "Resizing")."""
        if type(num_blocks) is not int or num_blocks < 1:
            raise InvalidRequest(f"a volume must have at least one block, not {num_blocks!r}")
        with self._lock:
            self._check_open()
            old = self.num_blocks
            if num_blocks == old:
                return
            chunks = -(-num_blocks * self.block_size // self._bitmap.chunk_size)
            try:
                # Refusals first, while nothing has been written.
                if num_blocks < old:
                    resizing.check_shrink(self._journal, journal_link.acked_seq(self._journal),
                                          self._bitmap, self.block_size, num_blocks)
                else:
                    resizing.check_grow(self._mirror, self._bitmap.io, num_blocks, chunks)
                self._applier.commit_pending()
                self._applier.checkpoint_mirror()
                self._mirror.sync()                 # bitmap-mode writes too
                if num_blocks > old:
                    # A group's mirror grew by a member joining: its data must stay.
                    if not getattr(self._mirror.io, "sized_by_layout", False):
                        resizing.grow_mirror(self._mirror, old, num_blocks)
                    resizing.grow_bitmap_file(self._bitmap.io, chunks)
                set_volume_blocks(self._journal, num_blocks)          # the commit point
                self.num_blocks = self._mirror.num_blocks = num_blocks
                self.config = dataclasses.replace(self.config, num_blocks=num_blocks)
                self._bitmap.resize(chunks)
                if num_blocks < old:
                    resizing.shrink_mirror_file(self._mirror, num_blocks)
            except OSError as err:
                raise MediumError("write",
                                  f"resize to {num_blocks} blocks failed: {err}") from err

    def mark_for_resync(self, lba: int, nblocks: int, why: str) -> None:
        """Blocks the peer can never get from the journal (a member that joined a group
        with data, docs/groups.md): logging-to-bitmap with their chunks marked, durably, so
        the transmitter's resync ships them, as after an overflow."""
        check_range(lba, nblocks, self.num_blocks, self.num_blocks)
        with self._lock:
            self._check_open()
            if not self._bitmap.logging:
                self._enter_logging(why, bitmap_format.REASON_ADOPTED_MIRROR)
            bm = self._bitmap
            gen = bm.begin_batch()
            if bm.mark([bm.chunk_range(lba * self.block_size, nblocks * self.block_size)], gen):
                bm.sync()
            bm.finish_batch(gen)

    def start_full_resync(self) -> None:
        """Initial sync / failback: every chunk dirty, writes logged to the bitmap until the
        resync has shipped them all (the same path as a journal overflow)."""
        with self._lock:
            self._check_open()
            if not self._bitmap.logging:
                self._enter_logging("a full resync was asked for",
                                    bitmap_format.REASON_FULL_RESYNC)
            self._bitmap.mark_all()

    def pause_journal(self) -> bool:
        """The admin pauses journaling: writes go to the mirror and the dirty-region bitmap
        as after a journal overflow, and stay there until `resume_journal`, also across a
        close, a crash or a reboot (the pause is a flag in the bitmap header, written with
        the mode in one durable header write). Returns False if it was paused already."""
        with self._lock:
            self._check_open()
            if self._bitmap.journal_paused:
                return False
        # Most of the checkpoint's mirror fdatasync, without the lock (host I/O goes on, as
        # in _tick); the one under the lock then has little left. Only a head start: an
        # error here comes back from the checkpoint below, where it is reported.
        with contextlib.suppress(OSError, ValueError):
            self._mirror.sync()
        with self._lock:
            self._check_open()
            bm = self._bitmap
            if bm.journal_paused:
                return False
            try:
                if bm.logging:
                    bm.set_paused(True)
                    log.warning("volume %s: journaling paused by the admin while logging to "
                                "the dirty-region bitmap (%s); it stays there until the admin "
                                "resumes journaling, whatever the resync ships meanwhile",
                                self.uuid, bm.reason_text)
                else:
                    self._enter_logging("journaling paused by the admin",
                                        bitmap_format.REASON_ADMIN_PAUSE, paused=True)
            except OSError as err:
                raise MediumError("write", f"pausing the journal failed: {err}") from err
            return True

    def resume_journal(self) -> bool:
        """End the admin's pause (durably). The volume stays in logging-to-bitmap until the
        transmitter's resync has shipped the dirty regions and the peer holds the journal up
        to ``overflow_seq``, as after an overflow; at once if nothing is owed. Returns False
        if journaling was not paused."""
        with self._lock:
            self._check_open()
            bm = self._bitmap
            if not bm.journal_paused:
                return False
            try:
                bm.set_paused(False)
                log.warning("volume %s: journaling resumed by the admin; writes go on to the "
                            "dirty-region bitmap until the transmitter's resync has shipped "
                            "its %d dirty chunks, then to the journal", self.uuid,
                            bm.dirty_chunks)
                self._service(time.monotonic())      # back at once if nothing is owed
            except OSError as err:
                raise MediumError("write", f"resuming the journal failed: {err}") from err
            return True

    # -- background work --------------------------------------------------------------
    def service(self) -> None:
        """Periodic work, called by the volume's ticker thread, or without a ticker by submit
        when due (with one, the device thread spends no clock read per write batch and no
        request-slot read every resync_poll_interval on it; docs/compiled.md, "Session 13"):
        handle the resync's clear and mark requests, leave logging mode when possible,
        checkpoint the mirror so the journal can reclaim space."""
        with self._lock:
            self._check_open()
            self._service(time.monotonic())

    def _service_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.config.resync_poll_interval:
            self._service(now)

    def _service(self, now: float, *, defer_mirror_sync: bool = False) -> Mark | None:
        """With `defer_mirror_sync`, a due mirror checkpoint is only begun: the caller
        fdatasyncs the mirror and calls `MirrorApplier.checkpoint_end` with the mark
        returned."""
        self._last_poll = now
        bm, applier = self._bitmap, self._applier
        request = bm.pending_request()
        if request is not None and request.mark:
            # A peer that needs a full copy: the same path as a journal overflow.
            if not bm.logging:
                self._enter_logging("the peer needs a full copy",
                                    bitmap_format.REASON_PEER_FULL_COPY)
            bm.handle_mark(request)
        elif request is not None:
            # The resync shipped what it read from the mirror's page cache: make that
            # durable before the bits that account for it can go.
            if bm.dirty_chunks:
                self._mirror.sync()
            bm.handle_request(request)
        if (bm.logging and bm.dirty_chunks == 0 and not bm.journal_paused
                and journal_link.acked_seq(self._journal) >= bm.overflow_seq):
            bm.set_mode(False, bm.overflow_seq)     # back to journaling, durably
            log.warning("volume %s: the resync shipped every dirty region; journaling again "
                        "(writes go to the peer through the journal)", self.uuid)
        elif (not bm.logging and (self._pending or applier.applied_seq > applier.durable_seq)
                and now - applier.last_mirror_sync >= self.config.mirror_sync_interval):
            # Like the page cache's writeback: cached writes do not stay volatile forever.
            applier.commit_pending()
            if defer_mirror_sync:
                return applier.checkpoint_begin()
            applier.checkpoint_mirror()
        return None

    # -- internals --------------------------------------------------------------------
    def _enter_logging(self, why: str, reason: int, *, paused: bool = False) -> None:
        """Journal full (or `why`): from now on the bitmap accounts for writes. The mirror
        must hold every journaled write durably first, or a later redo could roll a chunk
        back. `reason` (bitmap_format.REASON_*) and `paused` go into the same header write."""
        self._applier.commit_pending()
        self._applier.checkpoint_mirror()
        self._bitmap.set_mode(True, self._journal.next_seq - 1, reason=reason, paused=paused)
        if paused:
            log.warning("volume %s: %s: logging writes to the dirty-region bitmap from seq %d "
                        "on; the DR copy is behind until journaling is resumed "
                        "(resume-journal) and the transmitter's resync ships the dirty "
                        "regions", self.uuid, why, self._journal.next_seq)
            return
        self._overflows += 1
        log.warning("volume %s: %s: logging writes to the dirty-region bitmap from seq %d on; "
                    "the DR copy is behind until the transmitter's resync ships the dirty "
                    "regions; check the link and the transmitter's status", self.uuid, why,
                    self._journal.next_seq)

    def _check_open(self) -> None:
        if self._closed:
            raise VolumeError("volume is closed")


def _first_mismatch(current: bytes | bytearray, verify: memoryview) -> int | None:
    if current == verify:
        return None
    step = 4096
    for off in range(0, len(current), step):
        if current[off:off + step] != verify[off:off + step]:
            for i in range(off, min(off + step, len(current))):
                if current[i] != verify[i]:
                    return i
    return None


def _writes_direct(io: BlockIO) -> bool:
    """Whether a file that took `enable_direct` still writes large buffers directly (a
    FileBlockIO says so; BlockIO itself does not declare the attribute)."""
    direct: bool = getattr(io, "writes_direct")  # noqa: B009 - not part of BlockIO
    return direct


def _enable_direct(ios: Sequence[BlockIO], min_bytes: int) -> bool:
    """Turn on direct writes of `min_bytes` or more on every file that can do them; True if
    all can (a simulated disk, or a file system refusing O_DIRECT, cannot)."""
    return all([hasattr(io, "enable_direct") and io.enable_direct(min_bytes) for io in ios])
