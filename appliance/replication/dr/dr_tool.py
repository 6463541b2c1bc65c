"""appliance-dr: the DR site's offline view of its replicas, and failover roll back.

    appliance-dr --config /var/lib/appliance/replication/receiver.toml state
    appliance-dr --config /var/lib/appliance/replication/receiver.toml rollback <volume uuid or name>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml invalidate <volume uuid or name>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml promote <volume uuid or name>
    appliance-dr --config /var/lib/appliance/replication/receiver.toml demote <volume uuid or name>
    appliance-dr --config ... recover <volume uuid or name> --at seq:1234
    appliance-dr --config ... recover <volume uuid or name> --at 2026-12-07T05:10:00Z
    appliance-dr --config ... retention <volume uuid or name> --retain 24h --max 200G

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

``recover`` writes the primary's image at a point of the replica's retention window (by
sequence number, or the last write at or before a UTC time) to ``recovered-<seq>.img``
beside the replica, and says how to look at it; ``retention`` sets that window (by age and
size; ``none`` for no limit, both none for off). ``state`` shows each replica's window: its
settings and the oldest and newest recoverable points (docs/failover.md, "Point in time").

The replicas are the receiver's ``[[volume]]`` tables and those it provisioned under its
state_dir (``provisioned.py``); a volume is named by uuid or by its name. The operations are
the same code the running receiver's control commands run (``operations.py``): with the
receiver running, use those (this tool refuses and says how).
"""

from __future__ import annotations

import json
import sys
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
from appliance.replication.dr.operations import (
    VolumeNotFound,
    find,
    perform,
    promote_next_steps,
    recover_offline,
    set_retention_offline,
)
from appliance.replication.dr.provisioned import ProvisionedSpec, replica_configs
from appliance.replication.dr.replica import ReplicaError
from appliance.replication.dr.replica_state import ReplicaState, ReplicaStateError
from appliance.replication.dr.retention import RetentionError, read_summary
from appliance.replication.dr.retention_settings import (
    RetentionSettings,
    RetentionSettingsError,
    parse_retain,
    parse_size,
)
from appliance.volume.identity import mirror_volume_uuid

__all__ = ["main", "mirror_volume_uuid", "promote_next_steps"]   # (the tests import these)


class DrToolError(Exception):
    """Refused, with the reason and what to do."""


def replica_state(cfg: ReplicaConfig, spec: ProvisionedSpec | None = None) -> dict:
    """What the state file says of one replica (no state file: never paired)."""
    out: dict = {"uuid": str(cfg.spec.uuid), "mirror": str(cfg.paths.mirror),
                 "name": spec.name if spec else "", "provisioned": spec is not None}
    st = ReplicaState.load(cfg.paths.state)
    if st is None:
        return out | {"state": "never-paired"}
    since = st.inconsistent_since
    out |= {"state": "consistent" if since is None else "inconsistent",
            "inconsistent_since": since, "consistent_seq": st.consistent_seq,
            "primary": st.primary, "undo_log": cfg.paths.undo.exists(),
            "full_copy_pending": st.full_copy_pending, "name": st.name or out["name"]}
    if st.detached_image_seq is not None:
        out["image_seq"] = st.detached_image_seq
    if st.promoted is not None:
        out |= {"state": "promoted", "promoted": st.promoted.as_dict()}
    out["retention"] = retention_state(cfg, st)
    return out


def retention_state(cfg: ReplicaConfig, st: ReplicaState) -> dict:
    """The window as the files say (the receiver, if running, may have applied more)."""
    settings = RetentionSettings(st.retain_s, st.retain_bytes)
    out: dict = {**settings.as_dict(), "enabled": settings.enabled, "bytes": 0, "segments": 0,
                 "oldest": None, "newest": None}
    if not settings.enabled or st.inconsistent_since is not None or st.promoted is not None:
        return out
    try:
        summary = read_summary(cfg.paths.state.parent / "retention")
    except (OSError, RetentionError) as err:
        return out | {"error": str(err)}
    return out if summary is None else out | summary


def ensure_receiver_stopped(control_socket: Path, cfg: ReplicaConfig) -> None:
    """Refuse when the receiver answers on its control socket or holds the replica journal."""
    try:
        call(control_socket, "status", timeout=2.0)
    except ControlError:
        pass
    else:
        raise DrToolError(f"the receiver is running (it answers on {control_socket}): use its "
                          f"control commands (appliancectl --socket {control_socket} call "
                          f"<promote|demote|rollback|invalidate|recover|set-retention> "
                          f"'{{\"volume\": "
                          f"\"{cfg.spec.uuid}\"}}'), or stop it first: systemctl stop "
                          f"appliance-receiver")
    if cfg.paths.journal.exists():
        io = storage.open_file(cfg.paths.journal)
        try:
            io.lock_exclusive()
        except storage.StorageLocked as err:
            raise DrToolError(f"{cfg.paths.journal} is held by a running process; stop the "
                              "receiver first") from err
        finally:
            io.close()


