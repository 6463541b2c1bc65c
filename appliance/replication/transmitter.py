"""The transmitter (primary side): ships one volume's journal to the peer, forever.

It reads the journal with a ``JournalReader`` (its own process; it never touches host I/O),
starting at the acknowledged seq persisted in the journal, sends batches with a bounded window
of unacknowledged bytes, and calls ``reader.acknowledge`` only for seqs the receiver reported
durable. Any failure (refusal, dead link, bad frame, peer restart) drops the link and
reconnects with jittered exponential backoff; the next session starts again from the persisted
acknowledged seq, and the receiver ignores what it already holds, so resends are harmless.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import random
import signal
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from appliance.control.server import CommandError, ControlServer
from appliance.journal import JournalError, JournalReader, RecordsGone
from appliance.replication import wire
from appliance.replication.config import (
    ConfigError,
    TransmitterConfig,
    in_window,
    load_toml,
    transmitter_config,
)
from appliance.replication.handshake import (
    COMPRESSIONS,
    HandshakeError,
    Hello,
    Welcome,
)
from appliance.replication.link import FrameLink, LinkClosed, TokenBucket, run_blocking
from appliance.replication.pacing import AckRate, batch_limit
from appliance.replication.replica import from_journal
from appliance.replication.resync import ResyncDriver, ResyncProgress
from appliance.replication.status import LinkStatus, RateMeter, TransmitterCounters
from appliance.replication.tls import client_context
from appliance.replication.verify import VerifyReport, verify
from appliance.replication.volume_size import VolumeResized, journal_volume_bytes
from appliance.volume.errors import VolumeError

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


@dataclass(frozen=True, slots=True)
class _OutBatch:
    """Records read and encoded for one BATCH frame."""

    parts: list[bytes | memoryview]
    last_seq: int
    count: int
    nbytes: int          # record data bytes
    first_ts: int        # primary timestamp of the first record (lag)


class PeerRefused(Exception):
    """The receiver sent REFUSE or ERROR; the message is its reason."""


class Transmitter:
    def __init__(self, cfg: TransmitterConfig) -> None:
        self.cfg = cfg
        self.link = LinkStatus()
        self.counters = TransmitterCounters()
        self.resync_progress = ResyncProgress()
        self.verify_report = VerifyReport()
        self.session: _Session | None = None
        self.rate = RateMeter()
        self._ssl = client_context(cfg.tls) if cfg.tls is not None else None
        self._limiter = TokenBucket(cfg.bandwidth_limit) if cfg.bandwidth_limit else None
        self.reader: JournalReader | None = None
        # The size the journal records (it follows online resizes), read for every HELLO.
        self.volume_bytes = cfg.size_bytes
        self.control = ControlServer(cfg.control_socket, {"status": self.status,
                                                          "verify": self.start_verify})
        self._stop = asyncio.Event()
        self._inflight: deque[tuple[int, int, int]] = deque()   # (last seq, bytes, first ts)

    # --- status -------------------------------------------------------------------------

    def status(self, args: dict) -> dict:
        c = self.counters
        inflight_bytes = sum(b for _, b, _ in self._inflight)
        lag_records = max(0, c.head_seq - c.acked_seq)
        # Age of the oldest unacknowledged write we shipped; unknown (None) while records
        # wait unshipped (link down, paused).
        lag_s: float | None = 0.0 if lag_records == 0 else None
        if self._inflight:
            lag_s = round(max(0.0, (time.time_ns() - self._inflight[0][2]) / 1e9), 3)
        return {
            "role": "transmitter", "identity": self.cfg.identity,
            "volume_uuid": str(self.cfg.volume_uuid), "peer": "{}:{}".format(*self.cfg.peer),
            "size_bytes": self.volume_bytes,
            "link": self.link.as_dict(), **c.__dict__,
            "lag_records": lag_records,
            "lag_bytes_in_flight": inflight_bytes, "lag_seconds": lag_s,
            "throughput_bytes_per_s": round(self.rate.rate()),
            "bandwidth_limit": self.cfg.bandwidth_limit,
            "resync": self.resync_progress.as_dict(),
            "verify": self.verify_report.as_dict(),
        }

    def start_verify(self, args: dict) -> dict:
        """Control command: {"repair": false, "region_bytes": 1048576}."""
        repair = args.get("repair", False)
        region = args.get("region_bytes", 1 << 20)
        if not isinstance(repair, bool):
            raise CommandError("repair must be true or false")
        if not isinstance(region, int) or region <= 0 or region % self.cfg.block_size \
                or region > 16 << 20:
            raise CommandError(f"region_bytes must be a multiple of {self.cfg.block_size} "
                               f"up to 16 MiB")
        if self.cfg.mirror is None:
            raise CommandError("verify needs 'mirror' and 'bitmap' in the transmitter config")
        if self.session is None or self.link.state != "replicating":
            raise CommandError(f"not connected to the peer (state {self.link.state}); "
                               f"verify runs over a live link")
        if self.verify_report.state == "running":
            raise CommandError("a verify is already running")
        self.session.start_verify(region, repair)
        return {"started": True, "regions": -(-self.volume_bytes // region)}

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        await self.control.start()
        backoff = 0.2
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self._session()
                except VolumeResized as err:
                    log.info("volume %s: %s; reconnecting to tell the peer", self.cfg.volume_uuid,
                             err)
                    continue
                except PeerRefused as err:
                    self._failed(f"peer refused: {err}", logging.ERROR)
                except JournalError as err:
                    self._failed(f"journal: {type(err).__name__}: {err}", logging.ERROR)
                    if self.reader is not None:     # reopen it: the file may have changed
                        self.reader.close()
                        self.reader = None
                except (LinkClosed, wire.WireError, HandshakeError, ssl.SSLError, OSError,
                        TimeoutError, VolumeError) as err:
                    self._failed(f"{type(err).__name__}: {err}", logging.WARNING)
                if time.monotonic() - started > 10:
                    backoff = 0.2      # the link was up for a while: start over gently
                delay = backoff * random.uniform(0.5, 1.5)
                backoff = min(self.cfg.backoff_max_s, backoff * 2)
                if not self.link.state.startswith("refused"):
                    self.link.set_state("reconnecting")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            if self.reader is not None:
                self.reader.close()
            await self.control.close()

    def stop(self) -> None:
        self._stop.set()

    def _failed(self, message: str, level: int) -> None:
        self.link.error(message)
        log.log(level, "volume %s: %s", self.cfg.volume_uuid, message)

    def _open_reader(self) -> JournalReader:
        if self.reader is None:
            self.reader = JournalReader(self.cfg.journal, volume_uuid=self.cfg.volume_uuid)
        return self.reader

    async def _session(self) -> None:
        reader = await asyncio.to_thread(self._open_reader)
        self.counters.acked_seq = reader.acked_seq
        self.volume_bytes = await asyncio.to_thread(journal_volume_bytes, self.cfg.journal,
                                                    self.cfg.volume_uuid)
        if not self.link.state.startswith("refused"):   # keep saying why until admitted
            self.link.set_state("connecting")
        host, port = self.cfg.peer
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._ssl, limit=1 << 20,
                                    server_hostname=self.cfg.peer_identity if self._ssl else None),
            self.cfg.dead_after_s)
        link = FrameLink(r, w, limiter=self._limiter)
        try:
            welcome = await self._handshake(link, reader)
            self.link.connects += 1
            self.link.peer = link.peer
            self.link.set_state("replicating")
            log.info("volume %s: connected to %s (%s) at seq %d%s", self.cfg.volume_uuid,
                     welcome.identity, link.peer, welcome.last_seq,
                     ", zstd" if welcome.compression else "")
            self.session = _Session(self, link, reader, welcome)
            await self.session.run()
        finally:
            self.session = None
            self._inflight.clear()
            if self.link.state == "replicating":
                self.link.disconnects += 1
            await link.close()

    async def _handshake(self, link: FrameLink, reader: JournalReader) -> Welcome:
        hello = Hello(identity=self.cfg.identity, volume_uuid=self.cfg.volume_uuid,
                      size_bytes=self.volume_bytes, block_size=self.cfg.block_size,
                      generation=self.cfg.generation, first_seq=reader.acked_seq + 1,
                      compression=COMPRESSIONS if self.cfg.compression else ())
        await link.send_json(FT.HELLO, hello.to_dict())
        frame = await link.recv(self.cfg.dead_after_s)
        if frame.type is FT.REFUSE:
            body = wire.decode_json(frame.payload)
            self.link.set_state(f"refused:{body.get('code')}")
            raise PeerRefused(f"{body.get('code')}: {body.get('reason')}")
        if frame.type is not FT.WELCOME:
            raise wire.BadFrame(f"expected WELCOME, got {frame.type.name}")
        welcome = Welcome.from_dict(wire.decode_json(frame.payload))
        if welcome.identity != self.cfg.peer_identity:
            raise PeerRefused(f"peer calls itself {welcome.identity!r}, expected "
                              f"{self.cfg.peer_identity!r}")
        if welcome.compression:
            link.enable_compression()
        if welcome.last_seq > reader.acked_seq:
            # The receiver already holds these durably (acks lost in a crash): skip them.
            await run_blocking(reader.acknowledge, welcome.last_seq)
        self.counters.acked_seq = reader.acked_seq
        self.counters.applied_seq = welcome.applied_seq
        return welcome


class _Session:
    """Sender and ack-reader tasks of one connected link."""

    def __init__(self, tx: Transmitter, link: FrameLink, reader: JournalReader,
                 welcome: Welcome) -> None:
        self.tx = tx
        self.cfg = tx.cfg
        self.link = link
        self.reader = reader
        self.next_seq = reader.acked_seq + 1
        self.highest_sent = reader.acked_seq     # highest seq sent in this session
        # Highest seq the peer ACKed as durable. The window opens on the ACK itself; the
        # journal's persisted acknowledged seq follows in the background (one fdatasync per
        # catch-up, not one per ACK on the ACK path). A crash in between only means the
        # next session starts lower and the peer drops what it already holds.
        self.peer_durable = reader.acked_seq
        self._ack_due = asyncio.Event()
        self.heartbeat_s = min(self.cfg.heartbeat_s, welcome.heartbeat_s)
        self._acked = asyncio.Event()
        self._last_sent = time.monotonic()
        self._last_ack = time.monotonic()
        self._next_size_check = time.monotonic() + SIZE_CHECK_S
        self.welcome = welcome
        # On a thin link smaller batches keep the flow (and the token bucket) smooth.
        limit = self.cfg.bandwidth_limit
        self.batch_bytes = self.cfg.batch_bytes if limit is None else \
            min(self.cfg.batch_bytes, max(64 * 1024, int(limit / 8)))
        # ... and on any slow path, a batch holds at most a short slice of link time.
        self.ack_rate = AckRate()
        # The resync driver pauses record shipping while regions go out.
        # (A peer waiting for a full copy takes records until the copy begins.)
        self.records_paused = welcome.inconsistent and not welcome.full_copy
        self.resync: ResyncDriver | None = None
        self._extra: list[asyncio.Task] = []    # verify runs
        if self.cfg.bitmap is not None:
            self.resync = ResyncDriver(self, tx.resync_progress)

    async def run(self) -> None:
        if self.resync is None and self.welcome.inconsistent:
            raise PeerRefused("the peer needs a full copy or is inconsistent from an "
                              "interrupted resync, and this transmitter has no "
                              "'mirror'/'bitmap' configured to send it")
        if self.resync is not None and self.welcome.full_copy:
            await self.resync.request_full_copy()
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop()),
                 asyncio.create_task(self._persist_acks())]
        if self.resync is not None:
            resume = self.welcome.inconsistent and not self.welcome.full_copy
            tasks.append(asyncio.create_task(self.resync.run(resume)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in [*tasks, *self._extra]:
                t.cancel()
            await asyncio.gather(*tasks, *self._extra, return_exceptions=True)
            if self.resync is not None:
                self.resync.close()

    def start_verify(self, region_bytes: int, repair: bool) -> None:
        async def run() -> None:
            report = self.tx.verify_report
            try:
                await verify(self, report, region_bytes=region_bytes, repair=repair)
            except Exception as err:   # reported in status; the link itself carries on
                report.state, report.error = "failed", f"{type(err).__name__}: {err}"
                log.error("volume %s: verify failed: %s", self.cfg.volume_uuid, err)
        self._extra.append(asyncio.create_task(run()))

    def _inflight_bytes(self) -> int:
        return sum(b for _, b, _ in self.tx._inflight)

    async def _send_loop(self) -> None:
        tx, c = self.tx, self.tx.counters
        idle = IDLE_POLL_MIN_S
        while True:
            if self.cfg.blackout and in_window(dt.datetime.now().time(), self.cfg.blackout):
                tx.link.set_state("paused:blackout-window")
                await self._idle(1.0)
                continue
            if self.records_paused:
                await self._idle(0.02)
                continue
            tx.link.set_state("replicating")
            self._resend_if_ack_overdue()
            if self._inflight_bytes() >= self.cfg.window_bytes:
                self._acked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked.wait(), self.heartbeat_s)
                await self._heartbeat_if_due()
                continue
            seq = self.next_seq
            try:
                c.head_seq, batch = await run_blocking(
                    self._read_batch, seq, batch_limit(self.batch_bytes, self.ack_rate.rate()))
            except RecordsGone as err:
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
            await self.link.send_parts(FT.BATCH, batch.parts)
            self._last_sent = time.monotonic()
            if seq == self.next_seq:
                # (Unless a RESEND rewound us while the frame went out: then the rewind
                # stands, and this batch goes again with the rest.)
                tx._inflight.append((batch.last_seq, batch.nbytes, batch.first_ts))
                self.next_seq = batch.last_seq + 1
            c.sent_seq = max(c.sent_seq, batch.last_seq)
            c.records_sent += batch.count
            c.bytes_sent += batch.nbytes
            c.batches_sent += 1
            c.wire_bytes_sent += self.link.bytes_sent - before
            tx.rate.add(batch.nbytes)

    def _read_batch(self, seq: int, max_bytes: int) -> tuple[int, _OutBatch | None]:
        """In a worker thread (one hop per batch, off the event loop): the journal head, and
        the records from ``seq`` encoded as BATCH payload buffers (None when caught up)."""
        head = self.reader.durable_seq - 1
        records = self.reader.read(seq, max_bytes)
        if not records:
            return head, None
        wrecs = [from_journal(r) for r in records]
        if max(r.lba + r.nblocks for r in wrecs) * self.cfg.block_size > self.tx.volume_bytes:
            self._check_size()      # the volume grew: the peer must grow before these land
        return head, _OutBatch(
            parts=wire.batch_parts(self.cfg.volume_uuid, self.cfg.generation, wrecs),
            last_seq=wrecs[-1].seq, count=len(wrecs), nbytes=sum(len(r.data) for r in wrecs),
            first_ts=wrecs[0].timestamp_ns)

    def _check_size(self) -> None:
        """Raise VolumeResized if the journal records another size than the HELLO said."""
        self._next_size_check = time.monotonic() + SIZE_CHECK_S
        now = journal_volume_bytes(self.cfg.journal, self.cfg.volume_uuid)
        if now != self.tx.volume_bytes:
            raise VolumeResized(f"the volume was resized from {self.tx.volume_bytes} to {now} "
                                f"bytes")

    def _resend_if_ack_overdue(self) -> None:
        """TCP does not lose frames, but a broken middlebox can: if nothing has been
        acknowledged for 3 x dead_after_s while records are in flight (heartbeats still
        arrive, so the link is alive), send them again. Generous, so that a full window
        queued on a slow link is not resent for nothing."""
        overdue = 3 * self.cfg.dead_after_s
        if self.tx._inflight and time.monotonic() - self._last_ack > overdue:
            log.warning("volume %s: no ACK for %.1f s, resending from seq %d",
                        self.cfg.volume_uuid, overdue, self.peer_durable + 1)
            self.tx.counters.resends += 1
            self.tx._inflight.clear()
            self.next_seq = self.peer_durable + 1
            self._last_ack = time.monotonic()

    async def _idle(self, seconds: float) -> None:
        await self._heartbeat_if_due()
        await asyncio.sleep(seconds)

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
        if seq >= self.next_seq:
            log.info("volume %s: peer asked to resend from seq %d, already resending from %d",
                     self.cfg.volume_uuid, seq, self.next_seq)
            return
        self.tx.counters.resends += 1
        log.warning("volume %s: peer asked to resend from seq %d", self.cfg.volume_uuid, seq)
        self.next_seq = seq
        inflight = self.tx._inflight
        while inflight and inflight[-1][0] >= seq:
            inflight.pop()

    async def _persist_acks(self) -> None:
        """Persist the peer's durable seq as the journal's acknowledged seq (which lets the
        primary journal reclaim), catching up to the latest ACK each time."""
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            seq = self.peer_durable
            if seq > self.reader.acked_seq:
                await run_blocking(self.reader.acknowledge, seq)
                self.tx.counters.acked_seq = seq

    async def _recv_loop(self) -> None:
        tx, c = self.tx, self.tx.counters
        while True:
            frame = await self.link.recv(self.cfg.dead_after_s)
            if frame.type is FT.HEARTBEAT:
                continue
            if frame.type is FT.ACK:
                durable, applied = wire.decode_ack(frame.payload)
                if durable > c.sent_seq and durable > self.peer_durable:
                    raise wire.BadFrame(f"peer acknowledged seq {durable} beyond what we sent "
                                        f"({c.sent_seq})")
                c.applied_seq = max(c.applied_seq, applied)
                if durable > self.peer_durable:
                    self.peer_durable = durable
                    self._ack_due.set()
                acked = 0
                while tx._inflight and tx._inflight[0][0] <= durable:
                    acked += tx._inflight.popleft()[1]
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


async def run_transmitter(cfg: TransmitterConfig) -> None:
    tx = Transmitter(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, tx.stop)
    main_task = asyncio.create_task(tx.run())
    stop_wait = asyncio.create_task(tx._stop.wait())
    await asyncio.wait([main_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    main_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await main_task
    stop_wait.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliance-transmitter", description=__doc__)
    p.add_argument("--config", required=True, type=Path, help="transmitter TOML configuration")
    p.add_argument("--log-level", default="INFO")
    ns = p.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = transmitter_config(load_toml(ns.config), str(ns.config))
    except ConfigError as err:
        log.error("%s", err)
        return 2
    asyncio.run(run_transmitter(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
