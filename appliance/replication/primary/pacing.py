"""Batch sizing on the transmitter: a batch holds at most a short slice of link time.

The receiver can verify and commit a BATCH only once all of it has arrived, so the first
record of a batch waits for the whole batch to cross the link. On loopback or a LAN a 1 MiB
batch crosses in well under a millisecond; on a thin WAN (100 Mbit/s) it takes 84 ms, and
that wait adds to the lag of every record in it. ``AckRate`` measures how fast the peer
acknowledges data (what the path and the receiver really carry); ``batch_limit`` caps a batch
at ``BATCH_LINK_TIME_S`` of that rate, between ``MIN_BATCH_BYTES`` and the configured
``batch_bytes``. A fast link keeps full batches (fewer frames, fewer fdatasyncs on the peer).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

BATCH_LINK_TIME_S = 0.02
MIN_BATCH_BYTES = 64 * 1024


class AckRate:
    """Acknowledged data bytes per second over the last ``window_s`` (O(1) per sample)."""

    def __init__(self, window_s: float = 1.0, min_span_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._clock = clock
        self._total = 0
        self._marks: deque[tuple[float, int]] = deque()   # (time, total acked before it)

    def add(self, nbytes: int) -> None:
        now = self._clock()
        self._marks.append((now, self._total))
        self._total += nbytes
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._marks and self._marks[0][0] < now - self.window_s:
            self._marks.popleft()

    def rate(self) -> float | None:
        """Bytes/s over the ACKs of the last window, or None when they span less than
        ``min_span_s`` (just started, or idle for a while: not enough to judge)."""
        now = self._clock()
        self._trim(now)
        if not self._marks or now - self._marks[0][0] < self.min_span_s:
            return None
        t0, before = self._marks[0]
        return (self._total - before) / (now - t0)


def batch_limit(configured: int, ack_rate: float | None) -> int:
    """Bytes per batch: ``configured``, cut to BATCH_LINK_TIME_S of the acknowledged rate."""
    if ack_rate is None:
        return configured
    return max(min(MIN_BATCH_BYTES, configured),
               min(configured, int(ack_rate * BATCH_LINK_TIME_S)))
