"""One connected link of the transmitter: the send loop, the ACK reader, acknowledgement
persistence, and the resync and verify tasks that share the link.

Records are read from the journal in a worker thread and sent in BATCH frames within a window
of unacknowledged bytes; the window opens on each ACK, and the journal's acknowledged seq
follows in the background. A RESEND rewinds the send cursor; a volume resized under the
session ends it (``VolumeResized``) so that the next HELLO tells the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.journal import JournalReader, OpKind, RecordsGone
from appliance.journal.header import journal_volume_bytes
from appliance.replication import wire
from appliance.replication.config import TransmitterConfig
from appliance.replication.handshake import Welcome
from appliance.replication.link import FrameLink, run_blocking
from appliance.replication.primary.pacing import AckRate, batch_limit
from appliance.replication.primary.resync import ResyncDriver
from appliance.replication.primary.shared import TxShared
from appliance.replication.primary.verify import verify
from appliance.replication.primary.volume_size import VolumeResized
from appliance.replication.records import from_journal

log = logging.getLogger("appliance.transmitter")
FT = wire.FrameType

# The transmitter polls the journal for new records (the writer is another process): the
# poll interval backs off from MIN to MAX while nothing comes. MAX bounds the lag it adds to
# a write that arrives after an idle spell.
IDLE_POLL_MIN_S = 0.002
IDLE_POLL_MAX_S = 0.05
# How often an idle link looks at the journal's recorded volume size (an online resize with
# no write beyond the old end yet still reaches the peer within this).
SIZE_CHECK_S = 5.0
# Placeholders of discarded seqs per BATCH frame (a record header each, no data).
PLACEHOLDERS_PER_BATCH = 4096
# The peer's durable seq is persisted as the journal's acknowledged seq (a slot write and an
# fdatasync, in a worker thread) at most this often; the latest ACK each time. The window
# opens on each ACK itself, so this only delays the primary journal's reclaim by as much: at
# full speed the receiver ACKs every commit and every apply pass, one to two per batch, and
# a thread hop and an fdatasync for each cost the transmitter as much CPU as the sends.
ACK_PERSIST_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class _OutBatch:
    """Records read and encoded for one BATCH frame."""

    parts: list[bytes | memoryview]
    last_seq: int
    count: int
    nbytes: int          # record data bytes
    first_ts: int        # primary timestamp of the first record (lag)


class PeerRefused(Exception):
    """The receiver sent REFUSE or ERROR; the message is its reason, ``code`` the REFUSE code
    (None for an ERROR or a local refusal), ``details`` the REFUSE's other fields."""

    def __init__(self, message: str, code: str | None = None,
                 details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}


class SessionEnded(Exception):
    """The transmitter ended the session on purpose (a discard needs the journal to itself);
    it reconnects at once."""


