"""Minimal failback: what the old primary's mirror holds beyond the image a promotion started
from (docs/failover.md, "Failback copies only what changed").

After a failover the new primary B serves the promoted image: the old primary A's image after
seq S (``PromotionBase``). B's handler records that base instead of marking every chunk, so
B's bitmap and journal hold exactly what B changed since. When A returns as B's DR, A's
receiver is given A's old journal (``failback_journal``); with it A proves what its mirror
holds: the base, plus the writes its journal holds beyond S (and beyond the mirror's durable
point, which may be below S after a power cut), plus the regions its bitmap marks (written
while it logged to the bitmap). Those extents are all B has to copy besides its own changes.

A cannot prove it when its journal no longer holds every seq after that point (reclaimed:
the DR had acknowledged them before a rollback), when the journal is of another volume or
names another mirror, or when a handler still writes it: then B makes a full copy, as before.

A split brain is A having written after the promotion (its clock at or after B's promotion
time, or logging to its bitmap since then): both sides then changed the image, and nothing
is copied until the admin says which side wins (``resolve``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from appliance.journal import JournalReader, RecordsGone
from appliance.journal.errors import JournalError
from appliance.storage import StorageLocked, open_file
from appliance.volume.promotion_base import PromotionBase
from appliance.volume.resync import ResyncSource

READ_BYTES = 8 << 20
MAX_EXTENTS = 20000     # what one WELCOME carries; more are merged at a coarser grain


class BaseUnproven(Exception):
    """This site cannot show that its mirror holds the promotion's base (a full copy then)."""


@dataclass
class FailbackPlan:
    """What the old primary's mirror holds beyond the base, as extents (lba, blocks)."""

    base: PromotionBase
    from_seq: int                    # records from here on were counted
    head_seq: int                    # the old journal's newest seq
    records: int = 0                 # records beyond the base (and the mirror's durable point)
    dirty_chunks: int = 0            # chunks the old bitmap marks
    extents: list[tuple[int, int]] = field(default_factory=list)
    bitmap_extents: list[tuple[int, int]] = field(default_factory=list)   # of these, the bitmap's
    # Split brain: writes made after the promotion (seq, time) and whether the old bitmap
    # logged writes since then.
    after_promotion: list[tuple[int, float]] = field(default_factory=list)
    bitmap_after_promotion: bool = False

    @property
    def split_brain(self) -> bool:
        return bool(self.after_promotion) or self.bitmap_after_promotion

    @property
    def extent_blocks(self) -> int:
        return sum(n for _, n in self.extents)

    def summary(self, block_size: int) -> dict:
        return {"base_seq": self.base.seq, "from_seq": self.from_seq,
                "head_seq": self.head_seq, "records": self.records,
                "dirty_chunks": self.dirty_chunks, "extents": len(self.extents),
                "bytes": self.extent_blocks * block_size,
                "written_after_promotion": len(self.after_promotion),
                "first_after_promotion": self.after_promotion[0] if self.after_promotion
                else None,
                "bitmap_after_promotion": self.bitmap_after_promotion}


def plan(base: PromotionBase, *, journal: Path, mirror: Path, block_size: int) -> FailbackPlan:
    """The extents this site's mirror holds beyond ``base``, from its old journal and bitmap.
    Raises BaseUnproven with the reason when it cannot be shown."""
    try:
        io = open_file(journal)
    except OSError as err:
        raise BaseUnproven(f"the old journal {journal} does not open: {err}") from err
    try:
        io.lock_exclusive()         # no handler may write it while we count (its LUN is gone)
    except StorageLocked:
        io.close()
        raise BaseUnproven(f"the old journal {journal} is still in use (a handler serves its "
                           f"volume): delete that backstore first") from None
    try:
        reader = JournalReader(io, volume_uuid=base.lineage)
    except JournalError as err:
        io.close()
        raise BaseUnproven(f"the old journal {journal} is not the promoted volume "
                           f"{base.lineage}'s: {err}") from err
    with reader:
        files = reader.volume_files()
        if files is None or not _same_file(files.mirror, mirror):
            raise BaseUnproven(f"the old journal {journal} names the mirror "
                               f"{files.mirror if files else None}, not this replica's "
                               f"{mirror}")
        if reader.sb.volume_block_size != block_size:
            raise BaseUnproven(f"the old journal has {reader.sb.volume_block_size}-byte "
                               f"blocks, the volume {block_size}")
        anchor = reader.writer_checkpoint()
        # Below the base too when the mirror had not caught up with its journal (a power
        # cut): those records are not on this mirror yet, so their blocks differ as well.
        start = min(base.seq, anchor.mirror_durable_seq) + 1
        result = FailbackPlan(base, start, anchor.head_seq - 1)    # (head_seq: the next)
        extents = _record_extents(reader, start, result)
        result.bitmap_extents = _bitmap_extents(Path(files.bitmap), base, block_size, result)
    result.extents = merge(extents + result.bitmap_extents)
    return result


def _record_extents(reader: JournalReader, start: int, result: FailbackPlan
                    ) -> list[tuple[int, int]]:
    extents: list[tuple[int, int]] = []
    seq = start
    promoted_ns = result.base.promoted_ns
    while True:
        try:
            batch = reader.read(seq, READ_BYTES)
        except RecordsGone as err:
            raise BaseUnproven(f"the old journal no longer holds seq {seq} ({err}): the DR had "
                               f"acknowledged writes it later rolled back") from err
        except JournalError as err:
            raise BaseUnproven(f"the old journal does not read at seq {seq}: {err}") from err
        if not batch:
            return extents
        for record in batch:
            op = record.op
            extents.append((op.lba, op.nblocks))
            result.records += 1
            result.head_seq = max(result.head_seq, record.seq)
            if record.seq > result.base.seq and record.timestamp_ns >= promoted_ns:
                result.after_promotion.append((record.seq, record.timestamp_ns / 1e9))
        seq = batch[-1].seq + 1


def _bitmap_extents(path: Path, base: PromotionBase, block_size: int,
                    result: FailbackPlan) -> list[tuple[int, int]]:
    try:
        io = open_file(path)
    except OSError as err:
        raise BaseUnproven(f"the old bitmap {path} does not open: {err}") from err
    with io:
        snap = ResyncSource(io).snapshot()
    per_chunk = snap.chunk_size // block_size
    result.dirty_chunks = snap.dirty_chunks
    if snap.runs and snap.logging and snap.logging_since_ns >= base.promoted_ns:
        result.bitmap_after_promotion = True
    return [(first * per_chunk, count * per_chunk) for first, count in snap.runs]


def merge(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping and touching extents joined; coarser (1 MiB of 512-byte blocks at
    a time, doubling) until at most MAX_EXTENTS remain. Never smaller than the input."""
    grain = 1
    while True:
        out: list[tuple[int, int]] = []
        for lba, n in sorted(extents):
            first, end = lba // grain * grain, -(-(lba + n) // grain) * grain
            if out and first <= out[-1][0] + out[-1][1]:
                start = out[-1][0]
                out[-1] = (start, max(out[-1][1], end - start))
            else:
                out.append((first, end - first))
        if len(out) <= MAX_EXTENTS:
            return out
        grain = 2048 if grain == 1 else grain * 2


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
