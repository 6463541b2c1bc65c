"""Journaled writes onto the mirror, and the journal's mirror-durable checkpoint behind them.

The write-ahead bookkeeping of the write fork (docs/volume.md): which journaled seqs the
mirror holds (`applied_seq`) and holds durably (`durable_seq`, the checkpoint the journal
reclaims space against), how many bytes a mirror fdatasync still has to cover, and the move
of the on-flush overlay to the mirror once the journal is synced. Not thread-safe: the
`Volume` calls it under its lock, but for the mirror fdatasync between `checkpoint_begin` and
`checkpoint_end`, which its background ticker runs without the lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from appliance.journal import WriteOp
from appliance.volume import journal_link
from appliance.volume.mirror import Mirror
from appliance.volume.pending import PendingWrites

Mark = tuple[int, int]      # a mirror checkpoint in progress: (applied seq, bytes applied ever)


class MirrorApplier:
    """Applies journaled groups to the mirror in order and checkpoints the mirror."""

    def __init__(self, journal: journal_link.Journal, mirror: Mirror,
                 pending: PendingWrites) -> None:
        self._journal = journal
        self._mirror = mirror
        self._pending = pending
        self.applied_seq = journal_link.mirror_durable_seq(journal)   # on the mirror
        self.durable_seq = self.applied_seq                            # ... and synced
        # Bytes written to the mirror by journaled batches since open, and how many of them the
        # newest finished mirror fdatasync covers: their difference is what is still unsynced.
        self._mirror_bytes_applied = 0
        self._mirror_bytes_synced = 0
        self.last_mirror_sync = time.monotonic()

    def redo(self) -> None:
        """Re-apply records above the mirror-durable checkpoint (they may have missed the
        mirror), then make the mirror durable and move the checkpoint."""
        last = self.applied_seq
        batch: list[WriteOp] = []
        for record in self._journal.records(last + 1):
            batch.append(record.op)
            last = record.seq
            if len(batch) >= 256:
                self._mirror.apply(batch)
                batch = []
        if batch:
            self._mirror.apply(batch)
        if last > self.applied_seq:
            self.applied_seq = last
            self.checkpoint_mirror()

    def apply(self, ops: Sequence[WriteOp], last_seq: int) -> None:
        self.apply_in_order([(ops, last_seq)])

    def apply_in_order(self, groups: Sequence[tuple[Sequence[WriteOp], int]]) -> None:
        """Journaled groups to the mirror. If a mirror write fails, that group and the rest
        stay in the overlay (reads see them; the next commit retries them) and the checkpoint
        does not pass them, so the journal keeps them until the mirror really holds them."""
        for i, (ops, last_seq) in enumerate(groups):
            try:
                self._mirror_bytes_applied += self._mirror.apply(ops, self._journal.io)
            except OSError:
                for failed, failed_last in groups[i:]:
                    self._pending.add(failed, failed_last)
                raise
            self.applied_seq = last_seq

    def commit_pending(self) -> None:
        """Sync the journal, then move the on-flush overlay to the mirror (write-ahead)."""
        if self._pending:
            self._journal.sync()
            self.drain_pending()

    def drain_pending(self) -> None:
        """Pending writes to the mirror; the caller has just synced the journal."""
        if self._pending:
            last = self._pending.last_seq
            self.apply(self._pending.take(), last)

    def checkpoint_mirror(self) -> None:
        """fdatasync the mirror and tell the journal it may reclaim what the mirror holds."""
        mark = self.checkpoint_begin()
        if mark is not None:
            self._mirror.sync()
            self.checkpoint_end(mark)

    def unsynced_mirror_bytes(self) -> int:
        return self._mirror_bytes_applied - self._mirror_bytes_synced

    def checkpoint_begin(self) -> Mark | None:
        """What a mirror fdatasync starting now makes durable: (applied seq, bytes applied
        so far). None if the mirror holds nothing unsynced."""
        self.last_mirror_sync = time.monotonic()
        if self.applied_seq > self.durable_seq or self.unsynced_mirror_bytes():
            return self.applied_seq, self._mirror_bytes_applied
        return None

    def checkpoint_end(self, mark: Mark) -> None:
        """The mirror fdatasync begun at `mark` is done: move the journal's checkpoint (never
        backwards: a checkpoint taken meanwhile under the lock may have passed it)."""
        seq, applied_bytes = mark
        if seq > self.durable_seq:
            self._journal.set_mirror_durable(seq)
            self._journal.sync()
            self.durable_seq = seq
        self._mirror_bytes_synced = max(self._mirror_bytes_synced, applied_bytes)
        self.last_mirror_sync = time.monotonic()
