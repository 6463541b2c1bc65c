"""The transmitter's status: derived from what the primary holds that the peer has not made
durable, "in sync" only when that is nothing (docs/protocol.md, "What status derives from")."""

from __future__ import annotations

import time

from appliance.replication.config import TransmitterConfig
from appliance.replication.primary.shared import TxShared
from appliance.replication.primary.volume_watch import LOGGING_TO_BITMAP, OldestUnacked, VolumeView

# What the DR needs to say truthfully whether it is behind (the PRIMARY_STATE frame).
PRIMARY_REPORT_FIELDS = ("head_seq", "acked_seq", "volume_state", "dirty_bytes",
                         "logging_since", "lag_records", "lag_bytes", "recovery_point_age_s",
                         "behind_reason")


def transmitter_status(cfg: TransmitterConfig, shared: TxShared, view: VolumeView,
                       oldest_unacked: OldestUnacked, *, connected: bool) -> dict:
    counters = shared.counters
    inflight_bytes = shared.inflight.bytes()
    head = max(counters.head_seq, view.head_seq)
    lag_records = max(0, head - counters.acked_seq)
    lag_bytes: int | None = None        # unknown while the volume cannot be read
    if view.error is None:
        journal_bytes = view.backlog_bytes if lag_records else 0
        lag_bytes = max(inflight_bytes, journal_bytes) + view.dirty_bytes
    behind = behind_reason(shared, view, lag_records)
    age = recovery_point_age(shared, view, oldest_unacked, lag_records)
    return {
        "role": "transmitter", "identity": cfg.identity, "name": cfg.name,
        "volume_uuid": str(cfg.volume_uuid), "peer": "{}:{}".format(*cfg.peer),
        "peer_name": cfg.peer_name or None,
        "size_bytes": shared.volume_bytes,
        "link": shared.link_status.as_dict(), **counters.__dict__, "head_seq": head,
        "in_sync": behind is None, "behind_reason": behind,
        "volume_state": view.volume_state, "dirty_bytes": view.dirty_bytes,
        "logging_since": view.logging_since,
        "mirror": shared.files.mirror if shared.files else None,
        "bitmap": shared.files.bitmap if shared.files else None,
        "resync_blocked": resync_blocked(shared, view, connected=connected),
        "lag_records": lag_records, "lag_bytes": lag_bytes,
        "lag_bytes_in_flight": inflight_bytes,
        "recovery_point_age_s": age, "lag_seconds": age,
        "throughput_bytes_per_s": round(shared.rate.rate()),
        # The admin's steering: shipping paused, pacing in effect (config, then 'set'), and
        # a discard whose regions a resync has not shipped yet.
        "paused": shared.paused, **shared.pacing.as_dict(),
        "needs_resync": shared.discard is not None,
        "discarded": shared.discard.as_dict() if shared.discard is not None else None,
        "resync": shared.resync.as_dict(),
        "verify": shared.verify.as_dict(),
        # The events of the synchronous modes with the volume's handler (None before run).
        "handler_events": shared.handler.as_dict() if shared.handler is not None else None,
        "lost_writes": shared.lost_writes,
    }


def behind_reason(shared: TxShared, view: VolumeView, lag_records: int) -> str | None:
    """Why the peer may lack writes the primary holds; None only when it lacks none."""
    reason = _behind(shared, view, lag_records)
    if reason is not None and shared.paused:
        return f"shipping is paused by the admin (resume ships it): {reason}"
    return reason


def _behind(shared: TxShared, view: VolumeView, lag_records: int) -> str | None:
    state = shared.link_status.state
    if view.error is not None:
        return f"the volume's files cannot be read: {view.error}"
    if view.volume_state == LOGGING_TO_BITMAP or view.dirty_bytes:
        why = (f"; {shared.discard.records} journal records were discarded by the admin, so "
               f"a resync must ship their regions" if shared.discard is not None else "")
        return (f"{view.dirty_bytes} bytes of dirty regions (logging to the bitmap) are not "
                f"at the peer yet{why}")
    if shared.discard is not None:
        return (f"{shared.discard.records} journal records were discarded by the admin: the "
                f"peer lacks them until a resync has shipped their regions")
    if lag_records:
        return f"{lag_records} journal records are not acknowledged by the peer yet"
    if shared.inflight:
        return "records in flight"
    if state != "replicating" and not (state.startswith("paused:") and connected(shared)):
        return f"the link is not replicating (state {state})"
    if shared.resync.state != "idle":
        return f"resync {shared.resync.state}"
    return None


def resync_blocked(shared: TxShared, view: VolumeView, *, connected: bool) -> str | None:
    """Why dirty regions (or a copy the peer asked for) cannot be shipped now; None when
    they can, or there are none."""
    link = shared.link_status
    if (view.volume_state != LOGGING_TO_BITMAP and not view.dirty_bytes
            and not shared.peer_needs_resync):
        return None
    if shared.files is None:
        return shared.files_problem or (
            "cannot resync: the volume's journal names no mirror and bitmap (written by a "
            "handler older than that); restart appliance-handler so it names them")
    if link.state.startswith("refused"):
        return f"the peer refuses this volume ({link.state}): {link.last_error}"
    if shared.paused:
        return "shipping is paused by the admin (resume ships the dirty regions)"
    if view.journal_paused and not shared.peer_needs_resync:
        return ("journaling is paused by the admin: the DR keeps its consistent image until "
                "'resume what=journal' (then the dirty regions are shipped)")
    if not connected:
        last = f"; last error: {link.last_error}" if link.last_error else ""
        return f"waiting for the link to the peer (state {link.state}{last})"
    return None


def connected(shared: TxShared) -> bool:
    """A link that holds shipping (paused:*) is up: only a session sets those states."""
    return shared.link_status.connects > shared.link_status.disconnects


def recovery_point_age(shared: TxShared, view: VolumeView, oldest_unacked: OldestUnacked,
                       lag_records: int) -> float | None:
    """Seconds since the oldest write the peer has not made durable (0: none). While regions
    are dirty, since logging to the bitmap began (None if that time is unknown)."""
    now = time.time()
    ages = []
    if view.volume_state == LOGGING_TO_BITMAP or view.dirty_bytes:
        if view.logging_since is None:
            return None
        ages.append(now - view.logging_since)
    if (oldest_ns := shared.inflight.oldest_timestamp_ns()) is not None:
        ages.append(now - oldest_ns / 1e9)
    if lag_records and (seen := oldest_unacked.since()) is not None:
        ages.append(now - seen)
    return round(max(0.0, *ages), 3) if ages else 0.0
