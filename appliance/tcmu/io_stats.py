"""Per-volume I/O counters of the handler: ops and bytes by kind, and a command-latency histogram.

The device thread adds one batch at a time (`add_batch`); the control socket's thread reads
`snapshot()`. There is one writer at a time (the device's loop, or after it stopped the thread
that removes it), so the writer takes no lock: it makes a generation count odd while it adds a
batch and even again after, and a reader copies the counters until it saw the same even
generation before and after its copy (a sequence lock). A snapshot therefore never shows half a
batch: latency_count always equals the sum of latency_counts, and every counter only grows
(the exporter publishes them as Prometheus counters). A lock round per batch cost the device
thread a clock read: CPython 3.11 reads the monotonic clock on every lock acquire, a system
call under the appliance VM's hpet clocksource (docs/compiled.md, "Session 13").

Opcodes are SBC-4's (T10 SBC-4 r22, table 33 "Commands for direct access block devices"); the
SCSI layer serves the same ones (appliance/scsi/rw.py, disk.py).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Final

READ, WRITE, OTHER = 0, 1, 2

# READ (6), (10), (12), (16)
READ_OPCODES: Final = (0x08, 0x28, 0xA8, 0x88)
WRITE_OPCODES: Final = (
    0x0A, 0x2A, 0xAA, 0x8A,     # WRITE (6), (10), (12), (16)
    0x2E, 0xAE, 0x8E,           # WRITE AND VERIFY (10), (12), (16)
    0x41, 0x93,                 # WRITE SAME (10), (16)
    0x42,                       # UNMAP
    0x89,                       # COMPARE AND WRITE
    0x9C,                       # WRITE ATOMIC (16): not served (ILLEGAL REQUEST), still a write
)

# Upper bounds (seconds) of the latency buckets; a command taking exactly a bound counts in
# that bucket (Prometheus `le`). One more bucket holds everything above the last bound.
LATENCY_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BOUNDS_NS: Final = tuple(round(bound * 1e9) for bound in LATENCY_BOUNDS_S)


def _kind_table() -> tuple[int, ...]:
    table = [OTHER] * 256
    for op in READ_OPCODES:
        table[op] = READ
    for op in WRITE_OPCODES:
        table[op] = WRITE
    return tuple(table)


# Indexed by the CDB's first byte: the device loop's per-command classification is one lookup.
KIND_BY_OPCODE: Final = _kind_table()


def classify(cdb: bytes) -> int:
    """READ, WRITE or OTHER for a command's CDB."""
    return KIND_BY_OPCODE[cdb[0]]


def latency_bucket(elapsed_ns: int) -> int:
    """Index into latency_counts for a service time (len(LATENCY_BOUNDS_S) = above them all)."""
    return bisect_left(_BOUNDS_NS, elapsed_ns)


class IoStats:
    """One device's counters, from the moment it was opened (a ring reset keeps them)."""

    __slots__ = ("_gen", "_ops", "_bytes", "_buckets", "_sum_ns", "_count")

    def __init__(self) -> None:
        self._gen = 0                   # odd while add_batch changes the counters
        self._ops = [0, 0, 0]           # by READ, WRITE, OTHER
        self._bytes = [0, 0, 0]
        self._buckets = [0] * (len(_BOUNDS_NS) + 1)
        self._sum_ns = 0
        self._count = 0

    def add_batch(self, ops: list[int], nbytes: list[int], commands: int,
                  elapsed_ns: int) -> None:
        """A served batch: ops and bytes by kind, and `commands` commands that each took the
        batch's service time `elapsed_ns` (fetch to completion posted)."""
        bucket = bisect_left(_BOUNDS_NS, elapsed_ns)
        self._gen += 1
        total_ops, total_bytes = self._ops, self._bytes
        total_ops[0] += ops[0]
        total_ops[1] += ops[1]
        total_ops[2] += ops[2]
        total_bytes[0] += nbytes[0]
        total_bytes[1] += nbytes[1]
        self._buckets[bucket] += commands
        self._sum_ns += elapsed_ns * commands
        self._count += commands
        self._gen += 1

    def snapshot(self) -> dict:
        """The `io` entry of the handler's status (docs/tcmu.md, "I/O counters")."""
        while True:
            gen = self._gen
            ops, nbytes = list(self._ops), list(self._bytes)
            buckets, sum_ns, count = list(self._buckets), self._sum_ns, self._count
            if gen % 2 == 0 and self._gen == gen:
                break
            time.sleep(0)   # the writer is inside add_batch: let it finish (it holds no lock)
        return {"read_ops": ops[READ], "read_bytes": nbytes[READ],
                "write_ops": ops[WRITE], "write_bytes": nbytes[WRITE],
                "other_ops": ops[OTHER],
                "latency_bounds_s": list(LATENCY_BOUNDS_S),
                "latency_counts": buckets,
                "latency_sum_s": sum_ns / 1e9, "latency_count": count}
