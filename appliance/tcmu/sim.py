"""A userspace simulation of the kernel side of a TCMU device (target_core_user.c, Linux 6.1).

The simulation owns a directory holding
  region  the shared file, laid out exactly like the UIO map (mailbox, ring, data area),
  event   a FIFO the "kernel" writes 4-byte event counts to (the handler reads it, as /dev/uioN),
  poke    a FIFO the handler writes 4 bytes to (as it writes /dev/uioN to call tcmu_irqcontrol).
The handler side attaches with `SimUio` (see sim_uio.py), from this process or another one, so
the handler can be killed and restarted while the simulated kernel keeps its state.

Kernel rules reproduced: head/tail arithmetic with the one unused byte (spc_free), PAD entries
when an entry would not fit before the end of the ring, entries larger than half the ring
rejected, lowest-free cmd_id in 1..0xFFFF, first-fit data blocks with contiguous blocks merged
into one iovec, data pages zeroed only on first use (freed blocks are poisoned here so stale-data
bugs show), completions parsed like tcmu_handle_completions (PAD/TMR passed, the command found by
the slot's cmd_id, an unknown id breaks the ring), READ_LEN, UNKNOWN_OP, block_dev, reset_ring.
"""

from __future__ import annotations

import contextlib
import heapq
import mmap
import os
import select
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.tcmu import layout

SAM_STAT_GOOD = 0x00
SAM_STAT_CHECK_CONDITION = 0x02
SAM_STAT_BUSY = 0x08

PAGE_SIZE = mmap.PAGESIZE
POISON = 0xA5


class SimError(RuntimeError):
    """Base class of the simulation's errors."""


class RingFull(SimError):
    """No room in the ring or the data area; complete something and retry (the kernel's qfull)."""


