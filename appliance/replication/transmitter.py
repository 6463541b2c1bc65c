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
import logging
import random
import signal
import ssl
import sys
import time
from collections import deque
from pathlib import Path

from appliance.control.server import CommandError, ControlServer
from appliance.journal import JournalError, JournalReader, VolumeFiles
from appliance.replication import wire
from appliance.replication.config import (
    ConfigError,
    TransmitterConfig,
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
from appliance.replication.resync import ResyncProgress
from appliance.replication.status import LinkStatus, RateMeter, TransmitterCounters
from appliance.replication.tls import client_context
from appliance.replication.tx_session import PeerRefused, TxSession
from appliance.replication.verify import VerifyReport
from appliance.replication.volume_size import VolumeResized, journal_volume_bytes
from appliance.replication.volume_watch import (
    LOGGING_TO_BITMAP,
    FilesMismatch,
    OldestUnacked,
    VolumeView,
    VolumeWatch,
    resolve_files,
)
from appliance.volume.errors import VolumeError

log = logging.getLogger("appliance.transmitter")
FT = wire.FrameType
WATCH_INTERVAL_S = 1.0      # how often the volume's journal head and bitmap are read


class Transmitter:
    def __init__(self, cfg: TransmitterConfig) -> None:
        self.cfg = cfg
        self.link = LinkStatus()
        self.counters = TransmitterCounters()
        self.resync_progress = ResyncProgress()
        self.verify_report = VerifyReport()
        self.session: TxSession | None = None
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
        # The volume's mirror and bitmap, as its journal names them (None: unknown, and then
        # ``files_problem`` says why), and what the primary holds that the peer may lack.
        self.files: VolumeFiles | None = None
        self.files_problem: str | None = None
        self.watch = VolumeWatch(cfg.journal, cfg.volume_uuid)
        self.view = VolumeView()
        self._oldest_unacked = OldestUnacked()
        self._blocked_logged: str | None = None
        # The peer's last WELCOME asked for a full copy or the end of an interrupted resync.
        self.peer_needs_resync = False

    # --- status -------------------------------------------------------------------------

    def status(self, args: dict) -> dict:
        """Everything derives from what the primary holds that the peer has not made durable
        (docs/protocol.md, "What status derives from"): "in sync" only when that is nothing."""
        c, view = self.counters, self.view
        inflight_bytes = sum(b for _, b, _ in self._inflight)
        head = max(c.head_seq, view.head_seq)
        lag_records = max(0, head - c.acked_seq)
        lag_bytes: int | None = None        # unknown while the volume cannot be read
        if view.error is None:
            lag_bytes = max(inflight_bytes, view.backlog_bytes if lag_records else 0) \
                + view.dirty_bytes
        behind = self.behind_reason(lag_records)
        return {
            "role": "transmitter", "identity": self.cfg.identity,
            "volume_uuid": str(self.cfg.volume_uuid), "peer": "{}:{}".format(*self.cfg.peer),
            "size_bytes": self.volume_bytes,
            "link": self.link.as_dict(), **c.__dict__, "head_seq": head,
            "in_sync": behind is None, "behind_reason": behind,
            "volume_state": view.volume_state, "dirty_bytes": view.dirty_bytes,
            "logging_since": view.logging_since,
            "mirror": self.files.mirror if self.files else None,
            "bitmap": self.files.bitmap if self.files else None,
            "resync_blocked": self.resync_blocked(),
            "lag_records": lag_records, "lag_bytes": lag_bytes,
            "lag_bytes_in_flight": inflight_bytes,
            "recovery_point_age_s": self.recovery_point_age(lag_records),
            "lag_seconds": self.recovery_point_age(lag_records),
            "throughput_bytes_per_s": round(self.rate.rate()),
            "bandwidth_limit": self.cfg.bandwidth_limit,
            "resync": self.resync_progress.as_dict(),
            "verify": self.verify_report.as_dict(),
        }

    def behind_reason(self, lag_records: int) -> str | None:
        """Why the peer may lack writes the primary holds; None only when it lacks none."""
        view, state = self.view, self.link.state
        if view.error is not None:
            return f"the volume's files cannot be read: {view.error}"
        if view.volume_state == LOGGING_TO_BITMAP or view.dirty_bytes:
            return (f"{view.dirty_bytes} bytes of dirty regions (logging to the bitmap) are "
                    f"not at the peer yet")
        if lag_records:
            return f"{lag_records} journal records are not acknowledged by the peer yet"
        if self._inflight:
            return "records in flight"
        if state != "replicating":
            return f"the link is not replicating (state {state})"
        if self.resync_progress.state not in ("idle", "completed"):
            return f"resync {self.resync_progress.state}"
        return None

    def resync_blocked(self) -> str | None:
        """Why dirty regions cannot be shipped now (None: they can, or there are none)."""
        view, state = self.view, self.link.state
        if view.volume_state != LOGGING_TO_BITMAP and not view.dirty_bytes \
                and not self.peer_needs_resync:
            return None
        if self.files is None:
            return self.files_problem or (
                "cannot resync: the volume's journal names no mirror and bitmap (written by "
                "a handler older than that); restart appliance-handler so it names them")
        if state.startswith("refused"):
            return f"the peer refuses this volume ({state}): {self.link.last_error}"
        if self.session is None:
            last = f"; last error: {self.link.last_error}" if self.link.last_error else ""
            return f"waiting for the link to the peer (state {state}{last})"
        return None

    def recovery_point_age(self, lag_records: int) -> float | None:
        """Seconds since the oldest write the peer has not made durable (0: none). While
        regions are dirty, since logging to the bitmap began (None if unknown)."""
        now = time.time()
        ages = []
        if self.view.volume_state == LOGGING_TO_BITMAP or self.view.dirty_bytes:
            since = self.view.logging_since
            if since is None:
                return None
            ages.append(now - since)
        if self._inflight:
            ages.append(now - self._inflight[0][2] / 1e9)
        if lag_records and (seen := self._oldest_unacked.since()) is not None:
            ages.append(now - seen)
        return round(max(0.0, *ages), 3) if ages else 0.0

    def primary_report(self) -> dict:
        """What the DR needs to say truthfully whether it is behind (PRIMARY_STATE)."""
        st = self.status({})
        return {k: st[k] for k in ("head_seq", "acked_seq", "volume_state", "dirty_bytes",
                                   "logging_since", "lag_records", "lag_bytes",
                                   "recovery_point_age_s", "behind_reason")}

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
        if self.files is None:
            raise CommandError("verify needs the volume's mirror: " + (
                self.files_problem or "the volume's journal names no mirror and bitmap"))
        if self.session is None or self.link.state != "replicating":
            raise CommandError(f"not connected to the peer (state {self.link.state}); "
                               f"verify runs over a live link")
        if self.verify_report.state == "running":
            raise CommandError("a verify is already running")
        self.session.start_verify(region, repair)
        return {"started": True, "regions": -(-self.volume_bytes // region)}

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        await self._look_at_volume()        # status has the volume's state from the start
        await self.control.start()
        watching = asyncio.create_task(self._watch_volume())
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
                    self._failed(_refusal_message(err), logging.ERROR)
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
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            self.watch.close()
            if self.reader is not None:
                self.reader.close()
            await self.control.close()

    # --- the volume's own state -----------------------------------------------------------

    async def _watch_volume(self) -> None:
        """Read the volume's journal head and bitmap every WATCH_INTERVAL_S, for status and
        for the warnings an admin must see (logging to the bitmap, a blocked resync)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self._look_at_volume()

    async def _look_at_volume(self) -> None:
        await asyncio.to_thread(self.find_files)
        view = await asyncio.to_thread(self.watch.poll, self.counters.acked_seq, self.files,
                                       self.volume_bytes)
        self._log_changes(self.view, view)
        self.view = view
        self._oldest_unacked.observe(max(view.head_seq, self.counters.head_seq),
                                     self.counters.acked_seq)
        blocked = self.resync_blocked()
        if blocked != self._blocked_logged and blocked is not None:
            log.warning("volume %s: dirty regions cannot be resynced: %s", self.cfg.volume_uuid,
                        blocked)
        self._blocked_logged = blocked

    def find_files(self) -> None:
        """The mirror and bitmap as the volume's journal names them (in a worker thread)."""
        try:
            published = self.watch.published_files()
        except (OSError, ValueError) as err:    # no journal yet, or not readable
            self.files_problem = f"the journal cannot be read: {type(err).__name__}: {err}"
            self.watch.close()
            return
        try:
            self.files = resolve_files(published, self.cfg.mirror, self.cfg.bitmap,
                                       "transmitter config")
            self.files_problem = None
        except FilesMismatch as err:
            if self.files_problem != str(err):
                log.error("volume %s: %s", self.cfg.volume_uuid, err)
            self.files, self.files_problem = None, str(err)

    def _log_changes(self, old: VolumeView, new: VolumeView) -> None:
        vol = self.cfg.volume_uuid
        if new.volume_state == LOGGING_TO_BITMAP and old.volume_state != LOGGING_TO_BITMAP:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(new.logging_since)) \
                if new.logging_since else "an unknown time"
            log.warning("volume %s: the primary logs writes to its dirty-region bitmap since "
                        "%s (%d bytes dirty): the DR copy is behind until the resync ships "
                        "them", vol, since, new.dirty_bytes)
        elif old.volume_state == LOGGING_TO_BITMAP and new.volume_state != LOGGING_TO_BITMAP:
            log.warning("volume %s: every dirty region reached the peer; journaling again",
                        vol)
        if new.error and new.error != old.error:
            log.warning("volume %s: cannot read the volume's files: %s", vol, new.error)

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
        await asyncio.to_thread(self.find_files)
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
            self.session = TxSession(self, link, reader, welcome)
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
            raise PeerRefused(f"{body.get('code')}: {body.get('reason')}", body.get("code"))
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
        self.peer_needs_resync = welcome.inconsistent or welcome.full_copy
        return welcome


def _refusal_message(err: PeerRefused) -> str:
    if err.code == "promoted":
        # The fence: the DR site failed over. Nothing of ours may land on its image again.
        return (f"fenced off: the peer promoted its replica of this volume (a failover), so "
                f"this primary replicates nothing more; host I/O here is unaffected. To make "
                f"this site the DR of the new primary see docs/failover.md. Peer refused: {err}")
    return f"peer refused: {err}"


def check_files(cfg: TransmitterConfig, where: str) -> None:
    """Refuse a configuration whose 'mirror'/'bitmap' are not the volume's (when its journal
    can be read now; otherwise the transmitter checks again at every connection)."""
    watch = VolumeWatch(cfg.journal, cfg.volume_uuid)
    try:
        resolve_files(watch.published_files(), cfg.mirror, cfg.bitmap, where)
    except FilesMismatch as err:
        raise ConfigError(str(err)) from err
    except (OSError, ValueError):
        pass        # no journal yet: the handler creates it
    finally:
        watch.close()


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
        check_files(cfg, str(ns.config))
    except ConfigError as err:
        log.error("%s", err)
        return 2
    asyncio.run(run_transmitter(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
