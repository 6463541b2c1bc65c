"""Counters and rates shown through the control socket (and later the shell and metrics)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field


class RateMeter:
    """Bytes (or records) per second over a sliding window of recent samples."""

    def __init__(self, window_s: float = 5.0, clock=time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, amount: int) -> None:
        now = self._clock()
        self._samples.append((now, amount))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        if not self._samples:
            return 0.0
        return sum(a for _, a in self._samples) / self.window_s


@dataclass
class LinkStatus:
    """One replication link, as either end sees it."""

    state: str = "starting"
    state_since: float = field(default_factory=time.time)
    peer: str | None = None
    tls: str | None = None          # how the connection is encrypted (None: plain TCP)
    connects: int = 0
    disconnects: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_since = time.time()

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TransmitterCounters:
    records_sent: int = 0
    bytes_sent: int = 0             # record payload bytes (before compression)
    wire_bytes_sent: int = 0        # bytes on the wire (after compression, with framing)
    batches_sent: int = 0
    resends: int = 0                # RESEND requests honoured
    sent_seq: int = 0               # highest seq sent on the current link
    acked_seq: int = 0              # highest seq the peer made durable (persisted)
    applied_seq: int = 0            # highest seq the peer applied to its mirror
    head_seq: int = 0               # highest durable seq in the local journal we know of


@dataclass
class ReceiverVolumeCounters:
    records_received: int = 0
    bytes_received: int = 0
    duplicates: int = 0
    gaps: int = 0                   # RESEND requests sent
    rejected_batches: int = 0       # CRC/volume/generation failures
    durable_seq: int = 0
    applied_seq: int = 0
    mirror_durable_seq: int = 0
    last_applied_ns: int | None = None     # primary timestamp of the last applied record
