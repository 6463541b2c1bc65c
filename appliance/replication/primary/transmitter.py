"""The transmitter (primary side): ships one volume's journal to the peer, forever.

It reads the journal with a ``JournalReader`` (its own process; it never touches host I/O),
starting at the acknowledged seq persisted in the journal, sends batches with a bounded window
of unacknowledged bytes, and calls ``reader.acknowledge`` only for seqs the receiver reported
durable (or that the admin's ``discard`` dropped after marking their regions dirty). Its
control socket also takes the admin's steering: pause, resume, set, resync, discard, verify
(docs/protocol.md, "Steering the transmitter"). Any failure (refusal, dead link, bad frame, peer restart) drops the link and
reconnects with jittered exponential backoff; the next session starts again from the persisted
acknowledged seq, and the receiver ignores what it already holds, so resends are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import sys
import time

from appliance.control.server import CommandError, ControlServer
from appliance.daemon_entry import (
    argument_parser,
    report_config_error,
    run,
    stop_event_on_signals,
)
from appliance.journal import JournalError, JournalReader, VolumeFiles
from appliance.journal.header import journal_volume_bytes
from appliance.replication import kernel_tls, lost_writes, wire
from appliance.replication.buffers import BufferPool
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
from appliance.replication.link import FrameLink, LinkClosed, run_blocking
from appliance.replication.primary.handler_events import HandlerEvents
from appliance.replication.primary.session import PeerRefused, SessionEnded, TxSession
from appliance.replication.primary.shared import TxShared
from appliance.replication.primary.status_report import (
    PRIMARY_REPORT_FIELDS,
    resync_blocked,
    transmitter_status,
)
from appliance.replication.primary.steering import (
    BitmapRequests,
    DiscardState,
    Pacing,
    chunk_runs,
    parse_settings,
)
from appliance.replication.primary.volume_size import VolumeResized
from appliance.replication.primary.volume_watch import (
    LOGGING_TO_BITMAP,
    UNREADABLE,
    FilesMismatch,
    OldestUnacked,
    VolumeView,
    VolumeWatch,
    resolve_files,
)
from appliance.replication.status import LinkStatus
from appliance.replication.tls import (
    Handshake,
    TlsConfigError,
    TlsRefused,
    TlsSide,
    check_tls_files,
)
from appliance.volume import group_layout
from appliance.volume.errors import VolumeError

log = logging.getLogger("appliance.transmitter")
FT = wire.FrameType
WATCH_INTERVAL_S = 1.0      # how often the volume's journal head and bitmap are read
# Journal read buffers kept for reuse: a batch being sent and one read ahead, with room
# for batch_bytes raised well above its 1 MiB default (more are made, and dropped, past it).
READ_BUFFER_BYTES = 16 * 1024 * 1024


class Transmitter:
    def __init__(self, cfg: TransmitterConfig) -> None:
        self.cfg = cfg
        # The size the journal records (it follows online resizes), read for every HELLO.
        self.shared = TxShared(volume_bytes=cfg.size_bytes, paused=cfg.paused,
                               pacing=Pacing(cfg.bandwidth_limit, cfg.blackout))
        self.session: TxSession | None = None
        self._tls = TlsSide(cfg.tls, server=False) if cfg.tls is not None else None
        self.reader: JournalReader | None = None
        self.control = ControlServer(cfg.control_socket, {
            "status": self.status, "verify": self.start_verify, "pause": self.pause,
            "resume": self.resume, "set": self.set_pacing, "resync": self.full_resync,
            "discard": self.discard})
        self._stop = asyncio.Event()
        # Held by a session from its connection to its end, and by a discard: a discard
        # needs the journal's acknowledged seq to itself.
        self._exclusive = asyncio.Lock()
        # What the primary holds that the peer may lack, as last read from the volume.
        self.watch = VolumeWatch(cfg.journal, cfg.volume_uuid)
        self.view = VolumeView()
        self._oldest_unacked = OldestUnacked()
        self._blocked_logged: str | None = None

    @property
    def link(self) -> LinkStatus:
        return self.shared.link_status

    # --- status -------------------------------------------------------------------------

    def status(self, args: dict) -> dict:
        return transmitter_status(self.cfg, self.shared, self.view, self._oldest_unacked,
                                  connected=self.session is not None)

    # --- steering (the shell's pause, resume, set, resync, discard) -------------------------

    def pause(self, args: dict) -> dict:
        """Control command: stop shipping records and regions; the link stays up (heartbeats
        and PRIMARY_STATE reports, so the DR says it is behind and why)."""
        _no_arguments("pause", args)
        if not self.shared.paused:
            self.shared.paused = True
            log.warning("volume %s: shipping paused by the admin", self.cfg.volume_uuid)
        return {"paused": True}

    def resume(self, args: dict) -> dict:
        """Control command: ship again (after a discard, the resync of the dirty regions)."""
        _no_arguments("resume", args)
        if self.shared.paused:
            self.shared.paused = False
            log.warning("volume %s: shipping resumed by the admin%s", self.cfg.volume_uuid,
                        "; the resync ships the regions of the discarded records"
                        if self.shared.discard else "")
        return {"paused": False, "needs_resync": self.shared.discard is not None}

    def set_pacing(self, args: dict) -> dict:
        """Control command: {"bandwidth_limit": bytes/s or null, "blackout": ["08:00-18:00"]},
        either or both, checked as in the configuration file, applied to the live link."""
        settings = parse_settings(args)
        self.shared.pacing.apply(settings)
        now = self.shared.pacing.as_dict()
        log.warning("volume %s: pacing set by the admin: %s", self.cfg.volume_uuid,
                    ", ".join(f"{k} {now[k]}" for k in settings))
        return now

    async def full_resync(self, args: dict) -> dict:
        """Control command: every chunk dirty (the handler's mark request, as for a peer
        that asks for a full copy); the resync ships them once connected."""
        _no_arguments("resync", args)
        files = self._files_or_refuse("resync")
        requests = self.shared.bitmap_requests(files)
        timeout = self.cfg.resync_clear_timeout_s
        try:
            await run_blocking(lambda: requests.mark_all(timeout=timeout))
        except TimeoutError as err:
            raise CommandError(f"the handler did not mark the volume dirty within {timeout:g} s "
                               f"({err}); check that appliance-handler serves this volume (the "
                               f"request stays and is handled when it does)") from err
        except UNREADABLE as err:
            raise CommandError(f"cannot mark the volume dirty: {type(err).__name__}: {err} "
                               f"(nothing changed)") from err
        log.warning("volume %s: full resync asked for by the admin: every chunk is dirty",
                    self.cfg.volume_uuid)
        await self._look_at_volume()
        return {"resync": "every chunk dirty", "dirty_bytes": self.view.dirty_bytes,
                "shipped": "now" if self.session is not None and not self.shared.paused
                else "once connected and not paused"}

    async def discard(self, args: dict) -> dict:
        """Control command: drop the records queued for the peer (paused only). Their
        chunks are marked dirty first, durably; then the acknowledged seq passes them, which
        frees their journal space. The volume then needs a resync (resume ships it)."""
        _no_arguments("discard", args)
        if not self.shared.paused:
            raise CommandError("pause first: discard drops the records queued for the peer "
                               "and needs shipping paused (pause, then discard; resume ships "
                               "their regions by a resync); nothing changed")
        files = self._files_or_refuse("discard")
        await self._end_sessions_and_hold("discard")
        try:
            if not self.shared.paused:
                raise CommandError("shipping was resumed meanwhile: pause first; nothing "
                                   "changed")
            requests = self.shared.bitmap_requests(files)
            reader = await run_blocking(self._open_reader)
            try:
                result = await run_blocking(self._discard, reader, requests, files)
            except TimeoutError as err:
                raise CommandError(
                    f"the handler did not mark the regions of the queued records dirty in "
                    f"time ({err}): nothing was discarded, the records stay queued; check "
                    f"that appliance-handler serves this volume") from err
            except UNREADABLE as err:
                raise CommandError(f"discard failed before the records were dropped: "
                                   f"{type(err).__name__}: {err}; they stay queued") from err
        finally:
            self._exclusive.release()
        await self._look_at_volume()
        return {**result, "needs_resync": self.shared.discard is not None,
                "dirty_bytes": self.view.dirty_bytes}

    async def _end_sessions_and_hold(self, why: str) -> None:
        """Take the journal for ourselves: end the session (also one that connects while we
        wait) until the lock is ours. The caller releases it."""
        while True:
            if self.session is not None:
                self.session.end(why)
            try:
                await asyncio.wait_for(self._exclusive.acquire(), 0.2)
                return
            except TimeoutError:
                continue

    def _discard(self, reader: JournalReader, requests: BitmapRequests,
                 files: VolumeFiles) -> dict:
        """(In a worker thread, no session running.) Mark the chunks of every record above
        the acknowledged seq dirty, until the writer logs to the bitmap and every record up
        to its overflow_seq is marked; persist the discard; acknowledge."""
        acked, bs = reader.acked_seq, self.cfg.block_size
        backlog = reader.backlog_bytes(acked + 1)
        covered = acked
        timeout = self.cfg.resync_clear_timeout_s
        for _ in range(100):
            extents = []
            while records := reader.read(covered + 1, 4 << 20):
                extents += [(r.op.lba, r.op.nblocks) for r in records]
                covered = records[-1].seq
            if covered == acked:
                return {"discarded_records": 0, "discarded_bytes": 0, "acked_seq": acked}
            header = requests.header()
            if extents:
                requests.mark(chunk_runs(extents, bs, header.chunk_size, header.num_chunks),
                              timeout=timeout)
            snap = requests.snapshot()
            if snap.logging and covered >= snap.overflow_seq:
                break       # the writer journals nothing more: every record is marked
            time.sleep(0.01)
        else:
            raise TimeoutError(f"the journal kept growing past seq {covered} although the "
                               f"writer was asked to log to the bitmap")
        state = DiscardState(acked + 1, covered, covered - acked, backlog, time.time())
        if self.shared.discard is not None:
            state = self.shared.discard.merged(state)
        state.save(files.bitmap)            # before the acknowledgement: never a gap unknown
        self.shared.discard = state
        reader.acknowledge(covered)
        self.shared.counters.acked_seq = covered
        log.warning("volume %s: discarded by the admin: %d journal records (seqs %d..%d, %d "
                    "journal bytes) will not be shipped; their regions are dirty in the bitmap "
                    "and a resync ships them after resume", self.cfg.volume_uuid,
                    covered - acked, acked + 1, covered, backlog)
        return {"discarded_records": covered - acked, "discarded_bytes": backlog,
                "acked_seq": covered}

    def _files_or_refuse(self, what: str) -> VolumeFiles:
        if self.shared.files is None:
            raise CommandError(f"{what} needs the volume's bitmap: " + (
                self.shared.files_problem or "the volume's journal names no mirror and bitmap")
                + "; nothing changed")
        return self.shared.files

    def primary_report(self) -> dict:
        """What the DR needs to say truthfully whether it is behind (PRIMARY_STATE)."""
        st = self.status({})
        return {k: st[k] for k in PRIMARY_REPORT_FIELDS}

    def start_verify(self, args: dict) -> dict:
        """Control command: {"repair": false, "region_bytes": 1048576}."""
        repair = args.get("repair", False)
        region = args.get("region_bytes", 1 << 20)
        if not isinstance(repair, bool):
            raise CommandError("repair must be true or false")
        if (not isinstance(region, int) or region <= 0 or region % self.cfg.block_size
                or region > 16 << 20):
            raise CommandError(f"region_bytes must be a multiple of {self.cfg.block_size} "
                               f"up to 16 MiB")
        if self.shared.files is None:
            raise CommandError("verify needs the volume's mirror: " + (
                self.shared.files_problem or "the volume's journal names no mirror and bitmap"))
        if self.session is None or self.link.state != "replicating":
            raise CommandError(f"not connected to the peer (state {self.link.state}); "
                               f"verify runs over a live link")
        if self.shared.verify.state == "running":
            raise CommandError("a verify is already running")
        self.session.start_verify(region, repair)
        return {"started": True, "regions": -(-self.shared.volume_bytes // region)}

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        self.shared.handler = HandlerEvents(self.cfg.volume_uuid)
        self.shared.handler.start()
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
                except SessionEnded as err:
                    log.info("volume %s: session ended for a %s; reconnecting",
                             self.cfg.volume_uuid, err)
                    continue
                except PeerRefused as err:
                    # The state and its reason together: the link's close in between awaits,
                    # and a status read there showed the refusal with the last link error.
                    if err.code is not None:
                        self.link.set_state(f"refused:{err.code}")
                    self._failed(_refusal_message(err), logging.ERROR)
                    if err.code == "promoted":
                        await self._report_lost_writes(err.details.get("promoted_at_seq"))
                except TlsRefused as err:     # a certificate not pinned (or not trusted)
                    self.link.set_state("refused:certificate")
                    self._failed(f"TLS: {err}", logging.ERROR)
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
            self.shared.close_requests()
            self.shared.handler.close()
            await self.control.close()

    # --- the volume's own state -----------------------------------------------------------

    async def _watch_volume(self) -> None:
        """Read the volume's journal head and bitmap every WATCH_INTERVAL_S, for status and
        for the warnings an admin must see (logging to the bitmap, a blocked resync)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            await self._look_at_volume()

    async def _look_at_volume(self) -> None:
        shared = self.shared
        await asyncio.to_thread(self.find_files)
        view = await asyncio.to_thread(self.watch.poll, shared.counters.acked_seq,
                                       shared.files, shared.volume_bytes)
        self._log_changes(self.view, view)
        self.view = view
        self._oldest_unacked.observe(max(view.head_seq, shared.counters.head_seq),
                                     shared.counters.acked_seq)
        blocked = resync_blocked(shared, view, connected=self.session is not None)
        if blocked != self._blocked_logged and blocked is not None:
            log.warning("volume %s: dirty regions cannot be resynced: %s", self.cfg.volume_uuid,
                        blocked)
        self._blocked_logged = blocked

    def find_files(self) -> None:
        """The mirror and bitmap as the volume's journal names them (in a worker thread)."""
        shared = self.shared
        try:
            published = self.watch.published_files()
        except UNREADABLE as err:               # no journal yet, or not readable
            shared.files_problem = f"the journal cannot be read: {type(err).__name__}: {err}"
            self.watch.close()
            return
        try:
            files = resolve_files(published, self.cfg.mirror, self.cfg.bitmap,
                                  "transmitter config")
            if files is not None and files != shared.files:
                shared.discard = self._pending_discard(files)
            shared.files = files
            shared.files_problem = None
        except FilesMismatch as err:
            if shared.files_problem != str(err):
                log.error("volume %s: %s", self.cfg.volume_uuid, err)
            shared.files, shared.files_problem = None, str(err)

    def _pending_discard(self, files: VolumeFiles) -> DiscardState | None:
        """A discard whose seqs the peer may still lack (it survives restarts)."""
        try:
            return DiscardState.load(files.bitmap)
        except (OSError, ValueError) as err:
            # Without it the next HELLO starts after the discarded seqs: the peer refuses
            # that (resync-needed) rather than diverging, and says what to do.
            log.error("volume %s: %s", self.cfg.volume_uuid, err)
            return None

    def _log_changes(self, old: VolumeView, new: VolumeView) -> None:
        vol = self.cfg.volume_uuid
        if new.volume_state == LOGGING_TO_BITMAP and old.volume_state != LOGGING_TO_BITMAP:
            since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(new.logging_since))
                     if new.logging_since else "an unknown time")
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

    async def _report_lost_writes(self, promoted_at_seq: object) -> None:
        """The DR was promoted at ``promoted_at_seq``: list what this journal holds beyond it
        (docs/failover.md, "What a failover lost"), once per promotion."""
        if isinstance(promoted_at_seq, bool) or not isinstance(promoted_at_seq, int):
            return          # a receiver of an earlier release: its reason names the seq
        done = self.shared.lost_writes
        if done is not None and done.get("promoted_at_seq") == promoted_at_seq:
            return
        try:
            summary = await asyncio.to_thread(self._write_lost_writes, promoted_at_seq)
        except (OSError, JournalError) as err:
            log.error("volume %s: the lost-write report could not be written: %s: %s",
                      self.cfg.volume_uuid, type(err).__name__, err)
            return
        self.shared.lost_writes = summary
        log.error("volume %s: the DR was promoted at seq %d; %d writes (%d bytes) and %d dirty "
                  "regions of this volume never reached it: %s", self.cfg.volume_uuid,
                  promoted_at_seq, summary["writes"], summary["bytes"],
                  summary["dirty_regions"], summary["text"])

    def _write_lost_writes(self, promoted_at_seq: int) -> dict:
        cfg = self.cfg
        directory, name = cfg.lost_write_dir, cfg.name or str(cfg.volume_uuid)
        found = lost_writes.existing(directory, name, promoted_at_seq)
        if found is not None:
            return found
        report = lost_writes.LostWriteReport(
            volume=name, volume_uuid=str(cfg.volume_uuid), block_size=cfg.block_size,
            promoted_at_seq=promoted_at_seq, promoted_by=cfg.peer_identity,
            head_seq=promoted_at_seq, written_at=time.time())
        data = lost_writes.stem(directory, name, promoted_at_seq).with_suffix(".data")
        lost_writes.collect(self._open_reader(), report, data_out=data)
        if data.stat().st_size:
            report.data_file = str(data)
        else:
            data.unlink()
        if self.shared.files is not None:
            report.dirty_regions = self.watch.dirty_regions(self.shared.files,
                                                            self.shared.volume_bytes)
        return report.summary(lost_writes.write(report, directory))

    def _failed(self, message: str, level: int) -> None:
        self.link.error(message)
        log.log(level, "volume %s: %s", self.cfg.volume_uuid, message)

    def _open_reader(self) -> JournalReader:
        if self.reader is None:
            # Reads go into reused buffers (no fresh zeroed memory per read); the batch being
            # sent and the one read ahead hold theirs until sent (session._read_batch).
            self.reader = JournalReader(self.cfg.journal, volume_uuid=self.cfg.volume_uuid,
                                        buffers=BufferPool(READ_BUFFER_BYTES))
        return self.reader

    async def _session(self) -> None:
        async with self._exclusive:
            await self._connected_session()

    async def _connected_session(self) -> None:
        reader = await asyncio.to_thread(self._open_reader)
        await asyncio.to_thread(self.find_files)
        self.shared.counters.acked_seq = reader.acked_seq
        self.shared.volume_bytes = await asyncio.to_thread(journal_volume_bytes, self.cfg.journal,
                                                           self.cfg.volume_uuid)
        if not self.link.state.startswith("refused"):   # keep saying why until admitted
            self.link.set_state("connecting")
        tls = self._tls.handshake() if self._tls is not None else None
        stream_in, stream_out, certificate = await self._connect(tls)
        link = FrameLink(stream_in, stream_out, limiter=self.shared.pacing.limiter)
        established = False
        try:
            if tls is not None:
                tls.check(certificate)          # only the pinned certificates
            welcome = await self._handshake(link, reader, tls)
            self.link.connects += 1
            established = True
            self.link.peer = link.peer
            self.link.set_state("replicating")
            log.info("volume %s: connected to %s (%s) at seq %d%s", self.cfg.volume_uuid,
                     welcome.identity, link.peer, welcome.last_seq,
                     ", zstd" if welcome.compression else "")
            self.session = TxSession(self.cfg, self.shared, link, reader, welcome,
                                     self.primary_report)
            await self.session.run()
        finally:
            self.session = None
            self.shared.inflight.clear()
            if established:
                self.link.disconnects += 1
            await link.close()

    async def _connect(self, tls: Handshake | None):
        """The connection's streams and the peer's certificate (for ``Handshake.check``):
        TLS in the kernel (``[tls] kernel``), asyncio's, or none; the status says which."""
        host, port = self.cfg.peer
        try:
            if tls is not None and tls.side.in_kernel:
                try:
                    session = await asyncio.wait_for(kernel_tls.client_session(
                        host, port, tls.context, self.cfg.peer_identity,
                        self.cfg.dead_after_s), self.cfg.dead_after_s)
                except kernel_tls.KernelTlsIncomplete as err:
                    tls.side.kernel_incomplete(err, f"volume {self.cfg.volume_uuid}")
                    raise
                self.link.tls = session.description
                stream_in, stream_out = await kernel_tls.open_streams(session, 1 << 20)
                return stream_in, stream_out, session.peer
            stream_in, stream_out = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls.context if tls else None,
                                        limit=1 << 20,
                                        server_hostname=self.cfg.peer_identity if tls else None),
                self.cfg.dead_after_s)
        except (ssl.SSLError, ConnectionError) as err:
            if tls is not None and tls.refused(err):
                raise TlsRefused(tls.failure(err)) from err
            raise
        ssl_object = stream_out.get_extra_info("ssl_object")
        self.link.tls = tls.side.user_space(ssl_object) if tls is not None else None
        return stream_in, stream_out, ssl_object

    async def _handshake(self, link: FrameLink, reader: JournalReader,
                         tls: Handshake | None = None) -> Welcome:
        first_seq = reader.acked_seq + 1
        if self.shared.discard is not None:     # the discarded seqs go as placeholders
            first_seq = min(first_seq, self.shared.discard.from_seq)
        base, changed = await run_blocking(self._journal_base, reader)
        hello = Hello(identity=self.cfg.identity, volume_uuid=self.cfg.volume_uuid,
                      size_bytes=self.shared.volume_bytes, block_size=self.cfg.block_size,
                      generation=self.cfg.generation, first_seq=first_seq,
                      compression=COMPRESSIONS if self.cfg.compression else (),
                      name=self.cfg.name, base=base, changed=changed,
                      group=await run_blocking(self._group_members))
        await link.send_json(FT.HELLO, hello.to_dict())
        try:
            frame = await link.recv(self.cfg.dead_after_s)
        except LinkClosed as err:
            # Dropped before any answer: what a receiver does with a certificate it refuses.
            if tls is None or isinstance(err.__cause__, TimeoutError):
                raise
            raise TlsRefused(tls.ours_refused(str(err))) from err
        if frame.type is FT.REFUSE:
            body = wire.decode_json(frame.payload)
            raise PeerRefused(f"{body.get('code')}: {body.get('reason')}", body.get("code"),
                              body)
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
        self.shared.counters.acked_seq = reader.acked_seq
        self.shared.counters.applied_seq = welcome.applied_seq
        self.shared.peer_needs_resync = welcome.inconsistent or welcome.full_copy
        return welcome


    def _group_members(self) -> dict | None:
        """A consistency group's members, as the HELLO names them (docs/groups.md): the
        volume's journal names a group layout as its mirror."""
        files = self.shared.files
        if files is None or not group_layout.is_layout_path(files.mirror):
            return None
        layout = group_layout.load(files.mirror)
        return {"name": layout.name, "align_blocks": layout.align_blocks,
                "members": [{"name": m.name, "offset_blocks": m.offset_blocks,
                             "num_blocks": m.num_blocks} for m in layout.members]}

    def _journal_base(self, reader: JournalReader) -> tuple[dict | None, dict | None]:
        """The promoted image this volume's journal starts from (the handler adopted a
        promoted mirror: its bitmap header says so), and what changed since, for the HELLO;
        (None, None) for a journal that starts from a blank disk or a fully marked one."""
        files = self.shared.files
        if files is None:
            return None, None
        requests = self.shared.bitmap_requests(files)
        base = requests.header().base
        if base is None:
            return None, None
        snap = requests.snapshot()
        return base.to_dict(), {"head_seq": reader.durable_seq - 1,
                                "dirty_bytes": snap.dirty_chunks * snap.chunk_size}


