"""Offline operations on a replica, for the DR site's admin tool (``appliance-dr``): the
receiver must not run while they do.

``roll_back_to_consistent`` is the failover step during a resync: it replays the undo log to
restore the last consistent image. ``invalidate`` prepares a replica that misses records its
primary no longer holds for a full copy. Both set the replica journal aside, so the primary's
next contact is a first contact without the history (a full copy, during which the image they
leave stays recoverable).
"""

from __future__ import annotations

import dataclasses
import logging

from appliance.replication.config import ReplicaConfig
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.replica_state import ReplicaState
from appliance.replication.dr.undo import roll_back
from appliance.volume.concat_io import open_mirror
from appliance.volume.mirror_lock import MirrorLock

log = logging.getLogger("appliance.replication.dr.replica")


def roll_back_to_consistent(cfg: ReplicaConfig) -> int:
    """Failover during a resync: restore the last consistent image from the undo log.

    Offline (the receiver must not run). The replica journal is set aside (renamed), since
    the image no longer matches it: the primary's next contact starts a full copy, during
    which this image stays recoverable. Returns the seq of the restored image."""
    st = check_rollback(cfg)
    if st.consistent_seq is None:       # check_rollback refused it
        raise ReplicaError(f"volume {cfg.spec.uuid} has no consistent image")
    lock = MirrorLock.take(cfg.paths.mirror, "rollback")     # one writer per mirror
    try:
        with open_mirror(cfg.paths.mirror) as mirror:
            restored = roll_back(cfg.paths.undo, mirror)
    finally:
        lock.close()
    seq = st.consistent_seq
    log.warning("volume %s: rolled back %d bytes to the consistent image at seq %d",
                cfg.spec.uuid, restored, seq)
    _detach_journal(cfg, st, seq, "rolled-back")
    cfg.paths.undo.unlink(missing_ok=True)
    return seq


def invalidate(cfg: ReplicaConfig) -> int:
    """Make the next contact a full copy, for a replica missing records the primary no longer
    holds (e.g. restored from an old backup). Offline (the receiver must not run). The journal
    is redone onto the mirror and set aside; the mirror's image stays recoverable through the
    copy. Returns the seq of that image."""
    check_invalidate(cfg)
    replica = Replica(cfg)            # opening redoes the journal onto the mirror and syncs it
    try:
        seq = replica.applied_seq
    finally:
        replica.close()
    _detach_journal(cfg, _state(cfg), seq, "invalidated")
    log.warning("volume %s: invalidated at seq %d; the next contact starts a full copy",
                cfg.spec.uuid, seq)
    return seq


def check_rollback(cfg: ReplicaConfig) -> ReplicaState:
    """The rules of a rollback, from the state file: ReplicaError with the reason when it
    cannot run (also asked by the receiver before it closes the volume's session)."""
    st = _state(cfg)
    if st.promoted is not None:
        raise ReplicaError(f"volume {cfg.spec.uuid} is promoted (served as a primary here): "
                           f"nothing to roll back")
    if st.inconsistent_since is None:
        raise ReplicaError(f"volume {cfg.spec.uuid} is consistent; nothing to roll back")
    if st.consistent_seq is None:
        raise ReplicaError(f"volume {cfg.spec.uuid} has never held a consistent image: its "
                           f"initial full copy has not finished; nothing to roll back to")
    return st


def check_invalidate(cfg: ReplicaConfig) -> ReplicaState:
    """The rules of an invalidate, from the state file and the journal's presence."""
    st = _state(cfg)
    if st.promoted is not None:
        raise ReplicaError(f"volume {cfg.spec.uuid} is promoted (served as a primary here): "
                           f"demote it first")
    if st.inconsistent_since is not None:
        raise ReplicaError(f"volume {cfg.spec.uuid} is inconsistent (a resync or full copy "
                           f"is under way): roll it back first (rollback) or let the resync "
                           f"finish")
    if not cfg.paths.journal.exists():
        raise ReplicaError(f"volume {cfg.spec.uuid} holds no journal: its next contact is "
                           f"a first contact already")
    return st


def _state(cfg: ReplicaConfig) -> ReplicaState:
    st = ReplicaState.load(cfg.paths.state)
    if st is None:
        raise ReplicaError(f"volume {cfg.spec.uuid} was never paired with a primary (no "
                           f"{cfg.paths.state}); nothing to do")
    return st


def _detach_journal(cfg: ReplicaConfig, st: ReplicaState, image_seq: int, why: str) -> None:
    """Set the journal aside (the image no longer matches it, so the next contact is a first
    contact) and record the image the mirror holds, consistent at ``image_seq``."""
    if cfg.paths.journal.exists():
        cfg.paths.journal.rename(cfg.paths.journal.with_name(f"journal.{why}-{image_seq}"))
    dataclasses.replace(st, inconsistent_since=None, consistent_at=None,
                        full_copy_pending=False, detached_image_seq=image_seq
                        ).save(cfg.paths.state)
