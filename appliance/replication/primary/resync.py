"""Bitmap-driven resync and initial synchronisation, transmitter side.

When the primary's journal overflowed, the write fork logs writes in a dirty-region bitmap
(``appliance.volume``); a full resync (initial sync, failback) marks every chunk dirty. This
driver, running inside a connected transmitter session:

1. lets the journal drain up to the bitmap's ``overflow_seq`` (older records must reach the
   peer before any newer region does) — except in a full copy for a peer without the history:
   the copy contains those records, so its RESYNC_BEGIN names ``overflow_seq`` as
   ``superseded_to_seq`` and they are never sent (the peer's journal continues after it, its
   ACK frees them here; docs/protocol.md, "The full copy's jump in sequence"),
2. pauses record shipping and sends RESYNC_BEGIN: the receiver says ``inconsistent`` from now
   on and saves old contents (undo) before every overwrite,
3. ships the dirty regions read from the primary mirror (optionally only those whose hash
   differs, for pre-seeded disks) a window at a time; once a window is durable at the peer it
   asks the writer to clear that window's chunks (so progress survives a lost link); repeats
   while writes keep dirtying chunks,
4. once the bitmap is clean and the writer is journaling again, sends RESYNC_END naming the
   journal head: the peer is consistent again once it has applied up to that seq. Record
   shipping resumes (records already contained in shipped regions are simply applied again).

A verify repair ships given regions through the same BEGIN/REGION/END path. Those regions are
not in the bitmap, so they are written to ``<bitmap>.repair.json`` before RESYNC_BEGIN and
removed after RESYNC_END: a repair cut short by a lost link or a transmitter restart is
shipped again before the peer may call itself consistent.

A link lost midway is harmless and costs little: chunks are cleared only after the peer
acknowledged them, so the next session resumes with the chunks still dirty instead of starting
over, and the receiver keeps its undo log and inconsistent state until a RESYNC_END completes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import storage
from appliance.journal import JournalReader
from appliance.replication import wire
from appliance.replication.digest import region_digest
from appliance.replication.link import run_blocking
from appliance.replication.primary.host_view import HostView
from appliance.replication.primary.steering import DiscardState, chunk_runs
from appliance.statefile import write_json_atomic
from appliance.volume.concat_io import open_mirror
from appliance.volume.resync import ResyncSnapshot, region_extent

if TYPE_CHECKING:
    from appliance.journal import VolumeFiles
    from appliance.replication.config import TransmitterConfig
    from appliance.replication.handshake import Welcome
    from appliance.replication.link import FrameLink
    from appliance.replication.primary.shared import ShippingControl, TxShared

log = logging.getLogger("appliance.transmitter")
FT = wire.FrameType
WINDOW = 16    # regions in flight (and per hash request)


@dataclass(frozen=True, slots=True)
class Region:
    offset: int
    length: int
    # The chunk run (first, count) that is wholly at the peer once this region and the ones
    # before it are: a region never ends inside a chunk unless the next piece of that chunk
    # follows it, so a chunk is cleared only with its last piece.
    completes: tuple[int, int] | None


def split_regions(snap: ResyncSnapshot, volume_bytes: int, region_bytes: int) -> list[Region]:
    """Regions of at most ``region_bytes`` covering the dirty runs. A region of at least one
    chunk holds whole chunks (``region_bytes`` rounded down to the chunk size); with a
    smaller ``region_bytes`` each chunk is shipped in pieces."""
    chunk = snap.chunk_size
    out = []
    for first, count in snap.runs:
        if region_bytes >= chunk:
            step = region_bytes // chunk
            for first_chunk in range(first, first + count, step):
                chunks = min(step, first + count - first_chunk)
                out.append(Region(*region_extent(chunk, first_chunk, chunks, volume_bytes),
                                  (first_chunk, chunks)))
            continue
        for index in range(first, first + count):
            start, length = region_extent(chunk, index, 1, volume_bytes)
            for off in range(start, start + length, region_bytes):
                end = min(off + region_bytes, start + length)
                out.append(Region(off, end - off, (index, 1) if end == start + length else None))
    return out


class PendingRepair:
    """The regions of a repair not yet known to be at the peer, kept across crashes."""

    def __init__(self, bitmap: Path) -> None:
        self.path = bitmap.with_name(bitmap.name + ".repair.json")

    def save(self, regions: list[tuple[int, int]]) -> None:
        write_json_atomic(self.path, {"regions": regions})

    def load(self) -> list[tuple[int, int]]:
        try:
            doc = json.loads(self.path.read_text())
            return [(int(o), int(n)) for o, n in doc["regions"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as err:
            # Written atomically by us, so this is a damaged or hand-edited file.
            raise ValueError(f"{self.path} is not a list of regions to repair ({err}); move "
                             "it away and run an online verify with repair again") from err

    @staticmethod
    def as_regions(regions: list[tuple[int, int]]) -> list[Region]:
        """Given (offset, length) pieces to ship; they clear no bitmap chunks."""
        return [Region(o, n, None) for o, n in regions]

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def coalesce(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent chunk runs merged, in order: (3, 1), (4, 2) -> (3, 3)."""
    out: list[tuple[int, int]] = []
    for first, count in runs:
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((first, count))
    return out


