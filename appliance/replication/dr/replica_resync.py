"""The resync window of a DR replica: from RESYNC_BEGIN the image is not write-order
consistent (it says so durably, and saves old contents in the undo log before every
overwrite), regions land on the mirror, and once the records up to RESYNC_END's seq are
applied it is a consistent prefix again. The full copy's jump in sequence (``supersede``)
starts the journal anew after the records the copy contains (docs/protocol.md)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from appliance.journal import Journal, JournalReader
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.dr.replica_files import preallocate
from appliance.replication.dr.undo import UndoLog
from appliance.replication.handshake import check_supersede
from appliance.storage import sync_dir

if TYPE_CHECKING:
    from appliance.replication.config import ReplicaConfig
    from appliance.replication.handshake import VolumeSpec
    from appliance.replication.status import ReceiverVolumeCounters
    from appliance.storage import BlockIO

log = logging.getLogger("appliance.replication.dr.replica")


class ReplicaResync:
    """Part of ``Replica``: the resync window. Uses the replica's files, locks and state."""

    cfg: ReplicaConfig
    spec: VolumeSpec
    counters: ReceiverVolumeCounters
    journal: Journal | None
    _acker: JournalReader | None
    _mirror: BlockIO
    _undo: UndoLog | None
    _apply_lock: threading.RLock
    _journal_lock: threading.Lock
    inconsistent_since: float | None
    consistent_seq: int | None
    consistent_at: int | None
    full_copy_pending: bool
    failback_extents: list[tuple[int, int]] | None
    failback_status: dict | None
    detached_image_seq: int | None
    resync_bytes: int
    applied_seq: int
    durable_seq: int
    mirror_durable_seq: int
    size_bytes: int
    # and its methods sync_mirror, _drain (apply what is durable) and _save_state

    def begin_resync(self, superseded_to_seq: int | None = None) -> None:
        """From here on the image is not write-order consistent: say so durably, and save old
        contents before every overwrite. A resync resumed after a reconnect keeps the undo
        log it had: its first entries hold the last consistent image.

        ``superseded_to_seq`` (the RESYNC_BEGIN of a full copy): the primary will not send
        the records up to that seq, because the copy contains their effect; the journal
        continues after it (``supersede``). Refused unless a full copy is pending."""
        with self._apply_lock:
            if superseded_to_seq is not None:
                self.supersede(superseded_to_seq)
            self.sync_mirror()
            if self.inconsistent_since is None:
                self.cfg.paths.undo.unlink(missing_ok=True)
                self._undo = UndoLog(self.cfg.paths.undo)
                self.inconsistent_since = time.time()
                self.consistent_seq = self.applied_seq
            self.full_copy_pending = False
            self.failback_extents = None        # the primary has marked them (it said BEGIN)
            self.consistent_at = None
            self._save_state()

    def supersede(self, seq: int) -> None:
        """The jump in sequence of a full copy: records up to ``seq`` will never arrive (the
        copy that follows contains their effect), so the journal continues at ``seq + 1``.

        Only while a full copy is pending (``full_copy_pending``: the replica said durably
        that it lacks history and is inconsistent until a whole copy has ended); anywhere
        else a missing record is a gap that a resend must fill, and a jump would hide it. The
        jump never goes back. Crash-safe: the new journal is made beside the old one and
        renamed over it; a crash before the rename leaves the old journal (the primary asks
        for the copy again and jumps again), one after it a journal at ``seq`` with the copy
        still pending (the repeated jump is then a no-op)."""
        with self._apply_lock:
            check_supersede(full_copy_pending=self.full_copy_pending,
                            durable_seq=self.durable_seq, to_seq=seq)
            if self.journal is None or seq == self.durable_seq:
                return
            # Records already held are superseded too; applying them keeps the applier's
            # strict order (and the undo of a rolled-back image) simple.
            self.sync_mirror()
            path = self.cfg.paths.journal
            new = path.with_name(path.name + ".superseding")
            new.unlink(missing_ok=True)
            preallocate(new, self.cfg.journal_size)
            Journal.create(new, size=self.cfg.journal_size, volume_uuid=self.spec.uuid,
                           volume_block_size=self.spec.block_size,
                           volume_blocks=self.size_bytes // self.spec.block_size,
                           first_seq=seq + 1).close()
            skipped = seq - self.durable_seq
            old = (self._acker, self.journal)
            os.replace(new, path)
            sync_dir(path.parent)
            try:
                # Opened while the old ones are still open (they hold the replaced file, no
                # longer reachable), so admission never sees a replica without a journal.
                journal = Journal.open(path, volume_uuid=self.spec.uuid)
                try:
                    acker = JournalReader(path, volume_uuid=self.spec.uuid)
                except BaseException:
                    journal.close()
                    raise
            except BaseException as err:
                self.journal = self._acker = None      # never append to the replaced file
                for handle in old:
                    if handle is not None:
                        handle.close()
                raise ReplicaError(f"volume {self.spec.uuid}: the journal made for the full "
                                   f"copy (from seq {seq + 1}) does not open: {err}; restart "
                                   f"the receiver (the copy is still pending)") from err
            with self._journal_lock:
                self.journal, self._acker = journal, acker
            for handle in old:
                if handle is not None:
                    handle.close()
            self.counters.applied_seq = self.counters.durable_seq = seq
            self.counters.mirror_durable_seq = self.mirror_durable_seq
            log.warning("volume %s: full copy begins; the %d records up to seq %d are "
                        "contained in it and will not be sent; the journal continues at %d",
                        self.spec.uuid, skipped, seq, seq + 1)

    def write_region(self, offset: int, data: bytes) -> None:
        """One resync region, durable on the mirror when this returns."""
        with self._apply_lock:
            if self.inconsistent_since is None or self.full_copy_pending:
                raise ReplicaError("REGION outside a resync (no RESYNC_BEGIN)")
            block = self.spec.block_size
            if (offset < 0 or offset % block or len(data) % block
                    or offset + len(data) > self.size_bytes):
                raise ReplicaError(f"region {offset}+{len(data)} is misaligned or outside the "
                                   f"volume of {self.size_bytes} bytes")
            self._drain()
            if self._undo is not None:
                self._undo.save(self._mirror, offset, len(data))
                self._undo.sync()
            self._mirror.pwritev(offset, [data])
            self._mirror.sync()
            self.resync_bytes += len(data)

    def end_resync(self, consistent_at: int) -> None:
        """The primary has shipped every dirty region; once records up to ``consistent_at``
        are applied (and the mirror synced), the image is a consistent prefix again."""
        with self._apply_lock:
            self.consistent_at = consistent_at
            self._save_state()
            self.sync_mirror()

    def _check_consistent(self) -> None:
        if (self.inconsistent_since is not None and self.consistent_at is not None
                and self.counters.applied_seq >= self.consistent_at):
            log.info("volume %s: consistent again at seq %d after a resync of %d bytes",
                     self.spec.uuid, self.counters.applied_seq, self.resync_bytes)
            self.inconsistent_since = self.consistent_seq = self.consistent_at = None
            self.detached_image_seq = None
            if self.failback_status and self.failback_status.get("state") == "copying":
                self.failback_status = {**self.failback_status, "state": "done"}
            self._save_state()
            if self._undo is not None:
                self._undo.remove()
                self._undo = None
