"""The DR admin's operations on one replica: promote, demote, rollback, invalidate; and,
with the receiver stopped, recover a point of its retention window and set that window
(``recover_offline``, ``set_retention_offline``: with it running, its control commands
``recover`` and ``set-retention`` do the same without stopping replication).

One place for both ways of running them: ``appliance-dr`` with the receiver stopped, and the
receiver's control commands while it runs (it closes that volume's session and holds new ones
off first, then calls ``perform`` on the closed replica and reopens it). Each operation's
rules live beside its code (``promotion.py``, ``replica_offline.py``); ``check`` asks them
from the state file alone, so the running receiver can refuse an unsafe operation before it
disturbs the volume's link.

Volumes are named by uuid or by name (the volume's name on its primary, from its HELLO, or
the name a provisioned replica was created with).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from appliance.replication.config import ReplicaConfig
from appliance.replication.dr.promotion import (
    Promotion,
    check_demote,
    check_promote,
    demote,
    promote,
)
from appliance.replication.dr.replica import Replica
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.dr.replica_offline import (
    check_invalidate,
    check_rollback,
    invalidate,
    roll_back_to_consistent,
)
from appliance.replication.dr.replica_state import ReplicaState
from appliance.replication.dr.retention_settings import RetentionSettings
from appliance.volume import group_layout
from appliance.volume.identity import mirror_volume_uuid
from appliance.volume.promoted_group import member_backstore_commands

ACTIONS = ("promote", "demote", "rollback", "invalidate")


class VolumeNotFound(LookupError):
    """No replica, or more than one, answers to the name given; the message lists them."""


@dataclass(frozen=True, slots=True)
class Outcome:
    result: dict            # what appliance-dr prints, what the control command returns
    next_steps: str = ""    # for a person (appliance-dr prints it on stderr)


def promote_next_steps(p: Promotion, size_bytes: int) -> str:
    """What the admin does after a promotion (docs/failover.md has the whole procedure)."""
    if group_layout.is_layout_path(p.mirror):
        return _group_next_steps(p, group_layout.load(p.mirror))
    return (f"promoted: {p.mirror} holds the primary's image after seq {p.at_seq}; "
            f"{p.former_primary!r} is fenced off (refused with 'promoted').\n"
            f"next:\n"
            f"  1. serve it with a NEW journal (the handler adopts the promotion's base "
            f"left beside the mirror and marks nothing):\n"
            f"     /backstores/user:mirror create name=<name> size={size_bytes} "
            f"cfgstring=mirror={p.mirror};journal=<new journal path>\n"
            f"  2. its transmitter: volume_uuid = {mirror_volume_uuid(p.mirror)} (derived from "
            f"the mirror path), generation = {p.generation}, mirror + bitmap, "
            f"resync_skip_matching = true, peer = the old primary site once it is back\n"
            f"  3. failback on the old primary site: stop its LUN and transmitter, run a "
            f"receiver whose [[volume]] mirror is its old mirror and failback_journal its old "
            f"journal: only what changed is copied back (docs/failover.md)\n")


def _group_next_steps(p: Promotion, layout: group_layout.GroupLayout) -> str:
    """A consistency group: every member's mirror holds the group's image after the same seq;
    they are served again as the members of a group on this site (docs/groups.md)."""
    members = "".join(f"     {line}\n" for line in member_backstore_commands(layout))
    return (f"promoted: the members of group {layout.name!r} hold the primary's image after "
            f"seq {p.at_seq}, all at that seq; {p.former_primary!r} is fenced off (refused "
            f"with 'promoted').\n"
            f"next:\n"
            f"  1. a group on this site over these members, at the same offsets (it takes over "
            f"the promotion's base left beside {p.mirror}, so its new journal marks nothing):\n"
            f"     /replication/groups create name={layout.name} peer=<the old primary site, "
            f"once it is back> promoted={p.mirror}\n"
            f"  2. serve each member in it:\n{members}"
            f"  3. failback on the old primary site: delete its members' backstores, then "
            f"'/replication/groups/{layout.name} failback uuid=<this site's group uuid, shown "
            f"by create>': only what changed on either side is copied back "
            f"(docs/groups.md)\n")


_CHECKS: dict[str, Callable[[ReplicaConfig], ReplicaState]] = {
    "promote": check_promote, "demote": check_demote, "rollback": check_rollback,
    "invalidate": check_invalidate}


def check(action: str, cfg: ReplicaConfig) -> None:
    """ReplicaError with the reason when ``action`` cannot run on this replica now."""
    if action not in _CHECKS:
        raise ReplicaError(f"unknown operation {action!r}; one of {', '.join(ACTIONS)}")
    _CHECKS[action](cfg)


def perform(action: str, cfg: ReplicaConfig) -> Outcome:
    """Run ``action`` on a closed replica (nothing else may have it open). ReplicaError (or
    ReplicaStateError) with the reason when refused."""
    check(action, cfg)
    hint = ""
    if action == "rollback":
        result: dict = {"rolled_back_to_seq": roll_back_to_consistent(cfg)}
    elif action == "invalidate":
        result = {"invalidated_at_seq": invalidate(cfg)}
    elif action == "promote":
        promotion = promote(cfg)
        result = promotion.as_dict()
        hint = promote_next_steps(promotion, cfg.spec.size_bytes)
    else:
        result = {"demoted_keeping_generation": demote(cfg)}
    return Outcome({"volume": str(cfg.spec.uuid), **result, "mirror": str(cfg.paths.mirror)},
                   hint)


def recover_offline(cfg: ReplicaConfig, at: str) -> Outcome:
    """The image at point ``at`` of a closed replica's retention window, as a file beside
    it (opening the replica redoes its journal first). ReplicaError when refused."""
    replica = Replica(cfg)
    try:
        out = replica.recover(at)
    finally:
        replica.close()
    hint = out.pop("next_steps")
    return Outcome(out, hint)


def set_retention_offline(cfg: ReplicaConfig, settings: RetentionSettings) -> Outcome:
    """Set a closed replica's retention window (saved in its state.json)."""
    replica = Replica(cfg)
    try:
        if replica.journal is None and replica.primary is None:
            raise ReplicaError(f"volume {cfg.spec.uuid} was never paired with a primary: "
                               f"nothing to retain yet")
        out = replica.set_retention(settings)
    finally:
        replica.close()
    return Outcome({"volume": str(cfg.spec.uuid), "retention": out})


def find(replicas: dict[uuid.UUID, tuple[ReplicaConfig, str]], text: str) -> ReplicaConfig:
    """The replica named ``text``: a volume uuid, or a volume name (``replicas``: uuid ->
    (config, name)). VolumeNotFound names what is known."""
    try:
        wanted: uuid.UUID | None = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        wanted = None
    if wanted is not None and wanted in replicas:
        return replicas[wanted][0]
    named = [cfg for cfg, name in replicas.values() if name and name == text]
    if len(named) == 1:
        return named[0]
    known = ", ".join(f"{u} ({name})" if name else str(u)
                      for u, (_, name) in sorted(replicas.items(), key=lambda kv: str(kv[0])))
    if named:
        raise VolumeNotFound(f"{len(named)} volumes are named {text!r}: name one by its uuid "
                             f"({', '.join(str(c.spec.uuid) for c in named)})")
    raise VolumeNotFound(f"no volume {text!r} on this receiver (known: {known or 'none'})")