class ResyncDriver:
    """Resyncs and repairs over one connected session, steering its record shipping only
    through ``ShippingControl``."""

    def __init__(self, control: ShippingControl, shared: TxShared, cfg: TransmitterConfig,
                 link: FrameLink, reader: JournalReader, welcome: Welcome,
                 files: VolumeFiles) -> None:
        self.control = control
        self.shared = shared
        self.cfg = cfg
        self.link = link
        self.reader = reader
        self.welcome = welcome
        self.progress = shared.resync
        self._acked_regions = 0
        self._region_event = asyncio.Event()
        self._replies: dict[int, list[int]] = {}
        self._reply_event = asyncio.Event()
        self._next_rid = 0
        self.busy = asyncio.Lock()      # one resync or repair at a time
        self.files = files
        # The transmitter's one writer of the bitmap's request slot (it outlives the session).
        self.source = shared.bitmap_requests(files)
        self._mirror: storage.BlockIO | None = open_mirror(files.mirror)
        # (Its journal readers open at the first read.)
        self._host_view = HostView(self._mirror, lambda: JournalReader(
            cfg.journal, volume_uuid=cfg.volume_uuid))
        self.pending_repair = PendingRepair(Path(files.bitmap))

    def close(self) -> None:
        self._host_view.close()
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None

    # --- frames from the receiver (called by the session's receive loop) ---------------

    def on_region_ack(self) -> None:
        self._acked_regions += 1
        self._region_event.set()

    def on_hash_reply(self, rid: int, differing: list[int]) -> None:
        self._replies[rid] = differing
        self._reply_event.set()

    # --- the loop -------------------------------------------------------------------------

    async def run(self, peer_inconsistent: bool, *, full_copy: bool = False) -> None:
        """Watch the bitmap for the whole session; resync whenever chunks are dirty. With
        ``full_copy`` (the peer lacks the history; ``request_full_copy`` has marked every
        chunk) the first resync is the copy, and it supersedes the journal's records."""
        try:
            await self._watch(peer_inconsistent, full_copy)
        finally:
            self.interrupted()

    async def _watch(self, peer_inconsistent: bool, full_copy: bool) -> None:
        resume = peer_inconsistent or self.progress.state not in ("idle", "repairing")
        if full_copy:
            # (It ships a leftover repair itself; a repair's own RESYNC_BEGIN would end the
            # peer's wait for the copy without the jump.)
            await self.resync(await run_blocking(self.source.snapshot), resume=resume,
                              full_copy=True)
            resume = peer_inconsistent = False
        # (With the peer inconsistent, the resync below ships a leftover repair itself.)
        if not peer_inconsistent and (leftover := await run_blocking(self.pending_repair.load)):
            log.warning("volume %s: a repair of %d regions may not have reached the peer; "
                        "shipping them again", self.cfg.volume_uuid, len(leftover))
            await self.repair(leftover)
        if peer_inconsistent:
            log.warning("volume %s: the peer is inconsistent from an interrupted resync; "
                        "resuming it with the chunks still dirty", self.cfg.volume_uuid)
            await self.resync(await run_blocking(self.source.snapshot), resume=True)
            resume = False
        while True:
            snap = await run_blocking(self.source.snapshot)
            # Not while the admin paused journaling: a resync makes the DR inconsistent until
            # it ends, and it cannot end while writes go on to the bitmap; resume starts it.
            if snap.runs and not snap.journal_paused:
                await self.control.shipping_allowed()   # not while the admin paused it
                await self.resync(await run_blocking(self.source.snapshot), resume=resume)
                resume = False
            elif self.shared.discard is not None and not snap.logging:
                await self._discard_shipped()
            await asyncio.sleep(0.2)

    async def _discard_shipped(self) -> None:
        """A pending discard is done once the peer holds every discarded seq (placeholders)
        and a resync has shipped the chunks (bitmap clean, writer journaling)."""
        discard = self.shared.discard
        if discard is not None and self.control.peer_durable >= discard.to_seq:
            await run_blocking(DiscardState.remove, self.files.bitmap)
            self.shared.discard = None
            log.warning("volume %s: the regions of the %d discarded records reached the peer; "
                        "no resync is needed any more", self.cfg.volume_uuid, discard.records)

    def interrupted(self) -> None:
        """The session ended (link lost) with a resync under way: say so in the status."""
        if self.progress.state != "idle":
            self.progress.state = "interrupted"

    async def repair(self, regions: list[tuple[int, int]]) -> None:
        """Ship given regions (verify found them different) through the resync path."""
        async with self.busy:
            await self._repair(regions)

    async def _repair(self, regions: list[tuple[int, int]]) -> None:
        progress = self.progress
        progress.state, progress.since = "repairing", time.time()
        progress.total_bytes = progress.done_bytes = progress.skipped_bytes = 0
        self.control.records_paused = True
        try:
            await run_blocking(lambda: self.pending_repair.save(regions))
            await self._begin({"since": progress.since, "reason": "verify repair"})
            await self._ship(PendingRepair.as_regions(regions))
            await self._end()
            await run_blocking(self.pending_repair.done)
        finally:
            self.control.records_paused = False

    async def _begin(self, info: dict, superseded: int | None = None) -> None:
        await self.control.window_empty()
        if superseded is not None:
            self.control.supersede_to(superseded)   # before the peer's ACK of it can arrive
        await self.link.send_json(FT.RESYNC_BEGIN, info)

    async def _end(self) -> int:
        head = await run_blocking(lambda: self.reader.durable_seq - 1)
        await self.link.send_json(FT.RESYNC_END, {"consistent_at_seq": head})
        self.progress.state, self.progress.completed = "idle", self.progress.completed + 1
        self.shared.peer_needs_resync = False
        return head

    async def resync(self, snap: ResyncSnapshot, *, resume: bool = False,
                     full_copy: bool = False) -> None:
        async with self.busy:
            await self._resync(snap, resume, full_copy)

    async def _resync(self, snap: ResyncSnapshot, resume: bool, full_copy: bool) -> None:
        progress, control, reader = self.progress, self.control, self.reader
        if resume and progress.since is not None:      # same process: keep the totals so far
            progress.resumed += 1
            progress.total_bytes = progress.done_bytes + progress.skipped_bytes
        else:
            progress.since = time.time()
            progress.total_bytes = progress.done_bytes = progress.skipped_bytes = 0
        begin = {"since": progress.since, "overflow_seq": snap.overflow_seq}
        superseded = await run_blocking(self._superseded_to, snap) if full_copy else None
        progress.state = "draining"
        if superseded is None and reader.acked_seq < snap.overflow_seq:
            control.records_paused = False            # older records first (also to a peer that
            while reader.acked_seq < snap.overflow_seq:       # waits for a full copy)
                await asyncio.sleep(0.02)
        control.records_paused = True
        try:
            if superseded is not None:
                first = max(reader.acked_seq, progress.superseded_to_seq) + 1
                progress.superseded_records += max(0, superseded - first + 1)   # once per process
                progress.superseded_to_seq = max(progress.superseded_to_seq, superseded)
                begin["superseded_to_seq"] = superseded
                log.warning("volume %s: full copy: records up to seq %d are contained in it "
                            "and will not be sent", self.cfg.volume_uuid, superseded)
            await self._begin(begin, superseded)
            progress.state = "resyncing"
            if superseded is None:
                await self._placeholders()
            # A repair cut short is finished inside this resync (its regions are not dirty).
            leftover = await run_blocking(self.pending_repair.load)
            if leftover:
                await self._ship(PendingRepair.as_regions(leftover))
            log.warning("volume %s: resync of %d dirty chunks begins (peer inconsistent)",
                        self.cfg.volume_uuid, snap.dirty_chunks)
            while True:
                snap = await run_blocking(self.source.snapshot)
                if not snap.runs:
                    if not snap.logging:
                        break
                    progress.state = "waiting-for-writer"      # it switches back to journaling
                    await asyncio.sleep(0.02)
                    continue
                progress.state = "resyncing"
                progress.passes += 1
                await self._ship(split_regions(snap, self.shared.volume_bytes,
                                               self.cfg.resync_region_bytes), snap)
            head = await self._end()
            await run_blocking(self.pending_repair.done)
            await self._discard_shipped()
            log.warning("volume %s: resync shipped %d bytes (%d skipped as identical); "
                        "peer consistent once seq %d is applied", self.cfg.volume_uuid,
                        progress.done_bytes, progress.skipped_bytes, head)
        finally:
            control.records_paused = False

    async def _placeholders(self) -> None:
        """Seqs a discard dropped that the peer lacks go now (it is inconsistent, its undo
        log on) as one-block UNMAPs inside a dirty chunk, which a region then overwrites:
        the first chunk dirty now (none was cleared since the discard marked them, because
        regions ship only after the placeholders are acknowledged)."""
        discard = self.shared.discard
        if discard is None or self.control.peer_durable >= discard.to_seq:
            return
        snap = await run_blocking(self.source.snapshot)
        if not snap.runs:       # (cannot happen; never leave a placeholder unshipped over)
            await run_blocking(lambda: self.source.mark(
                [(0, 1)], timeout=self.cfg.resync_clear_timeout_s))
            snap = await run_blocking(self.source.snapshot)
        lba = snap.runs[0][0] * snap.chunk_size // self.cfg.block_size
        log.warning("volume %s: sending seqs %d..%d, discarded here, as placeholders the "
                    "resync overwrites", self.cfg.volume_uuid, self.control.peer_durable + 1,
                    discard.to_seq)
        await self.control.send_placeholders(lba)

    def _superseded_to(self, snap: ResyncSnapshot) -> int | None:
        """The last seq a full copy supersedes: ``overflow_seq``, while the writer logs to
        the bitmap (it journals nothing after it then, and every chunk is durably dirty, so
        the copy reads each record's effect from the mirror). None when that does not hold
        (then the records are drained first, as for an overflow), also when the peer does
        not take the jump (a receiver older than it)."""
        seq, reader = snap.overflow_seq, self.reader
        takes_jump = self.welcome.supersede
        if takes_jump and snap.logging and reader.acked_seq < seq and seq >= reader.durable_seq:
            # The writer synced it but has not republished its head: this read fdatasyncs,
            # so that the peer's ACK of ``seq`` can be acknowledged here.
            reader.read(seq, 1)
        if not takes_jump or not snap.logging or not reader.acked_seq <= seq < reader.durable_seq:
            log.warning("volume %s: full copy without superseding the journal (peer takes "
                        "the jump: %s, writer logging: %s, overflow seq %d, acknowledged %d): "
                        "records go first", self.cfg.volume_uuid, takes_jump, snap.logging,
                        seq, reader.acked_seq)
            return None
        return seq

    def read(self, offset: int, length: int) -> bytes:
        return self.read_regions([(offset, length)])[0][0]

    def read_regions(self, regions: list[tuple[int, int]]) -> tuple[list[bytes], int]:
        """The regions as the host reads them, and the journal head ``H`` they are the image
        at (``host_view.py``), rather than the bare mirror file, which with the write cache
        on lacks writes the peer has already applied and acknowledged.

        A region shipped after RESYNC_BEGIN must contain every record the peer applied
        before it (``_begin`` waits until none is in flight; they are never sent again).
        Records above the peer's are sent after RESYNC_END and applied over the region again,
        which changes nothing (in order, each a pure overwrite), so any image at a head
        ``H >= acked`` is right. The bitmap resync and the full copy read only while chunks
        are dirty, i.e. while the writer logs to the bitmap (it journals again only with a
        clean bitmap; a chunk is cleared only after its region was read and acknowledged):
        entering that mode commits the overlay, and the mode keeps none, so the mirror was
        already the host's image there and nothing changes for them. A verify repair (and a
        repair cut short, shipped again inside a resync) reads while the writer journals:
        the bare mirror lacked the cached writes there (docs/protocol.md, "Online verify").
        """
        if self._mirror is None:
            raise ValueError("the resync driver is closed")
        return self._host_view.read(regions)

    async def _ship(self, regions: list[Region], snap: ResyncSnapshot | None = None) -> None:
        """Ship regions a window at a time. With ``snap``, each window's completed chunks are
        cleared in the bitmap once the peer holds the window durably; the clear request of
        one window is handled by the writer while the next window goes out."""
        progress = self.progress
        progress.total_bytes += sum(r.length for r in regions)
        clear_pending: int | None = None
        for i in range(0, len(regions), WINDOW):
            await self.control.shipping_allowed()       # the admin's pause, a blackout
            window = regions[i : i + WINDOW]
            datas, _ = await run_blocking(lambda w=window: self.read_regions(
                [(r.offset, r.length) for r in w]))
            send = list(range(len(window)))
            if self.cfg.resync_skip_matching:
                send = await self.compare([(r.offset, r.length, region_digest(d))
                                           for r, d in zip(window, datas, strict=True)])
                progress.skipped_bytes += sum(window[j].length for j in range(len(window))
                                       if j not in send)
            target = self._acked_regions + len(send)
            for j in send:
                # As its parts, like a BATCH: the data goes to the socket (or the TLS layer)
                # from the buffer it was read into, not joined into a frame-sized copy first;
                # the frame's CRC covers the head, the region's own CRC its data.
                await self.link.send_parts(FT.REGION, wire.region_parts(window[j].offset,
                                                                        datas[j]), head_crc=True)
            while self._acked_regions < target:
                self._region_event.clear()
                await asyncio.wait_for(self._region_event.wait(), self.cfg.dead_after_s * 4)
            shipped = sum(window[j].length for j in send)
            progress.done_bytes += shipped
            progress.rate.add(shipped)
            done = coalesce([r.completes for r in window if r.completes is not None])
            if snap is not None and done:
                if clear_pending is not None:
                    await self._wait_processed(clear_pending)
                clear_pending = await run_blocking(
                    lambda runs=done: self.source.request_clear(snap, runs))
        if clear_pending is not None:
            await self._wait_processed(clear_pending)

    async def request_full_copy(self) -> None:
        """The peer lacks history our journal no longer holds (a new DR, or one rolled back):
        the writer marks every chunk and enters logging-to-bitmap, and the watch loop then
        ships them all like after an overflow (older records first)."""
        log.warning("volume %s: the peer needs a full copy (it lacks seqs up to %d, which our "
                    "journal no longer holds); marking every chunk", self.cfg.volume_uuid,
                    self.reader.acked_seq)
        await run_blocking(lambda: self.source.mark_all(timeout=self.cfg.resync_clear_timeout_s))

    async def mark_failback(self, extents: list[tuple[int, int]]) -> None:
        """A failback onto the old primary's mirror (docs/failover.md): it holds the image
        our journal starts from plus these extents (lba, blocks) of its own. They go to the
        bitmap durably before anything is sent, so the resync copies them after the records
        (what we changed since the promotion); nothing else is read in full."""
        def mark() -> int:
            header = self.source.header()
            runs = chunk_runs(extents, self.cfg.block_size, header.chunk_size,
                              header.num_chunks)
            if runs:
                self.source.mark(runs, timeout=self.cfg.resync_clear_timeout_s)
            return sum(count for _, count in runs) * header.chunk_size
        marked = await run_blocking(mark)
        self.progress.failback_marked_bytes = marked
        log.warning("volume %s: failback: the peer holds our base image plus %d extents of its "
                    "own; %d bytes marked to copy back after our records", self.cfg.volume_uuid,
                    len(extents), marked)

    async def _wait_processed(self, request_id: int) -> None:
        await run_blocking(lambda: self.source.wait_processed(
            request_id, timeout=self.cfg.resync_clear_timeout_s))

    async def compare(self, hashes: list[tuple[int, int, bytes]]) -> list[int]:
        """Indices of the regions whose hash differs on the peer's mirror."""
        self._next_rid += 1
        rid = self._next_rid
        await self.link.send(FT.HASHES, wire.encode_hashes(rid, hashes))
        while rid not in self._replies:
            self._reply_event.clear()
            await asyncio.wait_for(self._reply_event.wait(), self.cfg.dead_after_s * 4)
        return self._replies.pop(rid)
