"""The receiver (DR side): a TCP server taking replication links from any number of primaries.

Per connection: TLS (mutual certificates), HELLO, admission (``handshake.admit``), then a
session that verifies each BATCH, orders records (``apply.SeqOrderer``), commits contiguous runs
durably to the replica journal, acknowledges, and applies them to the mirror. Volumes are
isolated: each has its own replica, its own lock, and at most one live session; a reconnect by
the bound primary replaces its old (probably dead) session, any other primary is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from pathlib import Path

from appliance.control.server import ControlServer
from appliance.daemon_entry import (
    argument_parser,
    report_config_error,
    run,
    stop_event_on_signals,
)
from appliance.journal import JournalError
from appliance.replication import kernel_tls, wire
from appliance.replication.config import (
    ConfigError,
    ReceiverConfig,
    load_toml,
    receiver_config,
)
from appliance.replication.dr import failback_admission, provisioned
from appliance.replication.dr.provisioned import replica_configs
from appliance.replication.dr.receiver_admin import ReceiverAdmin, VolumeSlot
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.session import Session, SessionError
from appliance.replication.dr.sync_state import dr_sync_status
from appliance.replication.handshake import HandshakeError, Hello, Refused, VolumeSpec, admit
from appliance.replication.link import FrameLink, LinkClosed, run_blocking
from appliance.replication.tls import (
    NO_PEER_PAIRED,
    Handshake,
    TlsConfigError,
    TlsRefused,
    TlsSide,
    check_tls_files,
    peer_identities,
)
from appliance.volume.promotion_base import PromotionBase

log = logging.getLogger("appliance.receiver")
FT = wire.FrameType
LIMIT = 1 << 20         # a connection's stream buffer (what a header read may hold)


class _PausedAtFirst(asyncio.StreamReaderProtocol):
    """An accepted connection whose transport reads nothing until ``Receiver._accept`` has
    chosen its TLS: asyncio's (``start_tls``), the kernel's (the socket then leaves the
    transport, and a ClientHello already read into it would be lost), or none
    (``resume_reading``). (The transport starts reading only after ``connection_made``.)"""

    def connection_made(self, transport) -> None:
        transport.pause_reading()
        super().connection_made(transport)


class Receiver(ReceiverAdmin):
    def __init__(self, cfg: ReceiverConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path      # what ``reload`` reads again
        self.slots: dict[uuid.UUID, VolumeSlot] = {}
        self._tls = TlsSide(cfg.tls, server=True) if cfg.tls is not None else None
        self._server: asyncio.base_events.Server | None = None
        self.refusals = 0
        # Volumes offered by primaries that have no slot here, refused: uuid -> the last one.
        self.offers: dict[uuid.UUID, dict] = {}
        self._provisioning = asyncio.Lock()
        self.control = ControlServer(cfg.control_socket,
                                     {"status": self.status, **self.admin_commands()})

    async def start(self) -> None:
        if self._tls is not None and self._tls.pins == ():
            log.warning("receiver %s: %s (pair a primary: [tls] peers)", self.cfg.identity,
                        NO_PEER_PAIRED)
        found = await asyncio.to_thread(replica_configs, self.cfg.state_dir, self.cfg.volumes)
        for vcfg, spec in found:
            replica = await asyncio.to_thread(Replica, vcfg)
            self.slots[vcfg.spec.uuid] = VolumeSlot(replica, spec)
        host, port = self.cfg.listen
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _PausedAtFirst(asyncio.StreamReader(limit=LIMIT), self._accept), host, port)
        await self.control.start()
        log.info("receiver %s listening on %s:%d (%s), %d volume(s)", self.cfg.identity, host,
                 self.port, self._tls.describe() if self._tls else "NO TLS", len(self.slots))

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not listening: start() it first")
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for slot in self.slots.values():
            if slot.session is not None:
                slot.session.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await slot.session
        await self.control.close()
        for slot in self.slots.values():
            await asyncio.to_thread(slot.replica.close)

    def status(self, args: dict) -> dict:
        return {"role": "receiver", "identity": self.cfg.identity, "refusals": self.refusals,
                "provision": self.cfg.provision,
                "refused_offers": [dict(o) for o in self.offers.values()],
                "volumes": {str(u): self.volume_status(s) for u, s in self.slots.items()}}

    def volume_status(self, slot: VolumeSlot) -> dict:
        if slot.busy is not None:       # its replica is closed while an operation runs
            return {**(slot.snapshot or {}), "link": slot.link.as_dict(), "busy": slot.busy}
        replica = slot.replica.status()
        return {**replica, "name": slot.name, "provisioned": slot.provisioned is not None,
                "busy": None, "recovering": slot.recovering, "link": slot.link.as_dict(),
                **dr_sync_status(replica, slot.link.state, slot.link.state_since,
                                 slot.primary_report, stale_after_s=self.report_stale_after_s)}

    @property
    def report_stale_after_s(self) -> float:
        """A primary reports every heartbeat: two and a half heartbeats without one and
        "in sync" can no longer be claimed (a cut link is only declared dead later)."""
        return min(self.cfg.dead_after_s, 2.5 * self.cfg.heartbeat_s)

    # --- connection ---------------------------------------------------------------------

    def _refuse_log(self, peer: str, why: str) -> None:
        self.refusals += 1
        log.warning("refused connection from %s: %s", peer, why)

    async def _refuse(self, link: FrameLink, peer: str, hello: Hello, err: Refused,
                      slot: VolumeSlot | None) -> None:
        """Log, count and send a REFUSE; an offer of a volume without a slot is remembered
        (status ``refused_offers``)."""
        self._refuse_log(peer, f"primary {hello.identity!r}, volume {hello.volume_uuid}: "
                               f"{err.code}: {err.reason}")
        if slot is not None:
            slot.link.error(f"refused {hello.identity!r} from {peer}: {err}")
        else:
            offer = self.offers.get(hello.volume_uuid) or {"volume": str(hello.volume_uuid),
                                                           "count": 0}
            offer.update(name=hello.name, primary=hello.identity, peer=peer, code=err.code,
                         reason=err.reason, size_bytes=hello.size_bytes,
                         block_size=hello.block_size, count=offer["count"] + 1,
                         last_at=time.time())
            self.offers[hello.volume_uuid] = offer
        await link.send_json(FT.REFUSE, {**err.details, "code": err.code, "reason": err.reason})

    def _admit(self, hello: Hello, cert_names: set[str] | None, slot: VolumeSlot | None,
               base_extents: list[tuple[int, int]] | None = None):
        return admit(hello, cert_names=cert_names,
                     spec=slot.replica.current_spec() if slot else None,
                     binding=slot.replica.binding() if slot else None,
                     receiver_identity=self.cfg.identity, heartbeat_s=self.cfg.heartbeat_s,
                     allow_compression=self.cfg.compression, base_extents=base_extents)

    async def _offered(self, hello: Hello, cert_names: set[str] | None) -> VolumeSlot:
        """A volume without a slot: with ``provision`` on, create its replica (refused with
        the reason otherwise, nothing created)."""
        if not self.cfg.provision:
            self._admit(hello, cert_names, None)        # raises unknown-volume
        _refuse_promoted_copy_of_ours(hello, self.cfg.local_primaries)
        async with self._provisioning:
            slot = self.slots.get(hello.volume_uuid)
            if slot is not None:                        # provisioned meanwhile
                return slot
            geometry = f"{hello.size_bytes} bytes in {hello.block_size}-byte blocks"
            if hello.block_size not in (512, 4096) or hello.size_bytes % hello.block_size:
                raise Refused("geometry", f"volume {hello.volume_uuid}: cannot provision a "
                                          f"replica of {geometry} (block size 512 or 4096, "
                                          f"size a multiple of it)")
            # Would this primary be admitted to such a replica (protocol, proved identity)?
            admit(hello, cert_names=cert_names,
                  spec=VolumeSpec(hello.volume_uuid, hello.size_bytes, hello.block_size,
                                  frozenset({hello.identity})),
                  binding=None, receiver_identity=self.cfg.identity,
                  heartbeat_s=self.cfg.heartbeat_s)
            state_dir = self.cfg.state_dir
            created = False
            try:
                spec = await asyncio.to_thread(provisioned.create, state_dir, hello,
                                               self.cfg.provision_journal_size)
                created = True
                replica = await asyncio.to_thread(Replica, spec.replica_config(state_dir))
            except (OSError, ReplicaError, JournalError) as err:
                if created:
                    await asyncio.to_thread(provisioned.discard_new, state_dir,
                                            hello.volume_uuid)
                if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                    raise Refused("no-space", f"creating the replica of {geometry} in "
                                              f"{state_dir} failed: {err.strerror}: free space "
                                              f"or provision a replica on a block "
                                              f"device") from err
                log.error("volume %s: provisioning a replica in %s failed: %s",
                          hello.volume_uuid, state_dir, err)
                raise Refused("provision-failed", f"creating the replica in {state_dir} "
                                                  f"failed: {err}; see the receiver's "
                                                  f"log") from err
            slot = VolumeSlot(replica, spec)
            self.slots[hello.volume_uuid] = slot
            self.offers.pop(hello.volume_uuid, None)
            log.warning("volume %s%s: provisioned a replica of %s for primary %r in %s "
                        "(journal %s)", hello.volume_uuid,
                        f" ({hello.name!r})" if hello.name else "", geometry, hello.identity,
                        replica.cfg.paths.mirror.parent, provisioned.human(spec.journal_size))
            return slot

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        cert_names, encrypted = None, None
        if self._tls is None:
            writer.transport.resume_reading()
        else:
            tls = self._tls.handshake()
            try:
                reader, writer, certificate, encrypted = await self._tls_streams(tls, reader, writer)
            except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as err:
                self._refuse_log(peer, f"TLS handshake failed: {tls.failure(err)}")
                writer.close()
                return
            try:
                tls.check(certificate)          # only the pinned certificates
            except TlsRefused as err:
                self._refuse_log(peer, f"TLS handshake failed: {err}")
                await self._refuse_certificate(FrameLink(reader, writer), str(err))
                return
            cert_names = peer_identities(certificate.getpeercert())
        link = FrameLink(reader, writer)
        try:
            await self._handshake_and_run(link, peer, cert_names, encrypted)
        except wire.BadVersion as err:
            self._refuse_log(peer, f"{type(err).__name__}: {err}")
            if err.version == wire.LEGACY_VERSION and not link.frames_received:
                await link.refuse_legacy("version", f"frame version {err.version} is not "
                                         f"spoken here: receiver {self.cfg.identity!r} "
                                         f"speaks version {wire.WIRE_VERSION}; upgrade the "
                                         f"primary's appliance software")
        except (wire.WireError, HandshakeError) as err:
            self._refuse_log(peer, f"{type(err).__name__}: {err}")
        except LinkClosed as err:
            log.info("link from %s closed: %s", peer, err)
        finally:
            await link.close()

    async def _tls_streams(self, tls: Handshake, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter):
        """The connection's streams once TLS is up, the peer's certificate and how the link
        is encrypted: in the kernel (``[tls] kernel``: the accepted socket leaves asyncio's
        transport, which has read nothing from it) or by asyncio's TLS."""
        if not self._tls.in_kernel:
            await writer.start_tls(tls.context, ssl_handshake_timeout=self.cfg.dead_after_s)
            ssl_object = writer.get_extra_info("ssl_object")
            return reader, writer, ssl_object, self._tls.user_space(ssl_object)
        accepted = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        writer.transport.abort()
        try:
            session = await asyncio.wait_for(
                kernel_tls.server_session(accepted, tls.context, self.cfg.dead_after_s),
                self.cfg.dead_after_s)
        except kernel_tls.KernelTlsIncomplete as err:
            self._tls.kernel_incomplete(err, f"receiver {self.cfg.identity}")
            raise
        except BaseException:
            accepted.close()
            raise
        reader, writer = await kernel_tls.open_streams(session, LIMIT)
        return reader, writer, session.peer, session.description

    async def _refuse_certificate(self, link: FrameLink, reason: str) -> None:
        """A handshake that verified a certificate the pins do not hold: REFUSE, after the
        HELLO (closing with it unread could reset the link before the REFUSE is read)."""
        try:
            with contextlib.suppress(wire.WireError):
                await link.recv(self.cfg.dead_after_s)
            await link.send_json(FT.REFUSE, {"code": "certificate", "reason": reason})
        except LinkClosed:
            pass
        finally:
            await link.close()

    async def _handshake_and_run(self, link: FrameLink, peer: str,
                                 cert_names: set[str] | None, encrypted: str | None) -> None:
        frame = await link.recv(self.cfg.dead_after_s)
        if frame.type is not FT.HELLO:
            raise wire.BadFrame(f"expected HELLO, got {frame.type.name}")
        hello = Hello.from_dict(wire.decode_json(frame.payload))
        slot = self.slots.get(hello.volume_uuid)
        try:
            if slot is None:
                slot = await self._offered(hello, cert_names)
            if slot.busy is not None:       # (its replica is closed meanwhile)
                raise slot.busy_refusal()
            self._admit(hello, cert_names, slot)
        except Refused as err:
            await self._refuse(link, peer, hello, err, self.slots.get(hello.volume_uuid))
            return
        # Take over from an older session of the same primary before touching the replica.
        old = slot.session
        if old is not None and not old.done():
            log.info("volume %s: new link from %s replaces the previous one", hello.volume_uuid,
                     peer)
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await old
        slot.session = asyncio.current_task()
        async with slot.lock:
            # Admitted again under the lock: an admin operation may have run meanwhile (and
            # reopened, or dropped, the replica).
            try:
                if slot.busy is not None:
                    raise slot.busy_refusal()
                if self.slots.get(hello.volume_uuid) is not slot:
                    raise Refused("unknown-volume", f"volume {hello.volume_uuid} was removed "
                                                    f"from receiver {self.cfg.identity!r}")
                self._admit(hello, cert_names, slot)       # (the cheap refusals first)
                # A consistency group: the same members here (a provisioned one follows).
                await run_blocking(lambda: slot.replica.follow_group(
                    hello, may_grow=slot.provisioned is not None))
                # A failback proves what this site's mirror holds (reads its old journal).
                extents = await run_blocking(
                    lambda: failback_admission.base_extents(slot.replica, hello))
                welcome = self._admit(hello, cert_names, slot, extents)
            except Refused as err:
                await self._refuse(link, peer, hello, err, self.slots.get(hello.volume_uuid))
                return
            await run_blocking(lambda: slot.replica.bind(
                hello, welcome.last_seq, full_copy=welcome.full_copy,
                failback_extents=welcome.failback_extents))
            if welcome.compression:
                link.enable_compression()
            await link.send_json(FT.WELCOME, welcome.to_dict())
            self.offers.pop(hello.volume_uuid, None)
            slot.link.peer = peer
            slot.link.tls = encrypted
            slot.link.connects += 1
            slot.link.set_state("connected")
            log.info("volume %s: primary %s (%s) connected at seq %d, generation %d%s",
                     hello.volume_uuid, hello.identity, peer, welcome.last_seq, hello.generation,
                     ", zstd" if welcome.compression else "")
            try:
                await Session(slot.replica, link, hello, heartbeat_s=self.cfg.heartbeat_s,
                              dead_after_s=self.cfg.dead_after_s,
                              on_report=slot.note_report).run()
            except SessionError as err:
                slot.link.error(str(err))
                log.error("volume %s: dropping link from %s: %s", hello.volume_uuid, peer, err)
                with contextlib.suppress(LinkClosed):
                    await link.send_json(FT.ERROR, {"reason": str(err)})
            except (wire.WireError, LinkClosed, JournalError, ReplicaError, OSError) as err:
                slot.link.error(f"{type(err).__name__}: {err}")
                log.error("volume %s: link from %s failed: %s", hello.volume_uuid, peer, err)
            finally:
                slot.link.disconnects += 1
                slot.link.set_state("disconnected")
                await run_blocking(slot.replica.sync_mirror)


