"""The adaptive ring spin: after a small batch, look at cmd_head for a while before sleeping.

At low queue depth a command's round trip is bound by latency, and much of it is the wake-up:
the kernel's event, the device thread's return from poll(2), and under software emulation
the refill of everything the handler's code needs (docs/compiled.md, "Session 14"). A host
at queue depth 1 sends its next command soon after the last completion, so the device looks
for it before going to sleep. Three rules keep that from costing what it gains:

* Only after a run of `CALM_BATCHES` batches of at most `SPIN_MAX_BATCH` commands each: deep
  queues that fill batches need no help to find their next command. Random reads at qd32
  still come one or two per batch in the VM, so they do spin; there the spinning thread takes
  a vCPU the target and the host need, and costs them 10-17 % (docs/compiled.md, "Session
  15"). That trade is why the spin is off unless the admin sets it.
* Between two looks the thread yields its CPU (sched_yield, which also releases the GIL), so
  the target's threads and the host's I/O on the same CPU are not held up by the spin.
* A spin that finds nothing makes the next ones rarer: after n misses in a row the device
  skips 2**n - 1 chances (at most `MAX_SKIP`), so an idle or sporadic device stops spinning and
  pays at most one spin in `MAX_SKIP + 1` chances. A spin that finds a command resets that.

`ring_spin_us` in the handler's configuration (docs/tcmu.md) sets the spin's length; 0 turns it
off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from time import monotonic_ns
from typing import Final

SPIN_MAX_BATCH: Final = 2
CALM_BATCHES: Final = 8
MAX_SKIP: Final = 63
# Look at the clock once per this many looks: a clock read can be a system call (the VM's
# hpet clocksource), a look at cmd_head is one load.
LOOKS_PER_CLOCK: Final = 8


class RingSpin:
    """Decides when to spin and spins; `spins` and `hits` are the device's counters."""

    def __init__(self, spin_ns: int) -> None:
        self.spin_ns = spin_ns
        self.spins = 0
        self.hits = 0
        self._calm = 0          # batches in a row of at most SPIN_MAX_BATCH commands
        self._misses = 0        # spins in a row that found nothing
        self._skip = 0          # chances to let pass before the next spin

    def batch(self, commands: int) -> None:
        """The device served a batch of `commands`: low depth is a run of small batches."""
        self._calm = self._calm + 1 if commands <= SPIN_MAX_BATCH else 0

    def wanted(self) -> bool:
        """Spin now, after a drain that served commands?"""
        if self.spin_ns <= 0 or self._calm < CALM_BATCHES:
            return False
        if self._skip:
            self._skip -= 1
            return False
        return True

    def wait(self, has_new: Callable[[], bool]) -> bool:
        """Look at `has_new()` until it is true (True) or the spin's time is up (False)."""
        self.spins += 1
        deadline = monotonic_ns() + self.spin_ns
        looks = 0
        while True:
            if has_new():
                self.hits += 1
                self._misses = 0
                return True
            looks += 1
            if looks % LOOKS_PER_CLOCK == 0 and monotonic_ns() >= deadline:
                self._misses = min(self._misses + 1, MAX_SKIP.bit_length())
                self._skip = min(MAX_SKIP, (1 << self._misses) - 1)
                return False
            os.sched_yield()
