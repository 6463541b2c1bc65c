"""Page-aligned receive buffers, reused once nothing refers to them.

A large frame's body is received straight into one of these (``inbound.Inbound``), and the
records of a BATCH stay views of it until they are on the DR mirror. Page alignment lets the
replica's journal and mirror writes go to the disk with O_DIRECT from exactly these bytes
(``appliance/direct_io.py`` asks for page-aligned addresses), with no copy into the page cache.

Anonymous ``mmap`` memory is page-aligned. Fresh memory is costly where it counts: every
first touch of a page is a fault that also zeroes it (measured here, a 64 MiB bytearray costs
0.6 s per GiB against 0.1 s to copy into memory already mapped), so buffers are kept and
refilled. A buffer is free when only the pool refers to it: a frame's payload and every view
of it (records waiting to be made durable and applied) hold a reference, and a buffer nobody
else can see may be overwritten.

The transmitter reads its journal into such buffers too (``JournalReader(buffers=...)``):
a batch's records stay views of the checked read until they are sent, and the next read
refills a buffer already mapped instead of faulting in a fresh one.
"""

from __future__ import annotations

import mmap
import sys
import threading
import time
from collections.abc import Callable

STEP = 64 * 1024            # sizes are rounded up to this, so that a buffer fits again
# A buffer referred to by its pool entry only (and getrefcount's argument) is free
# (checked by tests/unit/replication/test_buffers.py).
FREE_REFS = 2


class BufferPool:
    """Page-aligned buffers of at least the size asked, reused when free.

    At most ``max_bytes`` are kept (more are made when the pipeline holds that much, and
    dropped once released); free buffers not taken for ``idle_s`` are dropped by ``trim``
    (and by a ``take`` once that long has passed since the last trim), so an idle link gives
    its memory back. Thread-safe: the transmitter takes from worker threads, and a buffer
    seen free must not be handed to two takers."""

    def __init__(self, max_bytes: int, idle_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self._clock = clock
        self._kept: list[list] = []      # [buffer, last taken]
        self.kept_bytes = 0
        self.made = 0                    # buffers mapped (fresh memory), for tests and status
        self._lock = threading.Lock()
        self._trimmed = clock()

    def take(self, need: int) -> mmap.mmap:
        """A free buffer of ``need`` bytes or more (at most twice that), else a new one."""
        with self._lock:
            return self._take(need)

    def _take(self, need: int) -> mmap.mmap:
        now = self._clock()
        if now - self._trimmed > self.idle_s:
            self._trim(now)
        for entry in self._kept:
            if need <= len(entry[0]) <= 2 * need + STEP and _free(entry):
                entry[1] = now
                return entry[0]
        size = -(-need // STEP) * STEP
        buf = mmap.mmap(-1, size)
        self.made += 1
        if self.kept_bytes + size <= self.max_bytes:
            self._kept.append([buf, now])
            self.kept_bytes += size
        return buf

    def trim(self) -> None:
        """Drop the free buffers not taken for ``idle_s``."""
        with self._lock:
            self._trim(self._clock())

    def _trim(self, now: float) -> None:
        self._trimmed = now
        cutoff = now - self.idle_s
        keep = []
        for entry in self._kept:
            if entry[1] < cutoff and _free(entry):
                self.kept_bytes -= len(entry[0])
            else:
                keep.append(entry)
        self._kept = keep

    def clear(self) -> None:
        """Forget every buffer (those still referred to live on with their views)."""
        with self._lock:
            self._kept.clear()
            self.kept_bytes = 0


def _free(entry: list) -> bool:
    return sys.getrefcount(entry[0]) <= FREE_REFS
