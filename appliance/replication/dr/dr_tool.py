"""appliance-dr: the DR site's offline view of its replicas, and failover roll back.

    appliance-dr --config /var/lib/appliance/replication/receiver.toml state
    appliance-dr --config /var/lib/appliance/replication/receiver.toml rollback <volume-uuid>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml invalidate <volume-uuid>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml promote <volume-uuid>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml demote <volume-uuid>

``state`` reads each replica's state file: consistent (and up to which seq) or inconsistent
since when (a resync was under way). ``rollback`` is the failover step for an inconsistent
replica: it restores the last consistent image from the undo log so the DR mirror can be
mounted. Both work with the receiver stopped; ``rollback`` refuses while it runs, since the
receiver would keep writing into the mirror. ``invalidate`` makes the primary's next contact a
full copy, for a replica that misses records the primary no longer holds (restored from an old
backup); its current image stays recoverable through the copy. After either, the replica
says ``image_seq``: the consistent image its mirror holds while no journal backs it.

``promote`` is the failover itself (docs/failover.md): the replica journal is redone onto the
mirror, and the replica is durably marked promoted with its epoch raised, so its mirror can be
served as a LUN on this site; from then on the receiver refuses the old primary (``promoted``)
and never writes that mirror again. ``demote`` undoes the mark once the volume's primary runs
on the other site again, making the mirror a DR replica that the new primary re-syncs.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from appliance import storage
from appliance.control.client import ControlError, call
from appliance.daemon_entry import argument_parser, run
from appliance.replication.config import (
    ReceiverConfig,
    ReplicaConfig,
    load_toml,
    receiver_config,
)
from appliance.replication.dr.promotion import Promotion, demote, promote
from appliance.replication.dr.replica import ReplicaError
from appliance.replication.dr.replica_offline import invalidate, roll_back_to_consistent
from appliance.replication.dr.replica_state import ReplicaState, ReplicaStateError
from appliance.volume.identity import mirror_volume_uuid


class DrToolError(Exception):
    """Refused, with the reason and what to do."""


def replica_state(cfg: ReplicaConfig) -> dict:
    """What the state file says of one replica (no state file: never paired)."""
    out: dict = {"uuid": str(cfg.spec.uuid), "mirror": str(cfg.paths.mirror)}
    st = ReplicaState.load(cfg.paths.state)
    if st is None:
        return out | {"state": "never-paired"}
    since = st.inconsistent_since
    out |= {"state": "consistent" if since is None else "inconsistent",
            "inconsistent_since": since, "consistent_seq": st.consistent_seq,
            "primary": st.primary, "undo_log": cfg.paths.undo.exists(),
            "full_copy_pending": st.full_copy_pending}
    if st.detached_image_seq is not None:
        out["image_seq"] = st.detached_image_seq
    if st.promoted is not None:
        out |= {"state": "promoted", "promoted": st.promoted.as_dict()}
    return out


def promote_next_steps(p: Promotion, size_bytes: int) -> str:
    """What the admin does after a promotion (docs/failover.md has the whole procedure)."""
    return (f"promoted: {p.mirror} holds the primary's image after seq {p.at_seq}; "
            f"{p.former_primary!r} is fenced off (refused with 'promoted').\n"
            f"next:\n"
            f"  1. serve it with a NEW journal (the handler then marks every chunk for the "
            f"next peer):\n"
            f"     /backstores/user:mirror create name=<name> size={size_bytes} "
            f"cfgstring=mirror={p.mirror};journal=<new journal path>\n"
            f"  2. its transmitter: volume_uuid = {mirror_volume_uuid(p.mirror)} (derived from "
            f"the mirror path), generation = {p.generation}, mirror + bitmap, "
            f"resync_skip_matching = true, peer = the old primary site once it is back\n"
            f"  3. failback on the old primary site: stop its LUN and transmitter, run a "
            f"receiver whose [[volume]] mirror is its old mirror (docs/failover.md)\n")


def ensure_receiver_stopped(control_socket: Path, cfg: ReplicaConfig) -> None:
    """Refuse when the receiver answers on its control socket or holds the replica journal."""
    try:
        call(control_socket, "status", timeout=2.0)
    except ControlError:
        pass
    else:
        raise DrToolError(f"the receiver is running (it answers on {control_socket}); stop it "
                          "first: systemctl stop appliance-receiver")
    if cfg.paths.journal.exists():
        io = storage.open_file(cfg.paths.journal)
        try:
            io.lock_exclusive()
        except storage.StorageLocked as err:
            raise DrToolError(f"{cfg.paths.journal} is held by a running process; stop the "
                              "receiver first") from err
        finally:
            io.close()


def find_volume(volumes: list[ReplicaConfig], text: str) -> ReplicaConfig:
    try:
        wanted = uuid.UUID(text)
    except ValueError as err:
        raise DrToolError(f"{text!r} is not a volume uuid") from err
    for cfg in volumes:
        if cfg.spec.uuid == wanted:
            return cfg
    known = ", ".join(str(c.spec.uuid) for c in volumes) or "none"
    raise DrToolError(f"volume {wanted} is not in the receiver config (configured: {known})")


def main(argv: list[str] | None = None) -> int:
    p = argument_parser("appliance-dr", __doc__, config_help="the receiver's TOML config",
                        raw_description=True)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("state", help="print each replica's state as JSON")
    r = sub.add_parser("rollback", help="restore the last consistent image (receiver stopped)")
    r.add_argument("volume", help="volume uuid")
    i = sub.add_parser("invalidate", help="make the next contact a full copy (receiver stopped)")
    i.add_argument("volume", help="volume uuid")
    pr = sub.add_parser("promote", help="failover: make the replica's mirror a primary's image "
                                        "and fence off the old primary (receiver stopped)")
    pr.add_argument("volume", help="volume uuid")
    d = sub.add_parser("demote", help="make a promoted replica a DR replica again, once its "
                                      "mirror is no longer served here (receiver stopped)")
    d.add_argument("volume", help="volume uuid")
    ns = p.parse_args(argv)

    def act(rx: ReceiverConfig) -> int:
        hint = ""
        try:
            if ns.action == "state":
                print(json.dumps([replica_state(c) for c in rx.volumes], indent=2))
                return 0
            cfg = find_volume(rx.volumes, ns.volume)
            ensure_receiver_stopped(rx.control_socket, cfg)
            if ns.action == "rollback":
                result = {"rolled_back_to_seq": roll_back_to_consistent(cfg)}
            elif ns.action == "invalidate":
                result = {"invalidated_at_seq": invalidate(cfg)}
            elif ns.action == "promote":
                promotion = promote(cfg)
                result = promotion.as_dict()
                hint = promote_next_steps(promotion, cfg.spec.size_bytes)
            else:
                result = {"demoted_keeping_generation": demote(cfg)}
        except (DrToolError, ReplicaError, ReplicaStateError) as err:
            print(f"appliance-dr: {err}", file=sys.stderr)
            return 1
        print(json.dumps({"volume": str(cfg.spec.uuid), **result,
                          "mirror": str(cfg.paths.mirror)}))
        if hint:
            print(hint, file=sys.stderr, end="")
        return 0

    # a configuration error: exit 2 (daemon_entry); a refusal or a damaged replica: exit 1
    return run("appliance-dr", ns,
               lambda: receiver_config(load_toml(ns.config), str(ns.config)), act, daemon=False)


if __name__ == "__main__":
    sys.exit(main())
