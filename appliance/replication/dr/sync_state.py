"""Whether a DR replica is in sync with its primary, as the DR's status says it.

A replica alone cannot know what its primary holds: writes may wait in the primary's journal
or in its dirty-region bitmap, or the primary may not be connected at all. The transmitter
therefore reports its side in PRIMARY_STATE frames, and the DR says "in sync" only while a
live link's latest report shows nothing the replica lacks (docs/protocol.md, "What status
derives from"). Anything unknown is reported as unknown, never as zero lag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


class BadReport(ValueError):
    """A PRIMARY_STATE payload that is not what the protocol says."""


@dataclass(frozen=True, slots=True)
class PrimaryReport:
    head_seq: int               # newest seq durable in the primary's journal
    volume_state: str           # journaling | logging-to-bitmap | unknown
    dirty_bytes: int            # bytes of dirty regions not at the peer yet
    lag_bytes: int | None       # journal bytes not acknowledged + dirty bytes (None: unknown)
    logging_since: float | None
    recovery_point_age_s: float | None
    received_at: float          # time.monotonic() on arrival
    behind_reason: str | None = None    # the primary's own words for why the DR is behind

    @classmethod
    def from_dict(cls, d: object, received_at: float) -> PrimaryReport:
        if not isinstance(d, dict):
            raise BadReport("PRIMARY_STATE must be a JSON object")

        def number(key: str, typ: type | tuple[type, ...], optional: bool = False):
            value = d.get(key)
            if value is None and optional:
                return None
            if isinstance(value, bool) or not isinstance(value, typ):
                raise BadReport(f"PRIMARY_STATE field {key!r} is {value!r}")
            return value

        def text(key: str) -> str | None:
            value = d.get(key)
            if value is not None and not isinstance(value, str):
                raise BadReport(f"PRIMARY_STATE field {key!r} is {value!r}")
            return value

        state = d.get("volume_state")
        if not isinstance(state, str):
            raise BadReport(f"PRIMARY_STATE field 'volume_state' is {state!r}")
        return cls(head_seq=number("head_seq", int), volume_state=state,
                   dirty_bytes=number("dirty_bytes", int), lag_bytes=number("lag_bytes", int, True),
                   logging_since=number("logging_since", (int, float), True),
                   recovery_point_age_s=number("recovery_point_age_s", (int, float), True),
                   received_at=received_at, behind_reason=text("behind_reason"))

    def as_dict(self) -> dict:
        return {"head_seq": self.head_seq, "volume_state": self.volume_state,
                "dirty_bytes": self.dirty_bytes, "lag_bytes": self.lag_bytes,
                "logging_since": self.logging_since,
                "recovery_point_age_s": self.recovery_point_age_s,
                "behind_reason": self.behind_reason,
                "age_s": round(time.monotonic() - self.received_at, 3)}


def dr_sync_status(replica: dict, link_state: str, link_since: float,
                   report: PrimaryReport | None, stale_after_s: float) -> dict:
    """``in_sync``, ``behind_reason``, ``lag_records``, ``lag_bytes`` (None: unknown) and the
    primary's last report, from the replica's own status and what the primary reported."""
    applied = replica["applied_seq"]
    lag_records = replica["durable_seq"] - applied
    fresh = (link_state == "connected" and report is not None
             and time.monotonic() - report.received_at <= stale_after_s)
    lag_bytes: int | None = None
    if report is not None:
        lag_records = max(lag_records, report.head_seq - applied)
    if fresh and report is not None:
        lag_bytes = report.lag_bytes
    reason: str | None = None
    if replica["state"] == "promoted":
        reason = "promoted: this copy is served as a primary and takes no replication"
    elif replica["state"] == "inconsistent":
        reason = "inconsistent: a resync is under way (rollback gives the last consistent image)"
    elif link_state != "connected":
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link_since))
        reason = (f"no primary connected (link {link_state} since {since}): the primary may "
                  f"hold writes this copy lacks")
    elif report is None:
        reason = "waiting for the primary's first state report"
    elif not fresh:
        reason = (f"the primary's last state report is {time.monotonic() - report.received_at:.0f}"
                  f" s old")
    elif report.dirty_bytes or report.volume_state != "journaling":
        reason = (f"the primary holds {report.dirty_bytes} bytes of dirty regions "
                  f"({report.volume_state}) not shipped here yet")
    elif lag_records > 0:
        reason = f"{lag_records} records the primary holds are not applied here yet"
    if reason is not None and fresh and report is not None and report.behind_reason:
        reason += f" (the primary says: {report.behind_reason})"
    return {"in_sync": reason is None, "behind_reason": reason, "lag_records": lag_records,
            "lag_bytes": 0 if reason is None else lag_bytes,
            "primary_report": report.as_dict() if report is not None else None}