def replicas(rx: ReceiverConfig) -> list[tuple[ReplicaConfig, ProvisionedSpec | None]]:
    """The receiver's [[volume]] tables and the replicas it provisioned (as it opens them)."""
    return replica_configs(rx.state_dir, rx.volumes)


def find_volume(found: list[tuple[ReplicaConfig, ProvisionedSpec | None]],
                text: str) -> ReplicaConfig:
    """By uuid, or by the name its primary gave it (state.json) or it was provisioned as."""
    named = {}
    for cfg, spec in found:
        try:
            st = ReplicaState.load(cfg.paths.state)
        except ReplicaStateError:
            st = None
        named[cfg.spec.uuid] = (cfg, (st.name if st else "") or (spec.name if spec else ""))
    try:
        return find(named, text)
    except VolumeNotFound as err:
        raise DrToolError(str(err)) from err


def _settings(cfg: ReplicaConfig, retain: str | None, size: str | None) -> RetentionSettings:
    if retain is None and size is None:
        raise DrToolError("give --retain and/or --max (e.g. --retain 24h --max 200G; none: no "
                          "limit)")
    st = ReplicaState.load(cfg.paths.state) or ReplicaState()
    return RetentionSettings(
        st.retain_s if retain is None else parse_retain(retain, "--retain"),
        st.retain_bytes if size is None else parse_size(size, "--max"))


def main(argv: list[str] | None = None) -> int:
    p = argument_parser("appliance-dr", __doc__, config_help="the receiver's TOML config",
                        daemon=False, raw_description=True)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("state", help="print each replica's state as JSON")
    r = sub.add_parser("rollback", help="restore the last consistent image (receiver stopped)")
    r.add_argument("volume", help="volume uuid or name")
    i = sub.add_parser("invalidate", help="make the next contact a full copy (receiver stopped)")
    i.add_argument("volume", help="volume uuid or name")
    pr = sub.add_parser("promote", help="failover: make the replica's mirror a primary's image "
                                        "and fence off the old primary (receiver stopped)")
    pr.add_argument("volume", help="volume uuid or name")
    d = sub.add_parser("demote", help="make a promoted replica a DR replica again, once its "
                                      "mirror is no longer served here (receiver stopped)")
    d.add_argument("volume", help="volume uuid or name")
    rc = sub.add_parser("recover", help="write the image at a point of the retention window "
                                        "to recovered-<seq>.img beside the replica (receiver "
                                        "stopped)")
    rc.add_argument("volume", help="volume uuid or name")
    rc.add_argument("--at", required=True,
                    help="seq:<n>, or a UTC time such as 2026-12-07T05:10:00Z")
    rt = sub.add_parser("retention", help="set the retention window (receiver stopped)")
    rt.add_argument("volume", help="volume uuid or name")
    rt.add_argument("--retain", default=None, help="by age: 24h, 7d, ...; none: no limit")
    rt.add_argument("--max", default=None, help="by size: 200G, ...; none: no limit")
    ns = p.parse_args(argv)

    def act(rx: ReceiverConfig) -> int:
        try:
            found = replicas(rx)
            if ns.action == "state":
                print(json.dumps([replica_state(c, s) for c, s in found], indent=2))
                return 0
            cfg = find_volume(found, ns.volume)
            ensure_receiver_stopped(rx.control_socket, cfg)
            if ns.action == "recover":
                outcome = recover_offline(cfg, ns.at)
            elif ns.action == "retention":
                outcome = set_retention_offline(cfg, _settings(cfg, ns.retain, ns.max))
            else:
                outcome = perform(ns.action, cfg)
        except (DrToolError, ReplicaError, ReplicaStateError, RetentionSettingsError) as err:
            print(f"appliance-dr: {err}", file=sys.stderr)
            return 1
        print(json.dumps(outcome.result))
        if outcome.next_steps:
            print(outcome.next_steps, file=sys.stderr, end="")
        return 0

    # a configuration error: exit 2 (daemon_entry); a refusal or a damaged replica: exit 1
    return run("appliance-dr", ns,
               lambda: receiver_config(load_toml(ns.config), str(ns.config)), act, daemon=False)


if __name__ == "__main__":
    sys.exit(main())