def _no_arguments(command: str, args: dict) -> None:
    if args:
        raise CommandError(f"{command} takes no arguments (got {', '.join(sorted(args))}); "
                           f"nothing changed")


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
    except UNREADABLE:
        pass        # no journal yet: the handler creates it
    finally:
        watch.close()


async def run_transmitter(cfg: TransmitterConfig) -> None:
    tx = Transmitter(cfg)
    stop = stop_event_on_signals()
    main_task = asyncio.create_task(tx.run())
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([main_task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    tx.stop()
    main_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await main_task
    stop_wait.cancel()


def main(argv: list[str] | None = None) -> int:
    args = argument_parser("appliance-transmitter", __doc__,
                           config_help="transmitter TOML configuration").parse_args(argv)

    def load() -> TransmitterConfig:
        cfg = transmitter_config(load_toml(args.config), str(args.config))
        check_files(cfg, str(args.config))      # other files than the journal's: refused
        check_tls_files(cfg.tls, server=False, config_path=str(args.config))
        return cfg

    def serve(cfg: TransmitterConfig) -> int:
        try:
            asyncio.run(run_transmitter(cfg))
        except TlsConfigError as err:       # a [tls] file missing or unusable (first thing done)
            return report_config_error("appliance-transmitter",
                                       ConfigError(f"{args.config}: {err}"))
        return 0

    return run("appliance-transmitter", args, load, serve)


if __name__ == "__main__":
    sys.exit(main())
