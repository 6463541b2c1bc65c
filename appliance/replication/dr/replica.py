"""One replicated volume on the DR side: its binding, its journal and its mirror.

The order of every write is the primary's: a contiguous run of records is appended to the
replica journal (which was created with the primary's first seq, so the seqs it assigns are the
primary's), made durable with one fdatasync, acknowledged, and only then written to the mirror.
The mirror is synced from time to time and the seq it durably holds becomes the journal's
mirror-durable checkpoint, which lets the journal reclaim space. After a crash ``open`` redoes
the journal above that checkpoint, so the mirror always ends up at a prefix of the primary's
write sequence. The binding (which primary owns the volume, its generation) lives in a small
JSON state file written by atomic rename (``replica_state.py``).

The replica journal is also acknowledged here (nothing ships it further), so reclaimable =
mirror-durable on this side.

Large writes to the journal and the mirror go direct (O_DIRECT, ``appliance/direct_io.py``)
where the file system takes it: the records are views of the page-aligned buffers they were
received into (frame version 2 puts whole pages of data on page boundaries), so the disk
reads them from there, with no copy into the page cache (that copy, twice per byte, was most
of the receiver's system time: docs/protocol.md, "Data path"). Elsewhere, and for anything
small or unaligned, the writes stay buffered; durability is the same fdatasync either way.

All methods block (disk I/O) and run in worker threads. Two may run at once per volume, so
that the mirror writes of one run overlap the journal write and fdatasync of the next:
``commit`` (journal only) and everything else (mirror, state, undo), which holds
``_apply_lock``. The journal itself is only ever touched under ``_journal_lock``; the lock
order is apply, then journal.

With a retention window set (``retention_settings.py``), the applier saves each record's
before-image in the retention log (``retention.py``) and syncs it before the mirror write,
so any point of the window can be recovered as a separate image (``recover.py``) while
replication goes on. The window holds primary images only: it starts anew when the mirror
changes outside the records (a resync, a full copy, a resize).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from appliance.journal import Journal, JournalError, JournalFull, JournalReader
from appliance.journal.resize import set_volume_blocks
from appliance.replication.config import ReplicaConfig
from appliance.replication.dr import group_replica
from appliance.replication.dr.apply import apply_records, check_record
from appliance.replication.dr.recover import recover_image
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.dr.replica_files import extend_file, preallocate
from appliance.replication.dr.replica_resync import ReplicaResync
from appliance.replication.dr.replica_state import (
    PromotionMark,
    ReplicaState,
    ReplicaStateError,
    promotion_refusal,
)
from appliance.replication.dr.retention import (
    SEGMENTS_PER_WINDOW,
    Point,
    RetentionLog,
    segment_bytes_for,
)
from appliance.replication.dr.retention_settings import RetentionSettings
from appliance.replication.dr.undo import UndoLog
from appliance.replication.handshake import Hello, Refused, VolumeBinding, VolumeSpec
from appliance.replication.records import from_journal, to_write_op
from appliance.replication.status import RateMeter, ReceiverVolumeCounters
from appliance.replication.wire import WireRecord
from appliance.volume import group_layout
from appliance.volume.concat_io import ConcatBlockIO, mirror_files, open_mirror
from appliance.volume.mirror_lock import MirrorLock

log = logging.getLogger(__name__)

# Writes of at least this much go direct where they can (smaller ones are not worth it).
DIRECT_MIN_BYTES = 64 * 1024
# The most bytes of records whose before-images are saved with one fdatasync of the
# retention log (a backlog of runs waiting for the mirror).
RETAIN_BATCH_BYTES = 16 << 20


class Replica(ReplicaResync):
    """The DR copy of one volume (its resync window: ``ReplicaResync``)."""

    def __init__(self, cfg: ReplicaConfig) -> None:
        self.cfg = cfg
        self.spec = cfg.spec
        self.counters = ReceiverVolumeCounters()
        self.rate = RateMeter()
        self.primary: str | None = None
        self.generation = 0
        self.name = ""                  # the volume's name on its primary (HELLO), "" unknown
        self.journal: Journal | None = None
        self._acker: JournalReader | None = None
        for path in (cfg.paths.mirror, cfg.paths.journal, cfg.paths.state):
            path.parent.mkdir(parents=True, exist_ok=True)
        for path, size in mirror_files(cfg.paths.mirror, self.spec.size_bytes):
            preallocate(path, size)
        self._direct_journal: Journal | None = None   # the journal direct writes were set for
        self._unsynced_bytes = 0
        # Durable, not yet on the mirror: commit appends on the right, _drain pops on the left.
        self._unapplied: deque[list[WireRecord]] = deque()
        # Unapplied bytes = committed - applied; each counter has a single writer thread.
        self._committed_bytes = 0
        self._applied_bytes = 0
        self._apply_lock = threading.RLock()
        self._journal_lock = threading.Lock()
        self._last_mirror_sync = time.monotonic()
        # Resync window: the DR image is not write-order consistent (invariant 4 says so).
        self.inconsistent_since: float | None = None
        self.consistent_seq: int | None = None      # seq of the last consistent image
        self.consistent_at: int | None = None       # consistent again once this is applied
        # First contact without the history (Welcome.full_copy) until RESYNC_BEGIN.
        self.full_copy_pending = False
        # The seq of the consistent image the mirror holds with its journal set aside (after
        # a rollback or an invalidate): kept recoverable through the full copy that follows.
        self.detached_image_seq: int | None = None
        self.resync_bytes = 0
        # A failback onto this mirror: what it holds beyond the primary's base, until
        # RESYNC_BEGIN (dr/failback.py), and the admin's choice after a split brain.
        self.failback_extents: list[tuple[int, int]] | None = None
        self.split_brain_keep: str | None = None
        self.failback_status: dict | None = None    # what the last first contact found
        # Set by a failover promotion (``promotion.py``): {"at_seq", "generation", "time",
        # "former_primary"}. The mirror is a primary's LUN from then on: this object never
        # writes to it again, and admission refuses every transmitter (the fence).
        self.promoted: dict | None = None
        self._undo: UndoLog | None = None
        self._state = ReplicaState()        # state.json as last loaded or saved
        self._load_state()
        self._retention: RetentionLog | None = None
        self._retained_to = 0       # the before-images up to this seq are saved and synced
        self.retention_error: str | None = None     # the last failure of the log, if any
        self._last_age_prune = 0.0
        # One writer per mirror (volume/mirror_lock.py): none while a handler serves it. A
        # promoted replica never writes it again (the handler does), so it takes no lock.
        self._mirror_lock = None if self.promoted is not None \
            else MirrorLock.take(cfg.paths.mirror, "DR receiver")
        mirror = None
        try:
            self._mirror = mirror = open_mirror(cfg.paths.mirror,
                                                create_size=self.spec.size_bytes)
            _enable_direct(self._mirror)
            if self.retention_settings.enabled and self.promoted is None:
                self._retention = self._open_retention(self.retention_settings)
            if self.inconsistent_since is not None and self.consistent_seq is not None:
                self._undo = UndoLog(cfg.paths.undo)
            # A promotion that crashed before it set the journal aside must not redo it again
            # onto a mirror that a primary may already serve (it was redone before promoting).
            if cfg.paths.journal.exists() and self.promoted is None:
                self.journal = Journal.open(cfg.paths.journal, volume_uuid=self.spec.uuid)
                self._acker = JournalReader(cfg.paths.journal, volume_uuid=self.spec.uuid)
                self._redo()
        except BaseException:     # e.g. an I/O error in the redo: release the files
            for handle in (self._acker, self._undo, self._retention, self.journal, mirror,
                           self._mirror_lock):
                if handle is not None:
                    handle.close()
            raise

    # --- state --------------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            st = ReplicaState.load(self.cfg.paths.state)
        except ReplicaStateError as err:
            raise ReplicaError(str(err)) from err
        if st is None:
            return
        self._state = st
        self.primary = st.primary
        self.generation = st.generation
        self.name = st.name
        self.inconsistent_since = st.inconsistent_since
        self.consistent_seq = st.consistent_seq
        self.consistent_at = st.consistent_at
        self.full_copy_pending = st.full_copy_pending
        self.detached_image_seq = st.detached_image_seq
        self.failback_extents = st.failback_extents
        self.split_brain_keep = st.split_brain_keep
        self.promoted = None if st.promoted is None else st.promoted.as_dict()

    def _save_state(self) -> None:
        # From the loaded state, so what this object does not track (demoted_from) is kept.
        self._state = dataclasses.replace(
            self._state, volume_uuid=self.spec.uuid, primary=self.primary,
            generation=self.generation, name=self.name, inconsistent_since=self.inconsistent_since,
            consistent_seq=self.consistent_seq, consistent_at=self.consistent_at,
            full_copy_pending=self.full_copy_pending,
            detached_image_seq=self.detached_image_seq,
            failback_extents=self.failback_extents, split_brain_keep=self.split_brain_keep,
            promoted=None if self.promoted is None else PromotionMark.from_dict(self.promoted))
        self._state.save(self.cfg.paths.state)

    def binding(self) -> VolumeBinding:
        last = None if self.journal is None else self.journal.next_seq - 1
        return VolumeBinding(self.primary, self.generation, last, self.applied_seq,
                             inconsistent=self.inconsistent_since is not None,
                             full_copy=self.full_copy_pending,
                             promoted_at_seq=None if self.promoted is None
                             else self.promoted["at_seq"],
                             failback_extents=self.failback_extents)

    @property
    def mirror_durable_seq(self) -> int:
        return 0 if self.journal is None else self.journal.mirror_durable_seq

    @property
    def durable_seq(self) -> int:
        return 0 if self.journal is None else self.journal.next_seq - 1

    @property
    def applied_seq(self) -> int:
        return self.counters.applied_seq

    def bind(self, hello: Hello, last_seq: int, *, full_copy: bool = False,
             failback_extents: list[tuple[int, int]] | None = None) -> None:
        """Persist who owns this volume; create the journal at first contact. With
        ``full_copy`` (history before ``last_seq`` is missing) or ``failback_extents`` (this
        mirror holds the primary's base plus those) the replica says durably that it is
        inconsistent *before* its journal exists, so no restart can make it look complete."""
        if self.promoted is not None:       # admission refuses first; never write onto it
            raise ReplicaError(f"volume {self.spec.uuid} was promoted at seq "
                               f"{self.promoted['at_seq']}: it takes no primary")
        if self.journal is None and full_copy:
            self._await_full_copy(last_seq)
        elif self.journal is None and failback_extents is not None:
            self._await_failback(failback_extents)
        if self.journal is None:
            self.cfg.paths.journal.parent.mkdir(parents=True, exist_ok=True)
            fresh = preallocate(self.cfg.paths.journal, self.cfg.journal_size)
            try:
                self.journal = Journal.create(
                    self.cfg.paths.journal, size=self.cfg.journal_size, volume_uuid=self.spec.uuid,
                    volume_block_size=self.spec.block_size,
                    volume_blocks=self.spec.size_bytes // self.spec.block_size,
                    first_seq=last_seq + 1)
            except BaseException:
                if fresh:    # no half-made journal file that would fail to open next time
                    self.cfg.paths.journal.unlink(missing_ok=True)
                raise
            self._acker = JournalReader(self.cfg.paths.journal, volume_uuid=self.spec.uuid)
            self.counters.applied_seq = last_seq
        # A primary that sends no name (an older transmitter) leaves the one recorded.
        name = hello.name or self.name
        if (self.primary, self.generation, self.name) != (hello.identity, hello.generation, name):
            self.primary, self.generation, self.name = hello.identity, hello.generation, name
            self._save_state()
        self.resize(hello.size_bytes)
        self.counters.durable_seq = self.durable_seq

    def current_spec(self) -> VolumeSpec:
        """The configured spec with the replica's current size (for admission)."""
        return dataclasses.replace(self.spec, size_bytes=self.size_bytes)

    @property
    def size_bytes(self) -> int:
        """The replica's size: what its journal records (it follows the primary's resizes),
        or the configured size before the first contact."""
        if self.journal is None:
            return self.spec.size_bytes
        return self.journal.sb.volume_blocks * self.spec.block_size

    def resize(self, size_bytes: int) -> None:
        """Follow an online resize of the primary (admission allowed it).

        Grow: the mirror first, then the journal's recorded size, which is the replica's
        truth (a crash in between leaves a larger mirror file, which is harmless). Shrink:
        the primary shrinks only once the peer holds every record beyond the new end, so
        applying everything durable first and then cutting gives the primary's image; the
        journal's size goes first, so a crash leaves at worst a longer mirror file."""
        with self._apply_lock:
            old = self.size_bytes
            if self.journal is None or size_bytes == old:
                return
            if isinstance(self._mirror, ConcatBlockIO):
                # A group grows by members joining (follow_group has reopened its mirror over
                # them); members never shrink.
                if size_bytes < old or self._mirror.size() < size_bytes:
                    raise ReplicaError(f"group {self.spec.uuid}: the primary has "
                                       f"{size_bytes} bytes, its members here {old}; a group "
                                       f"grows only by a member joining")
                with self._journal_lock:
                    set_volume_blocks(self.journal, size_bytes // self.spec.block_size)
                log.warning("group %s: grown from %d to %d bytes by a member joining",
                            self.spec.uuid, old, size_bytes)
                return
            self._restart_retention(f"resized from {old} to {size_bytes} bytes")
            if size_bytes > old:
                extend_file(self._mirror.fileno(), size_bytes)
            else:
                self.sync_mirror()
            with self._journal_lock:
                set_volume_blocks(self.journal, size_bytes // self.spec.block_size)
            if size_bytes < old:
                os.ftruncate(self._mirror.fileno(), size_bytes)
                self._mirror.sync()
            log.warning("volume %s: resized from %d to %d bytes with the primary",
                        self.spec.uuid, old, size_bytes)

    def _await_full_copy(self, missing_to: int) -> None:
        """Inconsistent from now until a full copy has ended. A mirror rolled back to a
        consistent image keeps it recoverable (undo from here on, records included); a new
        mirror has nothing worth keeping, so its copy costs no undo I/O."""
        if self.inconsistent_since is None:
            self.inconsistent_since = time.time()
        self.full_copy_pending = True
        self.consistent_seq = self.detached_image_seq
        self.consistent_at = None
        if self._undo is not None:
            self._undo.close()
            self._undo = None
        self.cfg.paths.undo.unlink(missing_ok=True)     # nothing was applied over it yet
        if self.consistent_seq is not None:
            self._undo = UndoLog(self.cfg.paths.undo)
        self._save_state()
        log.warning("volume %s: the primary no longer holds seqs up to %d: a full copy is "
                    "needed; %s", self.spec.uuid, missing_to,
                    "no consistent image to keep" if self.consistent_seq is None else
                    f"the image at seq {self.consistent_seq} is kept recoverable (undo log)")

    def _await_failback(self, extents: list[tuple[int, int]]) -> None:
        """Inconsistent from now until the failback's resync ends: the primary's records land
        over this site's own writes first. No undo log: the image before is the old
        lineage's, which the lost-write report keeps (dr/failback_admission.py)."""
        self.inconsistent_since = time.time()
        self.consistent_seq = self.consistent_at = None
        self.failback_extents = list(extents)
        self._save_state()
        log.warning("volume %s: failback onto this site's old mirror: inconsistent until the "
                    "primary has copied its changes and the %d extents this site wrote "
                    "beyond its base", self.spec.uuid, len(extents))

    def follow_group(self, hello: Hello, *, may_grow: bool) -> None:
        """A consistency group's members as the HELLO has them: refused unless this replica
        is that group with those members (a provisioned one grows by the members that joined
        since: their files are made and the mirror reopened over them)."""
        path = self.cfg.paths.mirror
        if not group_layout.is_layout_path(path):
            if hello.group is not None:
                raise Refused("group-member", f"volume {self.spec.uuid} is the consistency "
                                              f"group {hello.group.get('name')!r} on the "
                                              f"primary, but this replica's mirror is one file "
                                              f"({path}): give its [[volume]] a group layout as "
                                              f"mirror (docs/groups.md), or let the receiver "
                                              f"provision it")
            return
        layout = group_replica.follow(path, hello, may_grow=may_grow)
        size = layout.num_blocks * layout.block_size
        with self._apply_lock:
            if size == self._mirror.size():
                return
            self.sync_mirror()
            for member, nbytes in mirror_files(path, size):
                preallocate(member, nbytes)
            if self._mirror_lock is not None:
                self._mirror_lock.cover(path)       # the members that joined
            old, self._mirror = self._mirror, open_mirror(path, create_size=0)
            old.close()

    def keep_after_split_brain(self, keep: str) -> None:
        """The admin's choice after a split brain (failback_admission.KEEP_CHOICES)."""
        self.split_brain_keep = keep
        self._save_state()

    # --- the data path ------------------------------------------------------------------

    def check(self, run: list[WireRecord]) -> None:
        nblocks = self.size_bytes // self.spec.block_size
        for rec in run:
            check_record(rec, self.spec.block_size, nblocks)

    def commit(self, run: list[WireRecord]) -> int:
        """Append a contiguous run (starting at durable_seq + 1) and make it durable."""
        journal = self._bound_journal()
        if journal is not self._direct_journal:     # (a new one: created, or a full copy's)
            _enable_direct(journal.io)
            self._direct_journal = journal
        if run[0].seq != journal.next_seq:
            raise ReplicaError(f"run starts at seq {run[0].seq}, journal expects "
                               f"{journal.next_seq}")
        self.check(run)
        done = 0                          # records of the run appended so far
        for chunk in self._chunks(run):
            ops = [to_write_op(record) for record in chunk]
            try:
                with self._journal_lock:
                    seqs = self.journal.append(ops, timestamp_ns=chunk[0].timestamp_ns)
            except JournalFull:
                # A large group commit may fill a small journal with its own records: make
                # what is appended durable and hand it to the mirror, so that syncing the
                # mirror can reclaim it too; then retry once.
                self._publish_durable(run[:done])
                run, done = run[done:], 0
                self.sync_mirror()
                with self._journal_lock:
                    seqs = self.journal.append(ops, timestamp_ns=chunk[0].timestamp_ns)
            if seqs.start != chunk[0].seq or len(seqs) != len(chunk):
                raise ReplicaError(f"journal assigned seqs {seqs} to records "
                                   f"{chunk[0].seq}..{chunk[-1].seq}")
            done += len(chunk)
        self._publish_durable(run)
        return run[-1].seq

    def _bound_journal(self) -> Journal:
        """The replica journal; records before the volume was bound (it exists from then on)
        are a protocol error of the caller."""
        if self.journal is None:
            raise ReplicaError(f"volume {self.spec.uuid}: no replica journal yet (records "
                               f"before the primary bound the volume)")
        return self.journal

    def _publish_durable(self, run: list[WireRecord]) -> None:
        """fdatasync the journal; the run becomes durable and goes to the applier."""
        if not run:
            return
        self._bound_journal()
        with self._journal_lock:
            self.journal.sync()
        nbytes = sum(len(record.data) for record in run)
        self.counters.durable_seq = run[-1].seq
        self._committed_bytes += nbytes
        self._unapplied.append(run)     # the applier may take it from here on
        self.counters.records_received += len(run)
        self.counters.bytes_received += nbytes
        self.rate.add(nbytes)

    def _chunks(self, run: list[WireRecord]) -> list[list[WireRecord]]:
        """Split a run into appends the journal accepts (a quarter of its batch limit, so a
        full journal can still reclaim enough for one), one per primary timestamp: a journal
        record has one stamp, and the replica's must be the primary's (a promotion's
        consistent point, the retention window after a restart)."""
        journal = self._bound_journal()
        limit = max(journal.max_op_bytes, journal.max_batch_bytes // 4)
        chunks: list[list[WireRecord]] = [[]]
        size = 0
        for rec in run:
            if chunks[-1] and (size + len(rec.data) > limit
                               or rec.timestamp_ns != chunks[-1][0].timestamp_ns):
                chunks.append([])
                size = 0
            chunks[-1].append(rec)
            size += len(rec.data)
        return chunks

    @property
    def unapplied_bytes(self) -> int:
        """Data bytes durable in the journal but not yet written to the mirror."""
        return self._committed_bytes - self._applied_bytes

    def apply_pending(self) -> None:
        """Write every committed (durable) record not yet on the mirror, strictly in order;
        sync the mirror when enough has accumulated.

        Commit queues what it made durable; this drains the queue. A session that dies
        between the two leaves the queue for the next caller, so no durable record is ever
        skipped on the mirror."""
        with self._apply_lock:
            self._drain()
            # A resync's consistent point just applied: sync now, since the image is only
            # declared consistent after a sync, and an idle link may bring no further batch.
            reached = (self.inconsistent_since is not None and self.consistent_at is not None
                       and self.counters.applied_seq >= self.consistent_at)
            if (reached or self._unsynced_bytes >= self.cfg.mirror_sync_bytes or
                    time.monotonic() - self._last_mirror_sync >= self.cfg.mirror_sync_interval_s):
                self.sync_mirror()
            self.prune_retention()

    def _drain(self) -> None:
        bs = self.spec.block_size
        with self._apply_lock:
            while self._unapplied:
                run = self._unapplied[0]
                if run[0].seq != self.counters.applied_seq + 1:
                    raise ReplicaError(f"apply out of order: run starts at seq {run[0].seq}, "
                                       f"the mirror holds up to {self.counters.applied_seq}")
                if self._undo is not None:
                    for rec in run:
                        self._undo.save(self._mirror, rec.lba * bs, rec.nblocks * bs)
                    self._undo.sync()
                if self._retention is not None and self._retained_to < run[-1].seq:
                    self._retain_queued()
                nbytes = apply_records(self._mirror, run, bs)
                self._unsynced_bytes += nbytes
                self._unapplied.popleft()
                self._applied_bytes += nbytes
                self.counters.applied_seq = run[-1].seq
                self.counters.last_applied_ns = run[-1].timestamp_ns

    def sync_mirror(self) -> None:
        """Make the mirror durable up to applied_seq and let the journal reclaim below it."""
        with self._apply_lock:
            self._drain()
            self._mirror.sync()
            self._check_consistent()
            self._unsynced_bytes = 0
            self._last_mirror_sync = time.monotonic()
            seq = self.counters.applied_seq
            if self.journal is not None and seq > self.journal.mirror_durable_seq:
                with self._journal_lock:
                    self.journal.set_mirror_durable(seq)
                    self.journal.sync()
                if self._acker is None:
                    raise ReplicaError(f"volume {self.spec.uuid}: the replica journal has no "
                                       f"reader to acknowledge with")
                self._acker.acknowledge(seq)     # nothing ships this journal further
            self.counters.mirror_durable_seq = self.mirror_durable_seq

    def _redo(self) -> None:
        """After a restart: reapply journal records above the mirror-durable seq."""
        journal = self._bound_journal()
        self.counters.applied_seq = self.mirror_durable_seq
        redone = 0
        for rec in journal.records(self.mirror_durable_seq + 1):
            rec = from_journal(rec)
            self._committed_bytes += len(rec.data)
            self._unapplied.append([rec])   # through _drain: undo if resyncing
            redone += 1
            if len(self._unapplied) >= 1024:
                self._drain()
        self._drain()
        if redone:
            log.info("volume %s: redid %d journal records up to seq %d", self.spec.uuid,
                     redone, self.counters.applied_seq)
        self.sync_mirror()
        self.counters.durable_seq = self.durable_seq

    def read_mirror(self, offset: int, length: int) -> bytes:
        with self._apply_lock:
            buf = bytearray(length)
            self._mirror.pread_into(offset, memoryview(buf))
            return bytes(buf)

    def direct_io(self) -> dict:
        """Whether large writes go direct, per file (False where the file system refused)."""
        journal = None if self.journal is None else self.journal.io
        return {"journal": _writes_direct(journal), "mirror": _writes_direct(self._mirror)}

    def status(self) -> dict:
        return {"volume_uuid": str(self.spec.uuid), "name": self.name, "primary": self.primary,
                "direct_io": self.direct_io(),
                "generation": self.generation, "size_bytes": self.size_bytes,
                "full_copy_pending": self.full_copy_pending,
                "state": "promoted" if self.promoted is not None else
                         "inconsistent" if self.inconsistent_since is not None else "consistent",
                "promoted": self.promoted,
                "inconsistent_since": self.inconsistent_since,
                "last_consistent_seq": self.consistent_seq, "consistent_at_seq": self.consistent_at,
                "resync_bytes_received": self.resync_bytes,
                "undo_bytes": 0 if self._undo is None else self._undo.saved_bytes,
                "retention": self.retention_status(),
                "failback": self.failback_status,
                "group": group_replica.status(self.cfg.paths.mirror),
                "lag_records": self.durable_seq - self.applied_seq,
                "lag_seconds": self._lag_seconds(),
                "throughput_bytes_per_s": round(self.rate.rate()),
                **self.counters.__dict__}

    def _lag_seconds(self) -> float:
        """Age (primary clock) of the newest applied write, while records wait to be applied."""
        last = self.counters.last_applied_ns
        if last is None or self.durable_seq == self.applied_seq:
            return 0.0
        return round(max(0.0, (time.time_ns() - last) / 1e9), 3)

    # --- retention (point in time) --------------------------------------------------------

    @property
    def retention_settings(self) -> RetentionSettings:
        return RetentionSettings(self._state.retain_s, self._state.retain_bytes)

    def _open_retention(self, settings: RetentionSettings) -> RetentionLog:
        # Segments of ~1/16 of the window (by size, and by age: a new one every 1/16 of
        # retain_s), so that pruning keeps the window within about 1/16 of what was set.
        return RetentionLog(self.cfg.paths.state.parent / "retention",
                            segment_bytes=segment_bytes_for(settings.retain_bytes),
                            roll_after_s=settings.retain_s / SEGMENTS_PER_WINDOW)

    def _retain_queued(self) -> None:
        """(Apply lock.) Save the before-images of the runs queued for the mirror durably,
        before any of them is written there: all the runs queued (up to RETAIN_BATCH_BYTES)
        at once, so that a backlog costs one fdatasync of the log, not one per run."""
        assert self._retention is not None
        if self.inconsistent_since is not None:
            # A resync's regions are no primary image: no window until it is consistent.
            if self._retention.newest is not None:
                self._retention.clear()
            self._retained_to = self._unapplied[-1][-1].seq
            return
        batch: list[WireRecord] = []
        size = 0
        for run in self._unapplied:
            if batch and size >= RETAIN_BATCH_BYTES:
                break
            batch.extend(run)
            size += sum(rec.nblocks for rec in run) * self.spec.block_size
        try:
            self._retention.follow(self.applied_point())
            self._retention.save(self._mirror, batch, self.spec.block_size)
            self._retention.sync()
            self.retention_error = None
        except OSError as err:
            # Keeping up matters more than the window: give the window up (no point of it
            # could be trusted now) and apply; the next batch tries to start one anew.
            self._retention.clear()
            self.retention_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {err}"
            log.error("volume %s: the retention log failed (%s): the window is dropped and "
                      "starts anew once it can be written; replication goes on",
                      self.spec.uuid, err)
        self._retained_to = batch[-1].seq

    def applied_point(self) -> Point:
        """The image the mirror holds: the seq applied and its primary timestamp (0 when
        unknown: after a restart, before anything was applied)."""
        ts = self.counters.last_applied_ns
        if ts is None and self._retention is not None:
            newest = self._retention.newest
            if newest is not None and newest.seq == self.applied_seq:
                ts = newest.ts_ns
        return Point(self.applied_seq, ts or 0)

    def _restart_retention(self, why: str) -> None:
        """(Apply lock.) The mirror changes outside the records: the window starts anew."""
        if self._retention is not None and self._retention.newest is not None:
            self._retention.clear()
            log.warning("volume %s: %s: the retention window starts anew", self.spec.uuid, why)

    def begin_resync(self, superseded_to_seq: int | None = None) -> None:
        with self._apply_lock:
            self._restart_retention("a resync begins")
            super().begin_resync(superseded_to_seq)

    def prune_retention(self) -> None:
        if self._retention is not None:
            st = self.retention_settings
            self._retention.prune(retain_s=st.retain_s, retain_bytes=st.retain_bytes)

    def set_retention(self, settings: RetentionSettings) -> dict:
        """Set the window live and save it in state.json; off removes the retention log.
        A window turned on starts at the next record applied."""
        with self._apply_lock:
            if self.promoted is not None and settings.enabled:
                raise ReplicaError(f"volume {self.spec.uuid} is promoted (served as a primary "
                                   f"here): no retention window on a primary's LUN")
            if self._retention is not None and not settings.enabled:
                self._retention.remove()
                self._retention = None
            self._state = dataclasses.replace(self._state, retain_s=settings.retain_s,
                                              retain_bytes=settings.retain_bytes)
            self._save_state()
            if settings.enabled and self._retention is None:
                self._retained_to = self.applied_seq
                self._retention = self._open_retention(settings)
            elif settings.enabled:
                # The same window goes on (a recovery under way keeps its pin): only its
                # segment sizes follow the new settings.
                self._retention.segment_bytes = segment_bytes_for(settings.retain_bytes)
                self._retention.roll_after_s = settings.retain_s / SEGMENTS_PER_WINDOW
            self.prune_retention()
            log.warning("volume %s: retention %s", self.spec.uuid, settings.describe())
            return self.retention_status()

    def retention_status(self) -> dict:
        """The settings and the recoverable range (oldest and newest seq and primary time)."""
        st = self.retention_settings
        out: dict = {**st.as_dict(), "enabled": st.enabled, "bytes": 0, "segments": 0,
                     "oldest": None, "newest": None, "error": self.retention_error}
        ret = self._retention
        if ret is None or self.inconsistent_since is not None or self.journal is None:
            return out
        if st.retain_s and time.monotonic() - self._last_age_prune >= 1.0:
            self._last_age_prune = time.monotonic()    # an idle link applies nothing:
            self.prune_retention()                     # the window still ages here
        summary = ret.summary()
        if summary["oldest"] is None:
            return out | {"bytes": summary["bytes"], "segments": summary["segments"]}
        newest = self.applied_point()
        if ret.newest is not None and ret.newest.seq < newest.seq:
            return out | {"bytes": summary["bytes"], "segments": summary["segments"]}
        return out | summary | {"newest": newest.as_dict()}

    def recover(self, at: str, out_dir: Path | None = None) -> dict:
        """The primary's image at a point of the window as a separate file (``recover.py``),
        while replication goes on."""
        return recover_image(self, at, out_dir or self.cfg.paths.state.parent)

    # --- failover -----------------------------------------------------------------------

    def mark_promoted(self, now: float) -> dict:
        """Failover (offline: the receiver is stopped). Everything durable is applied and the
        mirror synced (``open`` already redid the journal); then the state file durably says
        the mirror is a primary's image now, with the epoch raised, so that from the moment
        this returns no record of any transmitter is ever applied on top of it. Returns the
        promotion record."""
        with self._apply_lock:
            if self.promoted is not None:
                return self.promoted
            reason = promotion_refusal(self.spec.uuid,
                                       inconsistent=self.inconsistent_since is not None,
                                       has_journal=self.journal is not None,
                                       image_seq=self.detached_image_seq)
            if reason:
                raise ReplicaError(reason)
            at_time = None      # the primary's clock at at_seq, where known
            if self.journal is not None:
                self.sync_mirror()
                at_seq = self.applied_seq
                at_time = (self.applied_point().ts_ns or self._primary_ns_of(at_seq)) / 1e9 \
                    or None
            else:
                at_seq = self.detached_image_seq     # rolled back / invalidated, not re-paired
            self.generation += 1
            self.promoted = {"at_seq": at_seq, "at_time": at_time,
                             "generation": self.generation, "time": now,
                             "former_primary": self.primary}
            self._save_state()
            log.warning("volume %s: promoted at seq %d (generation %d); primary %r is fenced off",
                        self.spec.uuid, at_seq, self.generation, self.primary)
            return self.promoted

    def _primary_ns_of(self, seq: int) -> int:
        """The primary's timestamp of ``seq`` from the replica journal, which still holds an
        applied record until its segment is overwritten; 0 when it no longer does."""
        if self.journal is None or seq < 1:
            return 0
        try:
            record = next(iter(self.journal.records(seq)), None)
        except JournalError as err:
            log.info("volume %s: the time of seq %d is no longer in the replica journal (%s)",
                     self.spec.uuid, seq, err)
            return 0
        return record.timestamp_ns if record is not None and record.seq == seq else 0

    def close(self) -> None:
        try:
            if self.journal is not None:
                self.sync_mirror()
        finally:
            if self._acker is not None:
                self._acker.close()
            if self._undo is not None:
                self._undo.close()
            if self._retention is not None:
                self._retention.close()
            if self.journal is not None:
                self.journal.close()
            self._mirror.close()
            if self._mirror_lock is not None:
                self._mirror_lock.close()


def _enable_direct(io) -> bool:
    """Large aligned writes to ``io`` bypass the page cache from now on, where its file system
    allows (a simulated disk has no such mode): False otherwise, and they stay buffered."""
    enable = getattr(io, "enable_direct", None)
    return bool(enable is not None and enable(DIRECT_MIN_BYTES))


def _writes_direct(io) -> bool:
    return bool(getattr(io, "writes_direct", False))
