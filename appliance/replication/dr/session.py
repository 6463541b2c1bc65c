"""One admitted replication link on the receiver, for one volume.

A reader task verifies frames and queues work; a committer task does the work strictly in
arrival order: record runs (ordered by ``SeqOrderer``, committed durably, ACKed), resync
regions (undo first, then the mirror), resync begin/end, and region hash checks. An applier
task writes committed runs to the mirror, in order, while the committer already makes the
next runs durable (the replica serialises the two where they share state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.journal import JournalError
from appliance.replication import wire
from appliance.replication.digest import region_digest
from appliance.replication.dr.apply import SeqOrderer
from appliance.replication.dr.replica import ReplicaError
from appliance.replication.dr.sync_state import BadReport, PrimaryReport
from appliance.replication.handshake import Hello, JumpRefused
from appliance.replication.link import FrameLink, LinkClosed, run_blocking

if TYPE_CHECKING:
    from appliance.replication.dr.replica import Replica

log = logging.getLogger("appliance.receiver")
FT = wire.FrameType


class SessionError(Exception):
    """The session must end; the message is logged and sent to the primary in an ERROR frame."""


# Committed but unapplied data the committer may run ahead of the applier by (memory bound).
MAX_UNAPPLIED_BYTES = 64 << 20


class Session:
    """One admitted link for one volume: reader task feeds the committer through a queue."""

    def __init__(self, replica: Replica, link: FrameLink, hello: Hello, *, heartbeat_s: float,
                 dead_after_s: float, on_report: Callable[[PrimaryReport], None]) -> None:
        self.replica = replica
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.on_report = on_report          # the primary's PRIMARY_STATE, for status
        self.link = link
        self.hello = hello
        self.orderer = SeqOrderer(next_seq=self.replica.durable_seq + 1)
        self.queue: asyncio.Queue[tuple] = asyncio.Queue(maxsize=64)
        self._last_sent = time.monotonic()
        self._resend_asked: int | None = None
        self._to_apply = asyncio.Event()    # set by the committer: runs await the mirror
        self._applied = asyncio.Event()     # set by the applier after each pass

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._commit()),
                 asyncio.create_task(self._apply()), asyncio.create_task(self._heartbeat())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, ftype: wire.FrameType, payload: bytes = b"") -> None:
        await self.link.send(ftype, payload)
        self._last_sent = time.monotonic()

    async def _heartbeat(self) -> None:
        hb = self.heartbeat_s
        while True:
            await asyncio.sleep(hb / 2)
            if time.monotonic() - self._last_sent >= hb:
                await self._send(FT.HEARTBEAT, wire.encode_seq(time.time_ns()))

    async def _read(self) -> None:
        while True:
            frame = await self.link.recv(self.dead_after_s)
            t = frame.type
            if t is FT.HEARTBEAT:
                continue
            if t is FT.ERROR:
                raise LinkClosed(f"primary reported: {wire.decode_json(frame.payload)}")
            if t is FT.BATCH:
                records = self._verified_records(frame.payload)
                if records:
                    await self.queue.put(("records", records))
            elif t is FT.REGION:
                await self.queue.put(("region", *wire.decode_region(frame.payload)))
            elif t in (FT.RESYNC_BEGIN, FT.RESYNC_END):
                await self.queue.put((t.name, wire.decode_json(frame.payload)))
            elif t is FT.HASHES:
                await self.queue.put(("hashes", *wire.decode_hashes(frame.payload)))
            elif t is FT.PRIMARY_STATE:
                try:
                    self.on_report(PrimaryReport.from_dict(wire.decode_json(frame.payload),
                                                           time.monotonic()))
                except BadReport as err:
                    raise wire.BadFrame(str(err)) from err
            else:
                raise SessionError(f"unexpected {t.name} frame during replication")

    def _verified_records(self, payload: bytes) -> list[wire.WireRecord]:
        counters = self.replica.counters
        try:
            batch = wire.decode_batch(payload)
        except wire.WireError:
            counters.rejected_batches += 1
            raise
        if batch.volume_uuid != self.hello.volume_uuid:
            counters.rejected_batches += 1
            raise SessionError(f"batch for volume {batch.volume_uuid} on the link of "
                               f"{self.hello.volume_uuid}")
        if batch.generation != self.hello.generation:
            counters.rejected_batches += 1
            raise SessionError(f"batch of generation {batch.generation} on a link of "
                               f"generation {self.hello.generation}")
        return batch.records

    async def _commit(self) -> None:
        carry: tuple | None = None
        while True:
            item, carry = (carry, None) if carry is not None else (await self.queue.get(), None)
            kind = item[0]
            if kind == "records":
                records = item[1]
                # Group commit: everything already queued goes into one journal sync.
                while not self.queue.empty() and len(records) < 8192:
                    nxt = self.queue.get_nowait()
                    if nxt[0] != "records":
                        carry = nxt
                        break
                    records = records + nxt[1]
                await self._commit_records(records)
            elif kind == "region":
                _, offset, data = item
                try:
                    await run_blocking(self.replica.write_region, offset, data)
                except ReplicaError as err:
                    raise SessionError(str(err)) from err
                await self._send(FT.REGION_ACK, wire.encode_seq(offset + len(data)))
            elif kind == "RESYNC_BEGIN":
                await self._begin_resync(item[1])
                kept = self.replica.consistent_seq
                log.warning("volume %s: resync from %s begins: the DR image is inconsistent "
                            "until it ends%s", self.hello.volume_uuid, self.hello.identity,
                            " (no consistent image yet)" if kept is None else
                            f" (the undo log keeps the image at seq {kept})")
            elif kind == "RESYNC_END":
                at = item[1].get("consistent_at_seq")
                if not isinstance(at, int) or isinstance(at, bool) or at < 0:
                    raise SessionError(f"RESYNC_END without a valid consistent_at_seq: {item[1]}")
                await run_blocking(self.replica.end_resync, at)
                log.info("volume %s: resync shipped; consistent once seq %d is applied",
                         self.hello.volume_uuid, at)
            elif kind == "hashes":
                _, rid, regions = item
                differing = await run_blocking(self._compare, regions)
                await self._send(FT.HASH_REPLY, wire.encode_hash_reply(rid, differing))

    async def _begin_resync(self, info: dict) -> None:
        """RESYNC_BEGIN. With ``superseded_to_seq`` (a full copy) the replica's journal jumps
        past the records the copy contains, and the ACK of that seq lets the primary free
        them; refused (the session ends) unless a full copy is pending."""
        jump = info.get("superseded_to_seq")
        if jump is None:
            await run_blocking(self.replica.begin_resync)
            return
        try:
            await run_blocking(self.replica.begin_resync, jump)
        except JumpRefused as err:
            raise SessionError(str(err)) from err
        self.orderer.reset(self.replica.durable_seq + 1)
        self._resend_asked = None
        await self._send(FT.ACK, wire.encode_ack(self.replica.counters.durable_seq,
                                                 self.replica.applied_seq))

    def _compare(self, regions: list[tuple[int, int, bytes]]) -> list[int]:
        self.replica.apply_pending()
        out = []
        for i, (offset, length, digest) in enumerate(regions):
            if offset < 0 or length <= 0 or offset + length > self.replica.size_bytes:
                raise SessionError(f"hash region {offset}+{length} outside the volume")
            if region_digest(self.replica.read_mirror(offset, length)) != digest:
                out.append(i)
        return out

    async def _apply(self) -> None:
        """Write committed runs to the mirror (strictly in order: the replica drains its
        queue of durable runs front to back), then tell the primary how far the mirror got
        once nothing more waits."""
        while True:
            await self._to_apply.wait()
            self._to_apply.clear()
            await run_blocking(self.replica.apply_pending)
            self._applied.set()
            if self.queue.empty() and not self._to_apply.is_set():
                # counters.durable_seq, not the journal head: a commit may be between its
                # append and its fdatasync right now.
                await self._send(FT.ACK, wire.encode_ack(self.replica.counters.durable_seq,
                                                         self.replica.applied_seq))

    async def _commit_records(self, records: list[wire.WireRecord]) -> None:
        offered = self.orderer.offer(records)
        self.replica.counters.duplicates += offered.duplicates
        if offered.run:
            while self.replica.unapplied_bytes > MAX_UNAPPLIED_BYTES:
                self._applied.clear()
                await self._applied.wait()
            try:
                durable = await run_blocking(self.replica.commit, offered.run)
            except (ValueError, ReplicaError) as err:
                raise SessionError(f"records refused: {err}") from err
            except (JournalError, OSError) as err:
                raise SessionError(f"replica journal/mirror I/O failed, nothing acknowledged: "
                                   f"{err}") from err
            await self._send(FT.ACK, wire.encode_ack(durable, self.replica.applied_seq))
            self._to_apply.set()
            self._resend_asked = None
        if offered.resend_from is not None and offered.resend_from != self._resend_asked:
            self.replica.counters.gaps += 1
            self._resend_asked = offered.resend_from
            log.warning("volume %s: gap before seq %d, asking for a resend",
                        self.hello.volume_uuid, offered.resend_from)
            await self._send(FT.RESEND, wire.encode_seq(offered.resend_from))