class RingBroken(SimError):
    """The handler completed an unknown cmd_id; the kernel would now fail every command."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    ring_bytes: int = 1 << 20        # mailbox + ring (the kernel's cmd_ring_size_mb)
    data_blocks: int = 1024          # data area blocks
    block_size: int = PAGE_SIZE      # data_pages_per_blk * PAGE_SIZE

    def __post_init__(self) -> None:
        if self.ring_bytes % PAGE_SIZE or self.block_size % PAGE_SIZE:
            raise ValueError("ring_bytes and block_size must be multiples of the page size")

    @property
    def region_size(self) -> int:
        return self.ring_bytes + self.data_blocks * self.block_size


@dataclass(slots=True)
class SimResult:
    """What the initiator would see for one command."""

    status: int
    sense: bytes = b""
    data_in: bytes = b""
    unknown_op: bool = False


@dataclass(slots=True)
class _Pending:
    ticket: int
    blocks: list[int]
    data_in_iovecs: list[tuple[int, int]]
    data_in_len: int
    queued_at: float = field(default_factory=time.monotonic)
    expired: bool = False


class SimKernel:
    """The kernel side of one simulated TCMU device."""

    def __init__(self, directory: Path, config: SimConfig = SimConfig()) -> None:
        self.dir = Path(directory)
        self.config = config
        self.dir.mkdir(parents=True, exist_ok=True)
        for fifo in ("event", "poke"):
            path = self.dir / fifo
            if not path.exists():
                os.mkfifo(path, 0o600)
        region_path = self.dir / "region"
        self._region_fd = os.open(region_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._region_fd, config.region_size)
        self._mm = mmap.mmap(self._region_fd, config.region_size)
        self.region = memoryview(self._mm)
        self.cmdr_off = layout.MAILBOX_SIZE
        self.cmdr_size = config.ring_bytes - layout.MAILBOX_SIZE
        self.data_off = config.ring_bytes
        layout.write_mailbox(self.region, cmdr_off=self.cmdr_off, cmdr_size=self.cmdr_size)
        self._words = self.region[: layout.MAILBOX_SIZE].cast("I")
        # O_RDWR on a FIFO never blocks and keeps it open for the other side across restarts.
        self._event_fd = os.open(self.dir / "event", os.O_RDWR | os.O_NONBLOCK)
        self._poke_fd = os.open(self.dir / "poke", os.O_RDWR | os.O_NONBLOCK)
        self._event_count = 0
        self._plugged = 0
        self._notify_due = False
        self._last_cleaned = 0
        self._free_blocks = list(range(config.data_blocks))  # heap: lowest index first
        self._touched = [False] * config.data_blocks
        self._pending: dict[int, _Pending] = {}
        self._free_ids: list[int] = []  # heap of released cmd_ids below _next_id
        self._next_id = 1
        self._next_ticket = 1
        self.results: dict[int, SimResult] = {}
        self.blocked = False
        self.broken = False
        self.late_completions = 0  # completions of commands the kernel had already timed out
        self.guard: Callable[[int, int, bool], None] | None = None

    # ---- helpers for the handler side and tests ----

    @property
    def cmd_head(self) -> int:
        return self._words[layout.MB_CMD_HEAD // 4]

    @property
    def cmd_tail(self) -> int:
        return self._words[layout.MB_CMD_TAIL // 4]

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._words.release()
        self.region.release()
        self._mm.close()
        for fd in (self._region_fd, self._event_fd, self._poke_fd):
            os.close(fd)

    # ---- submission (queue_cmd_ring) ----

    @contextlib.contextmanager
    def plugged(self) -> Iterator[None]:
        """Queue several commands with one notification, as the core's plug/unplug does."""
        self._plugged += 1
        try:
            yield
        finally:
            self._plugged -= 1
            if not self._plugged and self._notify_due:
                self._notify()

    def submit(self, cdb: bytes, data_out: bytes | memoryview = b"", data_in_len: int = 0) -> int:
        """Queue one SCSI command; returns a ticket for `results`. Raises RingFull."""
        ticket = self._next_ticket
        self._next_ticket += 1
        if self.blocked or self.broken:
            # block_dev answers TCM_LUN_BUSY; a broken ring fails with LUN COMMUNICATION FAILURE
            self.results[ticket] = SimResult(SAM_STAT_BUSY if self.blocked else
                                             SAM_STAT_CHECK_CONDITION)
            return ticket
        cdb_len = layout.scsi_command_size(bytes(cdb[:8]).ljust(8, b"\0"))
        cdb = bytes(cdb[:cdb_len]).ljust(cdb_len, b"\0")
        bs = self.config.block_size
        out_blocks = -(-len(data_out) // bs)
        in_blocks = -(-data_in_len // bs)
        if out_blocks + in_blocks > self.config.data_blocks:
            self.results[ticket] = _invalid_field_in_cdb()
            return ticket
        if out_blocks + in_blocks > len(self._free_blocks):
            raise RingFull("data area full")
        blocks = self._alloc_blocks(out_blocks + in_blocks)
        out_iovecs = self._iovecs(blocks[:out_blocks], len(data_out))
        in_iovecs = self._iovecs(blocks[out_blocks:], data_in_len)
        entry_len = layout.cmd_entry_size(len(out_iovecs) + len(in_iovecs), cdb_len)
        if entry_len > self.cmdr_size // 2:
            self._free(blocks)
            self.results[ticket] = _invalid_field_in_cdb()
            return ticket
        head = self.cmd_head
        to_end = self.cmdr_size - head
        needed = entry_len if to_end >= entry_len else entry_len + to_end
        if self._space_free(head) < needed:
            self._free(blocks)
            raise RingFull("command ring full")
        try:
            cmd_id = self._alloc_cmd_id()
        except RingFull:
            self._free(blocks)
            raise
        self._scatter(out_iovecs, data_out)
        if to_end < entry_len:
            layout.write_header(self.region, self.cmdr_off + head, length=to_end, op=layout.OP_PAD)
            head = 0
        iovecs = out_iovecs + in_iovecs if data_out and data_in_len else out_iovecs or in_iovecs
        layout.write_cmd_request(self.region, self.cmdr_off + head, cmd_id=cmd_id, cdb=cdb,
                                 iovecs=iovecs,
                                 bidi_count=len(in_iovecs) if data_out and data_in_len else 0)
        self._pending[cmd_id] = _Pending(ticket, blocks, in_iovecs, data_in_len)
        self._publish_head((head + entry_len) % self.cmdr_size)
        return ticket

    def queue_tmr(self, tmr_type: int, cmd_ids: list[int]) -> None:
        """Queue a TMR notification entry (attrib/tmr_notification=1)."""
        length = layout.tmr_entry_size(len(cmd_ids))
        head = self.cmd_head
        to_end = self.cmdr_size - head
        needed = length if to_end >= length else length + to_end
        if self._space_free(head) < needed:
            raise RingFull("command ring full")
        if to_end < length:
            layout.write_header(self.region, self.cmdr_off + head, length=to_end, op=layout.OP_PAD)
            head = 0
        layout.write_tmr(self.region, self.cmdr_off + head, tmr_type=tmr_type, cmd_ids=cmd_ids)
        self._publish_head((head + length) % self.cmdr_size)

    def time_out(self, ticket: int) -> None:
        """attrib/cmd_time_out expiry (tcmu_check_expired_ring_cmd): the initiator gets CHECK
        CONDITION / LOGICAL UNIT COMMUNICATION FAILURE now; the entry and its data blocks stay
        until the handler completes it, which then only frees them."""
        pending = self._pending[self.cmd_id_of(ticket)]
        pending.expired = True
        sense = bytearray(18)
        sense[0], sense[2], sense[7], sense[12] = 0x70, 0x02, 0x0A, 0x08
        self.results[ticket] = SimResult(SAM_STAT_CHECK_CONDITION, bytes(sense))

    def cmd_id_of(self, ticket: int) -> int:
        for cmd_id, pending in self._pending.items():
            if pending.ticket == ticket:
                return cmd_id
        raise KeyError(f"ticket {ticket} is not outstanding")

    # ---- completion (tcmu_irqcontrol → tcmu_handle_completions) ----

    def process_pokes(self, timeout: float) -> bool:
        """Wait up to `timeout` for a poke, then reap completions. True if poked."""
        ready, _, _ = select.select([self._poke_fd], [], [], timeout)
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._poke_fd, 4096):
                pass
        self.handle_completions()
        return True

    def handle_completions(self) -> int:
        if self.broken:
            return 0
        done = 0
        tail = self.cmd_tail
        while self._last_cleaned != tail:
            off = self.cmdr_off + self._last_cleaned
            hdr = layout.read_header(self.region, off)
            if hdr.op in (layout.OP_PAD, layout.OP_TMR):
                self._last_cleaned = (self._last_cleaned + hdr.length) % self.cmdr_size
                continue
            pending = self._pending.pop(hdr.cmd_id, None)
            if pending is None:
                self.broken = True
                raise RingBroken(f"cmd_id {hdr.cmd_id} not found at ring offset "
                                 f"{self._last_cleaned}, ring is broken")
            if pending.expired:
                self.late_completions += 1
            else:
                self.results[pending.ticket] = self._result_of(off, hdr, pending)
            self._free(pending.blocks)
            self._release_cmd_id(hdr.cmd_id)
            self._last_cleaned = (self._last_cleaned + hdr.length) % self.cmdr_size
            done += 1
        return done

    def wait_for(self, tickets: list[int] | range, timeout: float = 10.0) -> list[SimResult]:
        """Reap completions until every ticket has a result; TimeoutError names the missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [ticket for ticket in tickets if ticket not in self.results]
            if not missing:
                return [self.results[ticket] for ticket in tickets]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(missing)} commands never completed (first ticket "
                                   f"{missing[0]}; head={self.cmd_head} tail={self.cmd_tail})")
            self.process_pokes(min(left, 0.5))

    # ---- configfs actions ----

    def block_dev(self, blocked: bool) -> None:
        if blocked:
            self.handle_completions()
        self.blocked = blocked

    def reset_ring(self, mode: int = 1) -> None:
        """action/reset_ring: fail every ring command (1 = BUSY, 2 = CHECK CONDITION)."""
        status = SAM_STAT_BUSY if mode == 1 else SAM_STAT_CHECK_CONDITION
        for cmd_id, pending in self._pending.items():
            if not pending.expired:
                self.results[pending.ticket] = SimResult(status)
            self._free(pending.blocks)
            self._release_cmd_id(cmd_id)
        self._pending.clear()
        self._words[layout.MB_CMD_TAIL // 4] = 0
        self._words[layout.MB_CMD_HEAD // 4] = 0
        self._last_cleaned = 0
        self.broken = False

    # ---- internals ----

    def _space_free(self, head: int) -> int:
        used = (head - self._last_cleaned) % self.cmdr_size
        return self.cmdr_size - used - 1

    def _publish_head(self, head: int) -> None:
        self._words[layout.MB_CMD_HEAD // 4] = head
        if self._plugged:
            self._notify_due = True
        else:
            self._notify()

    def _notify(self) -> None:
        self._notify_due = False
        self._event_count = (self._event_count + 1) & 0x7FFFFFFF
        with contextlib.suppress(BlockingIOError):  # FIFO full: a wake-up is already pending
            os.write(self._event_fd, struct.pack("<i", self._event_count))

    def _alloc_cmd_id(self) -> int:
        """Lowest free id in 1..0xFFFF, as xa_alloc(XA_LIMIT(1, 0xffff)) gives."""
        if self._free_ids:
            return heapq.heappop(self._free_ids)
        if self._next_id > 0xFFFF:
            raise RingFull("all 65535 command ids in use")
        self._next_id += 1
        return self._next_id - 1

    def _release_cmd_id(self, cmd_id: int) -> None:
        heapq.heappush(self._free_ids, cmd_id)

    def _alloc_blocks(self, count: int) -> list[int]:
        """First fit, lowest block first (find_first_zero_bit on the data bitmap)."""
        blocks = [heapq.heappop(self._free_blocks) for _ in range(count)]
        bs = self.config.block_size
        for dbi in blocks:
            if not self._touched[dbi]:  # alloc_page(__GFP_ZERO) happens only on first use
                off = self.data_off + dbi * bs
                self.region[off: off + bs] = bytes(bs)
                self._touched[dbi] = True
            if self.guard:
                self.guard(self.data_off + dbi * bs, bs, True)
        return blocks

    def _free(self, blocks: list[int]) -> None:
        bs = self.config.block_size
        for dbi in blocks:
            off = self.data_off + dbi * bs
            if self.guard:
                self.guard(off, bs, False)
            self.region[off: off + bs] = bytes([POISON]) * bs
            heapq.heappush(self._free_blocks, dbi)

    def _iovecs(self, blocks: list[int], length: int) -> list[tuple[int, int]]:
        """new_block_to_iov: one iovec per run of contiguous blocks."""
        iovecs: list[tuple[int, int]] = []
        bs = self.config.block_size
        prev = -2
        for dbi in blocks:
            chunk = min(bs, length)
            length -= chunk
            if dbi == prev + 1:
                base, size = iovecs[-1]
                iovecs[-1] = (base, size + chunk)
            else:
                iovecs.append((self.data_off + dbi * bs, chunk))
            prev = dbi
        return iovecs

    def _scatter(self, iovecs: list[tuple[int, int]], data: bytes | memoryview) -> None:
        pos = 0
        for base, length in iovecs:
            self.region[base: base + length] = data[pos: pos + length]
            pos += length

    def _result_of(self, off: int, hdr: layout.EntryHeader, pending: _Pending) -> SimResult:
        if hdr.uflags & layout.UFLAG_UNKNOWN_OP:
            return SimResult(SAM_STAT_CHECK_CONDITION, unknown_op=True)
        status, sense, read_len = layout.read_response(self.region, off)
        want = pending.data_in_len
        if hdr.uflags & layout.UFLAG_READ_LEN and read_len:
            want = min(read_len, want)
        chunks = []
        for base, length in pending.data_in_iovecs:
            take = min(length, want)
            chunks.append(bytes(self.region[base: base + take]))
            want -= take
        return SimResult(status, sense if status == SAM_STAT_CHECK_CONDITION else b"",
                         b"".join(chunks))


def _invalid_field_in_cdb() -> SimResult:
    sense = bytearray(18)
    sense[0], sense[2], sense[7], sense[12] = 0x70, 0x05, 0x0A, 0x24
    return SimResult(SAM_STAT_CHECK_CONDITION, bytes(sense))