async def serve(cfg: ReceiverConfig, config_path: Path | None = None) -> None:
    rx = Receiver(cfg, config_path)
    await rx.start()
    stop = stop_event_on_signals()
    try:
        await stop.wait()
    finally:
        log.info("receiver stopping")
        await rx.close()


def _refuse_promoted_copy_of_ours(hello: Hello, local_primaries: frozenset[uuid.UUID]) -> None:
    """A promoted copy of a volume (or group) this site still serves as a primary belongs on
    this site's old mirror, copying only what changed (a failback), not in a new replica
    holding a full copy: refused until the admin made this site its DR there."""
    if hello.base is None or not local_primaries:
        return
    try:
        lineage = PromotionBase.from_dict(hello.base).lineage
    except ValueError:
        return                      # admission refuses the malformed base with its reason
    if lineage in local_primaries:
        raise Refused("failback-first", (
            f"volume {hello.volume_uuid} is the promoted copy of {lineage}, which this site "
            f"serves as a primary: make this site its DR over the old mirror first "
            f"(here: delete its backstore(s), then 'failback uuid={hello.volume_uuid}' in "
            f"/replication/volumes/<name> or /replication/groups/<name>; docs/failover.md); "
            f"a new replica would take a full copy"))


def main(argv: list[str] | None = None) -> int:
    args = argument_parser("appliance-receiver", __doc__,
                           config_help="receiver TOML configuration").parse_args(argv)

    def serve_or_fail(cfg: ReceiverConfig) -> int:
        try:
            asyncio.run(serve(cfg, Path(args.config)))
        except TlsConfigError as err:       # a [tls] file missing or unusable (first thing done)
            return report_config_error("appliance-receiver", ConfigError(f"{args.config}: {err}"))
        except (ReplicaError, JournalError, OSError) as err:
            log.error("receiver cannot start: %s", err)
            return 1
        return 0

    def load() -> ReceiverConfig:
        cfg = receiver_config(load_toml(args.config), str(args.config))
        check_tls_files(cfg.tls, server=True, config_path=str(args.config))
        return cfg

    return run("appliance-receiver", args, load, serve_or_fail)


if __name__ == "__main__":
    sys.exit(main())
