"""Progress of the transmitter's long tasks (resync, online verify), as status shows it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from appliance.replication.status import RateMeter


@dataclass
class ResyncProgress:
    # idle | draining | resyncing | waiting-for-writer | repairing | interrupted (link lost)
    state: str = "idle"
    since: float | None = None
    passes: int = 0
    total_bytes: int = 0
    done_bytes: int = 0                 # shipped and durable at the peer
    skipped_bytes: int = 0              # hash matched, not shipped
    completed: int = 0
    resumed: int = 0                    # times an interrupted resync went on where it stopped
    # Full copy to a peer without the history: journal records it contains, never sent.
    superseded_records: int = 0
    superseded_to_seq: int = 0
    # Failback onto the old primary's mirror: what it holds of its own beyond our base,
    # marked to copy back (its extents, rounded to our chunks).
    failback_marked_bytes: int = 0
    rate: RateMeter = field(default_factory=RateMeter, repr=False)

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "rate"}
        rate = self.rate.rate()
        left = max(0, self.total_bytes - self.done_bytes - self.skipped_bytes)
        d["bytes_per_s"] = round(rate)
        d["eta_s"] = round(left / rate, 1) if rate > 0 else None
        return d



@dataclass
class VerifyReport:
    state: str = "never-run"         # never-run | running | done | failed
    started: float | None = None
    finished: float | None = None
    region_bytes: int = 0
    regions_total: int = 0
    regions_checked: int = 0
    differing: list[int] = field(default_factory=list)   # byte offsets
    repaired: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return {**self.__dict__, "differing": list(self.differing)}
