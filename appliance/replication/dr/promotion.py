"""Failover and failback on the DR site: promote a replica, and demote it again later.

``promote`` (offline, the receiver stopped) turns a consistent replica into a primary's image:
the replica journal is redone onto the mirror and the mirror synced, then the state file
durably records the promotion with the epoch (generation) raised, then the journal is set
aside. From the state write on, the replica is *fenced*: admission refuses every transmitter
for the volume (code ``promoted``) and the replica never writes its mirror again, so the old
primary, if it comes back, can never lay its records (written after the failure, or never
shipped before it) over the image the new primary serves.

Crash safety, step by step: a crash before the state write leaves an ordinary replica (the
next ``promote`` redoes again, idempotently, from the journal's mirror-durable checkpoint); a
crash after it leaves a promoted replica whose journal may still be in place, which opening
ignores and the next ``promote`` sets aside.

Between the state write and setting the journal aside, ``promote`` leaves a *promotion base
marker* beside the mirror (``appliance/volume/promotion_base.py``): the handler that serves the
mirror with a new journal records that base instead of marking every chunk, so its bitmap and
journal then hold exactly what the new primary changes, and a failback copies only that.

``demote`` is the swap back: once the volume's primary runs elsewhere again and this site's
mirror is no longer served here, the replica becomes an unbound DR replica over the same
mirror. Its generation stays the promoted one, so a transmitter of an older epoch (the primary
fenced off by the promotion) is still refused (``stale-generation``); the new primary's first
contact copies only what differs (``resync_skip_matching``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.journal.errors import JournalError
from appliance.journal.header import journal_volume_bytes
from appliance.replication.config import ReplicaConfig
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.replica_state import PromotionMark, ReplicaState, promotion_refusal
from appliance.storage import sync_dir
from appliance.volume.mirror_lock import check_free
from appliance.volume.promotion_base import PromotionBase, remove_marker, write_marker

log = logging.getLogger("appliance.replication.dr.replica")


@dataclass(frozen=True, slots=True)
class Promotion:
    """What a promotion recorded, and what the admin needs next."""

    volume_uuid: uuid.UUID
    at_seq: int              # the mirror holds the primary's image after this seq
    generation: int          # the raised epoch: the new primary's transmitters use it
    former_primary: str | None
    mirror: Path             # serve this through a user:mirror backstore, with a NEW journal
    time: float
    at_time: float | None = None    # the primary's clock at at_seq (None: not known)

    def as_dict(self) -> dict:
        return {"volume": str(self.volume_uuid), "promoted_at_seq": self.at_seq,
                "promoted_at_time": self.at_time,
                "generation": self.generation, "former_primary": self.former_primary,
                "mirror": str(self.mirror), "time": self.time}


def promote(cfg: ReplicaConfig) -> Promotion:
    """Make the replica's mirror a primary's image (offline: the receiver must not run).

    Refused for an inconsistent replica (roll it back first) and for one that never held an
    image. Promoting a promoted replica again finishes what a crash interrupted and returns the
    same record."""
    mark = check_promote(cfg).promoted
    # A repeat writes the marker again only while this promotion has not set the journal
    # aside: after that its marker was durable, and the handler may have taken it over and
    # written the mirror since (a marker written again would then describe an image the
    # mirror no longer holds).
    leave_marker = mark is None or cfg.paths.journal.exists()
    if mark is None:
        replica = Replica(cfg)          # opening redoes the journal onto the mirror
        try:
            mark = PromotionMark.from_dict(replica.mark_promoted(time.time()))
        finally:
            replica.close()
    if leave_marker:
        _leave_base_marker(cfg, mark)
    _set_journal_aside(cfg, mark.at_seq)
    return Promotion(cfg.spec.uuid, mark.at_seq, mark.generation, mark.former_primary,
                     cfg.paths.mirror, mark.time, mark.at_time)


def _leave_base_marker(cfg: ReplicaConfig, mark: PromotionMark) -> None:
    """The image the mirror holds now, beside it for the handler (after the mark is durable:
    the mirror is final). A marker that cannot be written costs a full compare by hash at
    failback, never the promotion."""
    base = PromotionBase(cfg.spec.uuid, mark.at_seq, mark.generation, int(mark.time * 1e9))
    try:
        write_marker(cfg.paths.mirror, base, size_bytes=_image_bytes(cfg))
    except OSError as err:
        log.warning("volume %s: promoted, but the promotion base marker beside %s cannot be "
                    "written (%s): the new primary will mark every chunk, and a failback "
                    "then compares the whole volume by hash", cfg.spec.uuid, cfg.paths.mirror,
                    err)


def _image_bytes(cfg: ReplicaConfig) -> int:
    """The promoted image's size: what the replica journal records (it followed the primary's
    resizes and a group's members joining), the configured size where it cannot tell (the
    marker is then refused by a size check, which costs a full compare, never data)."""
    try:
        return journal_volume_bytes(cfg.paths.journal, cfg.spec.uuid)
    except (OSError, JournalError):
        return cfg.spec.size_bytes


def check_promote(cfg: ReplicaConfig) -> ReplicaState:
    """The rules of a promotion, from the state file and the journal's presence: ReplicaError
    with the reason when it cannot run (also asked by the receiver before it closes the
    volume's session). A promoted replica passes (promoting again finishes a promotion)."""
    st = ReplicaState.load(cfg.paths.state)
    if st is None:
        raise ReplicaError(f"volume {cfg.spec.uuid} was never paired with a primary: its mirror "
                           f"holds no replicated image to promote")
    if st.promoted is None:
        reason = promotion_refusal(cfg.spec.uuid, inconsistent=st.inconsistent_since is not None,
                                   has_journal=cfg.paths.journal.exists(),
                                   image_seq=st.detached_image_seq)
        if reason:
            raise ReplicaError(reason)
    return st


def check_demote(cfg: ReplicaConfig) -> ReplicaState:
    st = ReplicaState.load(cfg.paths.state)
    if st is None or st.promoted is None:
        raise ReplicaError(f"volume {cfg.spec.uuid} is not promoted; nothing to demote")
    # A replica again, its mirror is the receiver's to write: not while a LUN serves it.
    check_free(cfg.paths.mirror, "DR receiver")
    return st


def demote(cfg: ReplicaConfig) -> int:
    """Make a promoted replica an unbound DR replica over the same mirror again (offline; the
    mirror must no longer be served on this site). Returns the generation it keeps: the
    primary whose contact it awaits must use at least this one."""
    st = check_demote(cfg)
    generation = st.generation
    remove_marker(cfg.paths.mirror)     # a replica's mirror again, no longer a base to adopt
    dataclasses.replace(st, primary=None, promoted=None, demoted_from=st.promoted,
                        inconsistent_since=None, consistent_seq=None, consistent_at=None,
                        full_copy_pending=False, detached_image_seq=None
                        ).save(cfg.paths.state)
    log.warning("volume %s: demoted; a DR replica again, awaiting a primary of generation "
                ">= %d (its first contact copies what differs)", cfg.spec.uuid, generation)
    return generation


def _set_journal_aside(cfg: ReplicaConfig, at_seq: int) -> None:
    """Rename the replica journal (kept for inspection, never redone again) durably."""
    journal = cfg.paths.journal
    if not journal.exists():
        return
    journal.rename(journal.with_name(f"journal.promoted-{at_seq}"))
    sync_dir(journal.parent)
