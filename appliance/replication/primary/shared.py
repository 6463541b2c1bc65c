"""What a transmitter and the session of its current link share, as one object handed down
(the session never reaches into its owner), and the small interface through which resync and
verify steer the session's record shipping."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from appliance.journal import VolumeFiles
from appliance.replication.primary.handler_events import HandlerEvents
from appliance.replication.primary.progress import ResyncProgress, VerifyReport
from appliance.replication.primary.steering import BitmapRequests, DiscardState, Pacing
from appliance.replication.status import LinkStatus, RateMeter, TransmitterCounters


class InflightWindow:
    """Batches sent on the link and not yet acknowledged, oldest first."""

    def __init__(self) -> None:
        self._batches: deque[tuple[int, int, int]] = deque()   # (last seq, bytes, first ts)

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, last_seq: int, nbytes: int, first_timestamp_ns: int) -> None:
        self._batches.append((last_seq, nbytes, first_timestamp_ns))

    def bytes(self) -> int:
        return sum(nbytes for _, nbytes, _ in self._batches)

    def oldest_timestamp_ns(self) -> int | None:
        """Primary timestamp of the oldest write in flight (None: nothing in flight)."""
        return self._batches[0][2] if self._batches else None

    def acknowledge(self, seq: int) -> int:
        """The peer holds everything up to ``seq``: drop those batches, return their bytes."""
        freed = 0
        while self._batches and self._batches[0][0] <= seq:
            freed += self._batches.popleft()[1]
        return freed

    def rewind(self, seq: int) -> None:
        """Shipping restarts at ``seq``: batches holding it or later go again."""
        while self._batches and self._batches[-1][0] >= seq:
            self._batches.pop()

    def clear(self) -> None:
        self._batches.clear()


@dataclass
class TxShared:
    """Counters, link status, in-flight window, volume size and files, resync and verify
    progress: owned by the transmitter, handed to each session, resync and verify."""

    volume_bytes: int
    counters: TransmitterCounters = field(default_factory=TransmitterCounters)
    link_status: LinkStatus = field(default_factory=LinkStatus)
    inflight: InflightWindow = field(default_factory=InflightWindow)
    resync: ResyncProgress = field(default_factory=ResyncProgress)
    verify: VerifyReport = field(default_factory=VerifyReport)
    rate: RateMeter = field(default_factory=RateMeter)
    # The volume's mirror and bitmap as its journal names them; None: unknown, and then
    # ``files_problem`` says why.
    files: VolumeFiles | None = None
    files_problem: str | None = None
    # The peer's last WELCOME asked for a full copy or the end of an interrupted resync.
    peer_needs_resync: bool = False
    # The admin's steering (control socket): shipping paused, pacing in effect, the records
    # dropped by a discard that the peer may still lack (None: no discard pending).
    paused: bool = False
    pacing: Pacing = field(default_factory=lambda: Pacing(None, []))
    discard: DiscardState | None = None
    # The one writer of the bitmap's request slot (opened once the bitmap is known).
    requests: BitmapRequests | None = None
    # Events with the volume's handler for the synchronous modes (None until run).
    handler: HandlerEvents | None = None
    # The summary of the lost-write report, once a promoted DR refused us (lost_writes.py).
    lost_writes: dict | None = None

    def hold(self) -> str | None:
        """Why shipping (records and regions) waits now, as the link state; None: it may go."""
        if self.paused:
            return "paused:admin"
        if self.pacing.in_blackout():
            return "paused:blackout-window"
        return None

    def bitmap_requests(self, files: VolumeFiles) -> BitmapRequests:
        """The request writer of ``files.bitmap`` (reopened if the volume names another)."""
        if self.requests is None or self.requests.path != files.bitmap:
            self.close_requests()
            self.requests = BitmapRequests(files.bitmap)
        return self.requests

    def close_requests(self) -> None:
        if self.requests is not None:
            self.requests.close()
            self.requests = None


class ShippingControl(Protocol):
    """What resync and verify may do to the session's record shipping."""

    records_paused: bool
    peer_durable: int       # highest seq the peer acknowledged as durable in this session

    def supersede_to(self, seq: int) -> None:
        """Records up to ``seq`` are contained in a full copy: never send them."""

    async def window_empty(self) -> None:
        """Return once everything sent has been acknowledged."""

    async def shipping_allowed(self) -> None:
        """Return once neither the admin's pause nor a blackout window holds shipping."""

    async def send_placeholders(self, lba: int) -> None:
        """Inside a resync, after RESYNC_BEGIN: send the seqs a discard dropped that the peer
        lacks, as one-block UNMAPs at ``lba`` (in a dirty chunk), until it acknowledged
        them all."""
