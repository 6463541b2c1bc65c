"""The per-device loop: wait, drain every ring entry, execute the batch, complete with one poke.

Data never gets copied here: each iovec becomes a memoryview slice of the mapping and goes
straight to the SCSI layer (and from there to os.preadv/pwritev). The slices are released right
after completion, so a late access raises ValueError instead of touching a data page the kernel
may already have reclaimed (SIGBUS on a real device).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any, Final, Protocol

from appliance.tcmu import layout
from appliance.tcmu.io_stats import KIND_BY_OPCODE, IoStats
from appliance.tcmu.ring import CommandRing, Completion
from appliance.tcmu.spin import RingSpin
from appliance.tcmu.transport import RingTransport

log = logging.getLogger(__name__)

SAM_STAT_CHECK_CONDITION: Final = 0x02
_new_tuple = tuple.__new__
# HARDWARE ERROR / INTERNAL TARGET FAILURE: what a command gets if the executor itself fails.
_INTERNAL_FAILURE_SENSE: Final = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x44, 0x00, 0, 0, 0, 0])


class CommandExecutor(Protocol):
    """appliance.scsi.ScsiDisk satisfies this."""

    def execute(self, cmds: Sequence[Any]) -> list[Any]: ...


def _load_scsi_command_class() -> Callable[..., Any]:
    from appliance.scsi import ScsiCommand
    return ScsiCommand


# Called when a device is made without a command class. A variable, not the def itself, so
# that replacing it (the ring's unit tests run without the SCSI package) also works when this
# module is compiled: mypyc binds calls to a def at compile time (docs/compiled.md).
_scsi_command_class: Callable[[], Callable[..., Any]] = _load_scsi_command_class


@dataclass(slots=True)
class DeviceStats:
    wakeups: int = 0
    batches: int = 0
    commands: int = 0
    pokes: int = 0
    max_batch: int = 0
    unreleased_views: int = 0  # data views still referenced after completion (a SCSI-layer leak)


class TcmuDevice:
    """Serves one TCMU device: `run()` loops until `stop()` (or until the ring is broken)."""

    def __init__(self, transport: RingTransport, executor: CommandExecutor, *, name: str = "",
                 command_class: Callable[..., Any] | None = None,
                 poll_interval: float = 0.5, spin_us: int = 0) -> None:
        self.transport = transport
        self.executor = executor
        self.name = name
        self.ring = CommandRing(transport.region)
        self._make_command = command_class or _scsi_command_class()
        self._poll_interval = poll_interval
        self.spin = RingSpin(spin_us * 1000)     # spin.py: after small batches, before sleeping
        self._stop = threading.Event()
        self.stats = DeviceStats()
        self.io = IoStats()     # the status's `io`: kept across ring resets, not across opens

    def stop(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        """One line of ring state and counters (the daemon logs it on SIGUSR1)."""
        st = self.stats
        return (f"{self.ring.describe()}; wakeups {st.wakeups} batches {st.batches} "
                f"commands {st.commands} pokes {st.pokes} max_batch {st.max_batch} "
                f"spins {self.spin.spins} spin_hits {self.spin.hits}")

    def ring_status(self) -> dict:
        """The status's `ring` entry: how the device loop finds its commands (docs/tcmu.md)."""
        st, spin = self.stats, self.spin
        return {"wakeups": st.wakeups, "batches": st.batches, "commands": st.commands,
                "max_batch": st.max_batch, "spin_us": spin.spin_ns // 1000,
                "spins": spin.spins, "spin_hits": spin.hits}

    def run(self) -> None:
        # A fresh open starts at the current event count: commands may already be queued.
        served = self.process()
        spin = self.spin
        while not self._stop.is_set():
            # Only right after serving: a command the spin finds leaves its event pending, so
            # the next wait returns at once and its process() finds nothing. That round is
            # no chance to spin (it would count as one, and miss).
            if served and spin.wanted() and spin.wait(self.ring.has_new):
                served = self.process()
                continue
            if self.transport.wait(self._poll_interval):
                self.stats.wakeups += 1
            # Also on timeout: a look at cmd_head is cheap and covers a lost wake-up.
            served = self.process()

    def process(self) -> int:
        """Drain the ring until it is empty; one executor batch and one poke per round."""
        total = 0
        while True:
            requests = self.ring.fetch()
            if not requests:
                return total
            self._serve(requests)
            self.spin.batch(len(requests))
            total += len(requests)

    def restart_ring(self) -> None:
        """After action/reset_ring: forget the old cursor, start at the new cmd_tail."""
        self.ring.close()
        self.ring = CommandRing(self.transport.region)

    def close(self) -> None:
        self.ring.close()

    def _serve(self, requests: list[layout.CmdRequest]) -> None:
        fetched_ns = monotonic_ns()     # a command's latency: from here to its completion
        region = self.transport.region
        make_command = self._make_command
        kinds = KIND_BY_OPCODE
        ops, nbytes = [0, 0, 0], [0, 0, 0]     # by io_stats READ, WRITE, OTHER; added once
        views: list[memoryview] = []
        cmds = []
        for req in requests:
            iovecs = req.iovecs
            kind = kinds[req.cdb[0]]
            ops[kind] += 1
            if len(iovecs) == 1:          # the usual case: no list comprehension to run
                base, length = iovecs[0]
                bufs = [region[base: base + length]]
                nbytes[kind] += length
            else:
                bufs = [region[base: base + length] for base, length in iovecs]
                nbytes[kind] += sum(length for _, length in iovecs)
            views += bufs
            if req.bidi_count:
                split = len(bufs) - req.bidi_count
                cmds.append(make_command(req.cdb, bufs[:split], bufs[split:]))
            else:
                cmds.append(make_command(req.cdb, bufs))
        try:
            results = self.executor.execute(cmds)
            if len(results) != len(cmds):
                raise RuntimeError(f"executor returned {len(results)} results for "
                                   f"{len(cmds)} commands")
        except Exception:
            log.exception("device %s: executor failed; failing %d commands with HARDWARE ERROR",
                          self.name, len(cmds))
            results = [None] * len(cmds)
        completions = []
        for req, cmd, result in zip(requests, cmds, results, strict=True):
            # Plain GOOD, nearly every command, needs none of _completion's checks.
            try:
                plain_good = result.status == 0 and result.read_len is None
            except AttributeError:      # None (executor failed) or an unusable result
                plain_good = False
            # Completion(req.cmd_id, 0), without the NamedTuple's generated __new__ (whose
            # frame stays interpreted code even when this module is compiled).
            completions.append(_new_tuple(Completion, (req.cmd_id, 0, b"", None)) if plain_good
                               else self._safe_completion(req, cmd, result))
        self.ring.complete(completions)
        # The kernel frees the data blocks only when it handles the poke below; release first so
        # a late access fails loudly (ValueError) instead of hitting a reclaimed page (SIGBUS).
        for view in views:
            try:
                view.release()
            except BufferError:  # someone made a memoryview *of* this view and still holds it
                self.stats.unreleased_views += 1
        stats = self.stats
        stats.batches += 1
        stats.pokes += 1
        stats.commands += len(requests)
        if len(requests) > stats.max_batch:
            stats.max_batch = len(requests)
        # Counted once the completions are in the ring (a batch lost to a ring reset comes back
        # BUSY, is retried and counted then) and before the poke: whoever has seen a command
        # complete finds it in the status.
        self.io.add_batch(ops, nbytes, len(requests), monotonic_ns() - fetched_ns)
        self.transport.poke()

    def _safe_completion(self, req: layout.CmdRequest, cmd: Any, result: Any) -> Completion:
        """Every fetched command gets completed, whatever the executor handed back."""
        if result is not None:
            try:
                return self._completion(req, cmd, result)
            except Exception:
                log.exception("device %s: unusable result %r for cmd %d", self.name, result,
                              req.cmd_id)
        return Completion(req.cmd_id, SAM_STAT_CHECK_CONDITION, _INTERNAL_FAILURE_SENSE)

    def _completion(self, req: layout.CmdRequest, cmd: Any, result: Any) -> Completion:
        status = int(result.status)
        if not 0 <= status <= 0xFF:
            raise ValueError(f"SAM status {status} does not fit a byte")
        sense = (bytes(result.sense[: layout.SENSE_BUFFERSIZE])
                 if status == SAM_STAT_CHECK_CONDITION else b"")
        read_len = result.read_len
        if read_len is not None:
            data_in = cmd.bidi_in if req.bidi_count else cmd.data
            total = sum(len(buf) for buf in data_in)
            if read_len >= total:
                read_len = None
            elif read_len == 0 or not self.ring.read_len_ok:
                # The kernel treats read_len 0 as "everything", and without CAP_READ_LEN it always
                # copies the whole buffer: zero what is not valid so no stale bytes leak out.
                _zero_from(data_in, read_len)
                read_len = None
        return Completion(req.cmd_id, status, sense, read_len)


def _zero_from(bufs: Sequence[memoryview], start: int) -> None:
    pos = 0
    for buf in bufs:
        end = pos + len(buf)
        if end > start:
            cut = max(0, start - pos)
            buf[cut:] = bytes(len(buf) - cut)
        pos = end