class TxSession:
    """Sender and ack-reader tasks of one connected link. It shares counters, link status
    and the in-flight window with its transmitter through ``shared``, and lets resync and
    verify steer its shipping through ``ShippingControl`` (records_paused, supersede_to,
    window_empty)."""

    def __init__(self, cfg: TransmitterConfig, shared: TxShared, link: FrameLink,
                 reader: JournalReader, welcome: Welcome,
                 primary_report: Callable[[], dict]) -> None:
        self.cfg = cfg
        self.shared = shared
        self.link = link
        self.reader = reader
        self.primary_report = primary_report
        self.next_seq = reader.acked_seq + 1
        self.highest_sent = reader.acked_seq     # highest seq sent in this session
        # Highest seq the peer ACKed as durable. The window opens on the ACK itself; the
        # journal's persisted acknowledged seq follows in the background (one fdatasync per
        # catch-up, not one per ACK on the ACK path). A crash in between only means the
        # next session starts lower and the peer drops what it already holds.
        self.peer_durable = reader.acked_seq
        discard = shared.discard
        if discard is not None and welcome.last_seq < min(discard.to_seq, reader.acked_seq):
            # A discard dropped seqs the peer lacks: they go as placeholders inside the
            # resync (send_placeholders), and no record after them before that.
            self.peer_durable = self.highest_sent = max(welcome.last_seq,
                                                        discard.from_seq - 1)
        if shared.handler is not None:
            shared.handler.use_journal(reader.sb.journal_uuid)
            shared.handler.acknowledged(self.peer_durable)
        self._ack_due = asyncio.Event()
        self.heartbeat_s = min(self.cfg.heartbeat_s, welcome.heartbeat_s)
        self._acked = asyncio.Event()
        self._last_sent = time.monotonic()
        # Since when an ACK is awaited: the last ACK, or the moment something went in flight
        # after nothing was (an idle spell is no ACK overdue).
        self._last_ack = time.monotonic()
        self._next_size_check = time.monotonic() + SIZE_CHECK_S
        self.welcome = welcome
        # (On a thin link smaller batches keep the flow smooth: Pacing.batch_bytes, live.)
        # On any slow path, a batch holds at most a short slice of link time.
        self.ack_rate = AckRate()
        # The resync driver pauses record shipping while regions go out. A peer waiting for
        # a full copy gets no record before it: the copy contains them (superseded).
        self.records_paused = welcome.inconsistent
        self.resync: ResyncDriver | None = None
        self._extra: list[asyncio.Task] = []    # verify runs
        # The journal read started for the next batch while one is sent: (seq, limit, future).
        self._ahead: tuple[int, int, asyncio.Future] | None = None
        self._ending = asyncio.Event()
        if shared.files is not None:
            self.resync = ResyncDriver(self, shared, cfg, link, reader, welcome, shared.files)

    async def run(self) -> None:
        if self.resync is None and self.welcome.inconsistent:
            raise PeerRefused("the peer needs a full copy or is inconsistent from an "
                              "interrupted resync, and this transmitter cannot send it: "
                              + (self.shared.files_problem
                                 or "the volume's journal names no mirror and bitmap"))
        if self.resync is not None and self.welcome.full_copy:
            await self.resync.request_full_copy()
        elif self.resync is not None and self.welcome.failback_extents is not None:
            await self.resync.mark_failback(self.welcome.failback_extents)
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop()),
                 asyncio.create_task(self._persist_acks()), asyncio.create_task(self._ended())]
        if self.welcome.primary_state:
            tasks.append(asyncio.create_task(self._report_state()))
        if self.resync is not None:
            resume = self.welcome.inconsistent and not self.welcome.full_copy
            tasks.append(asyncio.create_task(self.resync.run(resume,
                                                             full_copy=self.welcome.full_copy)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in [*tasks, *self._extra]:
                task.cancel()
            await asyncio.gather(*tasks, *self._extra, return_exceptions=True)
            if self._ahead is not None:     # (no read may outlive the session: the next one
                await asyncio.gather(self._ahead[2], return_exceptions=True)  # reads too)
                self._ahead = None
            if self.resync is not None:
                self.resync.close()

    def end(self, why: str) -> None:
        """End the session (run raises SessionEnded); the transmitter reconnects."""
        self._why_ended = why
        self._ending.set()

    async def _ended(self) -> None:
        await self._ending.wait()
        raise SessionEnded(self._why_ended)

    async def _report_state(self) -> None:
        """Tell the peer what the primary holds that it may lack, so that the DR's status
        can say it is behind (docs/protocol.md, "What status derives from"). Sent every
        heartbeat, it takes the place of the HEARTBEAT frames an idle link would send."""
        while True:
            await self.link.send_json(FT.PRIMARY_STATE, self.primary_report())
            self._last_sent = time.monotonic()      # it keeps the link alive as a HEARTBEAT would
            await asyncio.sleep(self.heartbeat_s)

    def start_verify(self, region_bytes: int, repair: bool) -> None:
        async def run() -> None:
            report = self.shared.verify
            try:
                if self.resync is None:
                    raise RuntimeError("verify needs the volume's mirror: "
                                       f"{self.shared.files_problem}")
                await verify(self.resync, report, region_bytes=region_bytes, repair=repair)
            except Exception as err:   # reported in status; the link itself carries on
                report.state, report.error = "failed", f"{type(err).__name__}: {err}"
                log.error("volume %s: verify failed: %s", self.cfg.volume_uuid, err)
        self._extra.append(asyncio.create_task(run()))

    def supersede_to(self, seq: int) -> None:
        """A full copy begins (nothing in flight) and contains every record up to ``seq``:
        they are never sent, the peer's journal continues after them, and its ACK of ``seq``
        (then our acknowledgement, which frees the primary journal) is expected. Records
        resume at ``seq + 1`` once the copy has ended."""
        counters = self.shared.counters
        self.next_seq = max(self.next_seq, seq + 1)
        self.highest_sent = max(self.highest_sent, seq)
        counters.sent_seq = max(counters.sent_seq, seq)

    async def window_empty(self) -> None:
        while self.shared.inflight:
            await asyncio.sleep(0.01)

    async def shipping_allowed(self) -> None:
        while (hold := self.shared.hold()) is not None:
            self.shared.link_status.set_state(hold)
            await asyncio.sleep(0.05)

    def _placeholders_owed(self) -> bool:
        discard = self.shared.discard
        return discard is not None and self.peer_durable < discard.to_seq

    async def send_placeholders(self, lba: int) -> None:
        discard, counters = self.shared.discard, self.shared.counters
        while discard is not None and self.peer_durable < discard.to_seq:
            start = self.peer_durable + 1
            for first in range(start, discard.to_seq + 1, PLACEHOLDERS_PER_BATCH):
                last = min(discard.to_seq, first + PLACEHOLDERS_PER_BATCH - 1)
                now = time.time_ns()
                recs = [wire.WireRecord(seq, now, int(OpKind.UNMAP), lba, 1, b"")
                        for seq in range(first, last + 1)]
                await self.link.send_parts(FT.BATCH, wire.batch_parts(
                    self.cfg.volume_uuid, self.cfg.generation, recs), head_crc=True)
                self._last_sent = time.monotonic()
                self.highest_sent = max(self.highest_sent, last)
                counters.sent_seq = max(counters.sent_seq, last)
                self._in_flight(last, 0, now)
            deadline = time.monotonic() + 3 * self.cfg.dead_after_s
            while self.peer_durable < discard.to_seq and time.monotonic() < deadline:
                self._acked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked.wait(), self.heartbeat_s)
            if self.peer_durable < discard.to_seq:
                log.warning("volume %s: placeholders not acknowledged; sending them again from "
                            "seq %d", self.cfg.volume_uuid, self.peer_durable + 1)
                self.shared.inflight.clear()

    async def _send_loop(self) -> None:
        shared, counters = self.shared, self.shared.counters
        idle = IDLE_POLL_MIN_S
        while True:
            if (hold := shared.hold()) is not None:     # the admin's pause, a blackout window
                shared.link_status.set_state(hold)
                await self._idle(0.05)
                continue
            if self.records_paused or self._placeholders_owed():
                await self._idle(0.02)
                continue
            shared.link_status.set_state("replicating")
            self._resend_if_ack_overdue()
            if shared.inflight.bytes() >= self.cfg.window_bytes:
                self._acked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked.wait(), self.heartbeat_s)
                await self._heartbeat_if_due()
                continue
            if self.next_seq <= self.peer_durable:
                # A RESEND rewound us, then an ACK crossing it showed the peer holds these
                # already: the journal may have reclaimed them since (RecordsGone).
                self.next_seq = self.peer_durable + 1
            seq = self.next_seq
            limit = batch_limit(shared.pacing.batch_bytes(self.cfg.batch_bytes),
                                self.ack_rate.rate())
            try:
                counters.head_seq, batch = await self._read(seq, limit)
            except RecordsGone as err:
                if seq <= self.peer_durable:
                    continue        # acknowledged while we read: nothing lost, go on after it
                raise PeerRefused(f"journal no longer holds seq {seq}: a resync is "
                                  f"needed ({err})") from err
            if seq != self.next_seq:
                continue        # a RESEND rewound us while we read: read from there instead
            if batch is None:
                idle = min(IDLE_POLL_MAX_S, idle * 2)
                await self._idle(idle)
                if time.monotonic() >= self._next_size_check:
                    await run_blocking(self._check_size)
                continue
            idle = IDLE_POLL_MIN_S
            before = self.link.bytes_sent
            self.highest_sent = max(self.highest_sent, batch.last_seq)
            # The next batch is read from the journal while this one is encrypted and sent.
            self._read_ahead(batch.last_seq + 1, limit)
            await self.link.send_parts(FT.BATCH, batch.parts, head_crc=True)
            self._last_sent = time.monotonic()
            if seq == self.next_seq:
                # (Unless a RESEND rewound us while the frame went out: then the rewind
                # stands, and this batch goes again with the rest.)
                self._in_flight(batch.last_seq, batch.nbytes, batch.first_ts)
                self.next_seq = batch.last_seq + 1
            counters.sent_seq = max(counters.sent_seq, batch.last_seq)
            counters.records_sent += batch.count
            counters.bytes_sent += batch.nbytes
            counters.batches_sent += 1
            counters.wire_bytes_sent += self.link.bytes_sent - before
            shared.rate.add(batch.nbytes)

    async def _read(self, seq: int, limit: int) -> tuple[int, _OutBatch | None]:
        """The journal head and the batch from ``seq``: the read started ahead for it, else a
        new one. One read at a time: the reader keeps a cursor (a read ahead for another seq,
        which a RESEND made stale, is waited for and dropped).

        A read ahead of ``seq`` is used whatever limit it was sized with: the limit is only a
        pacing target, and dropping it would cost a walk of the segment from its start (its
        read moved the reader's cursor past ``seq``): 50-75 ms per 32 MiB segment, which made
        the DR fall behind 4 KiB writes at qd32 (bench/sync_modes). One that found nothing
        is read again: records may have come since."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead_seq, _, future = ahead
            if ahead_seq == seq:
                result = await future
                if result[1] is not None:
                    return result
            else:
                with contextlib.suppress(Exception):
                    await future
        return await run_blocking(self._read_batch, seq, limit)

    def _read_ahead(self, seq: int, limit: int) -> None:
        if self._ahead is None:
            self._ahead = (seq, limit, asyncio.ensure_future(
                run_blocking(self._read_batch, seq, limit)))

    def _in_flight(self, last_seq: int, nbytes: int, first_ts: int) -> None:
        """A batch up to ``last_seq`` went out: it is in flight until an ACK covers it. Not if
        an ACK already did (it crossed a resend: the peer holds these from the first copy and
        does not acknowledge a batch of duplicates), or the window would never empty."""
        if last_seq <= self.peer_durable:
            return
        if not self.shared.inflight:
            self._last_ack = time.monotonic()     # the ACK is awaited from now on
        self.shared.inflight.add(last_seq, nbytes, first_ts)

    def _read_batch(self, seq: int, max_bytes: int) -> tuple[int, _OutBatch | None]:
        """In a worker thread (one hop per batch, off the event loop): the journal head, and
        the records from ``seq`` encoded as BATCH payload buffers (None when caught up)."""
        head = self.reader.durable_seq - 1
        # Views of the checked read buffer: no copy per record on the way to the socket.
        records = self.reader.read(seq, max_bytes, views=True)
        if not records:
            return head, None
        wrecs = [from_journal(r) for r in records]
        if max(r.lba + r.nblocks for r in wrecs) * self.cfg.block_size > self.shared.volume_bytes:
            self._check_size()      # the volume grew: the peer must grow before these land
        return head, _OutBatch(
            parts=wire.batch_parts(self.cfg.volume_uuid, self.cfg.generation, wrecs),
            last_seq=wrecs[-1].seq, count=len(wrecs), nbytes=sum(len(r.data) for r in wrecs),
            first_ts=wrecs[0].timestamp_ns)

    def _check_size(self) -> None:
        """Raise VolumeResized if the journal records another size than the HELLO said."""
        self._next_size_check = time.monotonic() + SIZE_CHECK_S
        now = journal_volume_bytes(self.cfg.journal, self.cfg.volume_uuid)
        if now != self.shared.volume_bytes:
            raise VolumeResized(f"the volume was resized from {self.shared.volume_bytes} to {now} "
                                f"bytes")

    def _resend_if_ack_overdue(self) -> None:
        """TCP does not lose frames, but a broken middlebox can: if nothing has been
        acknowledged for 3 x dead_after_s while records are in flight (heartbeats still
        arrive, so the link is alive), send them again. Generous, so that a full window
        queued on a slow link is not resent for nothing."""
        overdue = 3 * self.cfg.dead_after_s
        if self.shared.inflight and time.monotonic() - self._last_ack > overdue:
            log.warning("volume %s: no ACK for %.1f s, resending from seq %d",
                        self.cfg.volume_uuid, overdue, self.peer_durable + 1)
            self.shared.counters.resends += 1
            self.shared.inflight.clear()
            self.next_seq = self.peer_durable + 1
            self._last_ack = time.monotonic()

    async def _idle(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the handler says a write waits for the DR."""
        await self._heartbeat_if_due()
        handler = self.shared.handler
        if handler is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handler.written.wait(), seconds)
        handler.written.clear()

    async def _heartbeat_if_due(self) -> None:
        if time.monotonic() - self._last_sent >= self.heartbeat_s:
            await self.link.send(FT.HEARTBEAT, wire.encode_seq(time.time_ns()))
            self._last_sent = time.monotonic()

    def _on_resend(self, seq: int) -> None:
        """The peer saw a gap before ``seq``. It may ask about a gap in frames sent before an
        earlier rewind (it asks once per gap, and its requests cross our resends): a seq we
        sent but are about to send again anyway needs nothing. A seq we never sent in this
        session, or one already acknowledged, is a protocol error."""
        if seq <= self.peer_durable or seq > self.highest_sent + 1:
            raise wire.BadFrame(f"peer asked to resend from {seq}, outside "
                                f"{self.peer_durable + 1}..{self.highest_sent + 1}")
        if self._placeholders_owed() and seq > self.peer_durable:
            log.info("volume %s: peer asked to resend from seq %d, a discarded seq: its "
                     "placeholders go again", self.cfg.volume_uuid, seq)
            return
        if seq >= self.next_seq:
            log.info("volume %s: peer asked to resend from seq %d, already resending from %d",
                     self.cfg.volume_uuid, seq, self.next_seq)
            return
        self.shared.counters.resends += 1
        log.warning("volume %s: peer asked to resend from seq %d", self.cfg.volume_uuid, seq)
        self.next_seq = seq
        self.shared.inflight.rewind(seq)

    async def _persist_acks(self) -> None:
        """Persist the peer's durable seq as the journal's acknowledged seq (which lets the
        primary journal reclaim), catching up to the latest ACK each time: at once after a
        quiet spell, then at most every ACK_PERSIST_INTERVAL_S."""
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            seq = self.peer_durable
            if seq > self.reader.acked_seq:
                await run_blocking(self.reader.acknowledge, seq)
                self.shared.counters.acked_seq = seq
                await asyncio.sleep(ACK_PERSIST_INTERVAL_S)

    async def _recv_loop(self) -> None:
        counters = self.shared.counters
        while True:
            frame = await self.link.recv(self.cfg.dead_after_s)
            if frame.type is FT.HEARTBEAT:
                continue
            if frame.type is FT.ACK:
                durable, applied = wire.decode_ack(frame.payload)
                if durable > counters.sent_seq and durable > self.peer_durable:
                    raise wire.BadFrame(f"peer acknowledged seq {durable} beyond what we sent "
                                        f"({counters.sent_seq})")
                counters.applied_seq = max(counters.applied_seq, applied)
                if durable > self.peer_durable:
                    self.peer_durable = durable
                    self._ack_due.set()
                    if self.shared.handler is not None:
                        self.shared.handler.acknowledged(durable)
                acked = self.shared.inflight.acknowledge(durable)
                if acked:
                    self.ack_rate.add(acked)
                self._last_ack = time.monotonic()
                self._acked.set()
            elif frame.type is FT.RESEND:
                self._on_resend(wire.decode_seq(frame.payload))
            elif frame.type is FT.REGION_ACK and self.resync is not None:
                self.resync.on_region_ack()
            elif frame.type is FT.HASH_REPLY and self.resync is not None:
                self.resync.on_hash_reply(*wire.decode_hash_reply(frame.payload))
            elif frame.type in (FT.ERROR, FT.REFUSE):
                raise PeerRefused(str(wire.decode_json(frame.payload).get("reason")))
            else:
                raise wire.BadFrame(f"unexpected {frame.type.name} frame from the receiver")


