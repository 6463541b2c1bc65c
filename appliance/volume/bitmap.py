"""The persistent dirty-region bitmap, writer side (the process that serves host writes).

Used when the journal overflows (state ``logging-to-bitmap``) and for initial sync: a bit
per chunk says "this region of the mirror may differ from the peer". Crash-safety rule:
a chunk's bit is durable (``sync``) before any write to it reaches the mirror, so after a
crash every region the mirror changed in is still marked. Clearing is lazy (a stale set
bit costs a re-ship, never data).

Bits are cleared only here, on a request the resync process leaves in its own slot
(see ``appliance.volume.resync`` and docs/volume.md). The request names the newest batch
generation that had reached the mirror before it read the data; a chunk touched by a
later batch stays dirty, so a concurrent re-dirtying is never lost.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from appliance.volume import bitmap_format as fmt
from appliance.volume.errors import BitmapError

if TYPE_CHECKING:
    from appliance.storage import BlockIO
    from appliance.volume.promotion_base import PromotionBase

SECTOR = 512
# Beyond this many remembered chunk touches, forget them all and raise the floor instead:
# memory stays bounded and the only cost is refusing clears older than the floor.
MAX_TRACKED_TOUCHES = 1 << 20


class DirtyBitmap:
    """Owner of one bitmap file. Not thread-safe: the Volume calls it under its lock."""

    def __init__(self, io: BlockIO, header: fmt.BitmapHeader, bits: bytearray,
                 next_header_slot: int) -> None:
        self._io = io
        self._header = header
        self._bits = bits
        self._bits_view = memoryview(bits)
        self._next_slot = next_header_slot
        self._dirty = sum(byte.bit_count() for byte in bits)
        self._touched: dict[int, int] = {}
        self._touch_floor = 0
        self._batch_gen = header.completed_gen

    @classmethod
    def open(cls, io: BlockIO, *, volume_uuid: uuid.UUID, chunk_size: int,
             num_chunks: int, adopt_size: bool = False) -> DirtyBitmap:
        """Open (or initialise an all-zero) bitmap file and start a new writer incarnation.

        With `adopt_size`, a bitmap of this volume with another chunk count (a resize the
        power cut interrupted: the journal's superblock decides the size) is resized to
        `num_chunks`. Raises BitmapError if the file belongs to another volume or geometry."""
        next_slot, found = cls.check(io, volume_uuid=volume_uuid, chunk_size=chunk_size,
                                     num_chunks=num_chunks, adopt_size=adopt_size)
        if found is None:
            bits = bytearray(fmt.bits_length(num_chunks))
            found = fmt.BitmapHeader(0, volume_uuid, chunk_size, num_chunks, 0, 0,
                                     fmt.MODE_JOURNALING, 0, 0)
            io.pwritev(fmt.BITS_OFFSET, [bits])      # a reused file starts clean
        else:
            bits = bytearray(fmt.bits_length(found.num_chunks))
            io.pread_into(fmt.BITS_OFFSET, memoryview(bits))
        bm = cls(io, found, bits, next_slot)
        bm._publish(incarnation=found.incarnation + 1, completed_gen=0)
        bm._batch_gen = 0
        if found.num_chunks != num_chunks:
            bm.resize(num_chunks)                    # syncs
        else:
            io.sync()
        return bm

    @staticmethod
    def check(io: BlockIO, *, volume_uuid: uuid.UUID, chunk_size: int,
              num_chunks: int, adopt_size: bool = False) -> tuple[int, fmt.BitmapHeader | None]:
        """Read-only: is this file usable as the bitmap of that volume? Returns the slot to
        write next and the header (None for a blank file); raises BitmapError otherwise."""
        need = fmt.file_size(num_chunks)
        if io.size() < need:
            raise BitmapError(f"bitmap file is {io.size()} bytes, needs {need} for "
                              f"{num_chunks} chunks of {chunk_size} bytes")
        slots = bytearray(2 * fmt.SLOT_SIZE)
        io.pread_into(0, memoryview(slots))
        try:
            copies = [fmt.decode_header(memoryview(slots)[offset:offset + fmt.SLOT_SIZE])
                      for offset in fmt.HEADER_OFFSETS]
        except fmt.BitmapFormatError as err:
            raise BitmapError(str(err)) from err
        next_slot, found = fmt.newest(copies)
        if found is not None:
            _check_identity(found, volume_uuid, chunk_size,
                            found.num_chunks if adopt_size else num_chunks)
            if io.size() < fmt.file_size(found.num_chunks):
                raise BitmapError(f"bitmap file is {io.size()} bytes, its header describes "
                                  f"{found.num_chunks} chunks; was it truncated?")
        return next_slot, found

    @property
    def io(self) -> BlockIO:
        return self._io

    # -- state ------------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return self._header.chunk_size

    @property
    def num_chunks(self) -> int:
        return self._header.num_chunks

    @property
    def logging(self) -> bool:
        return self._header.mode == fmt.MODE_LOGGING

    @property
    def logging_since_ns(self) -> int:
        return self._header.logging_since_ns

    @property
    def overflow_seq(self) -> int:
        return self._header.overflow_seq

    @property
    def journal_paused(self) -> bool:
        return self._header.journal_paused

    @property
    def logging_reason(self) -> int:
        return self._header.logging_reason

    @property
    def reason_text(self) -> str | None:
        return self._header.reason_text

    @property
    def dirty_chunks(self) -> int:
        return self._dirty

    @property
    def incarnation(self) -> int:
        return self._header.incarnation

    def is_dirty(self, chunk: int) -> bool:
        return bool(self._bits[chunk >> 3] & (1 << (chunk & 7)))

    def dirty_runs(self) -> Iterator[tuple[int, int]]:
        """(first chunk, count) for every run of dirty chunks."""
        return fmt.iter_runs(self._bits, self.num_chunks)

    def set_mode(self, logging: bool, overflow_seq: int, *,
                 reason: int = fmt.REASON_UNKNOWN, paused: bool = False) -> None:
        """Persist the mode durably (before the first write that depends on it), in one
        header write: with it why the writer logs (`reason`, kept if already logging) and
        whether the admin paused journaling (`paused`). Leaving logging while paused is
        refused (ValueError): only `set_paused(False)` ends an admin's pause."""
        if not logging and self.journal_paused:
            raise ValueError("journaling is paused by the admin; resume it first")
        mode = fmt.MODE_LOGGING if logging else fmt.MODE_JOURNALING
        since = self._header.logging_since_ns if self.logging else time.time_ns()
        if logging and self.logging:
            reason = self._header.logging_reason
        flags = self._header.flags       # already logging: an admin's pause stays
        if not logging:
            flags &= ~fmt.FLAG_JOURNAL_PAUSED
        elif paused:
            flags |= fmt.FLAG_JOURNAL_PAUSED
        self._publish(mode=mode, overflow_seq=overflow_seq,
                      logging_since_ns=since if logging else 0,
                      logging_reason=reason if logging else fmt.REASON_UNKNOWN, flags=flags)
        self._io.sync()

    def set_paused(self, paused: bool) -> None:
        """Set or clear the admin's pause of journaling, durably (one header write). Pausing
        needs logging-to-bitmap already (ValueError otherwise: ``set_mode`` enters both)."""
        if paused and not self.logging:
            raise ValueError("pausing journaling needs logging-to-bitmap first (set_mode)")
        flags = self._header.flags & ~fmt.FLAG_JOURNAL_PAUSED
        self._publish(flags=flags | (fmt.FLAG_JOURNAL_PAUSED if paused else 0))
        self._io.sync()

    @property
    def sync_flags(self) -> int:
        """The admin's replication mode bits (``fmt.SYNC_FLAGS``) and its fall-back in ms."""
        return self._header.flags & fmt.SYNC_FLAGS

    @property
    def sync_fallback_ms(self) -> int:
        return self._header.sync_fallback_ms

    def set_sync(self, flags: int, fallback_ms: int) -> None:
        """Persist the replication mode (``fmt.SYNC_FLAGS`` bits) durably, one header write."""
        if flags & ~fmt.SYNC_FLAGS or not 0 <= fallback_ms < 1 << 32:
            raise ValueError(f"sync flags {flags:#x} or fall-back {fallback_ms} ms invalid")
        self._publish(flags=(self._header.flags & ~fmt.SYNC_FLAGS) | flags,
                      sync_fallback_ms=fallback_ms)
        self._io.sync()

    @property
    def base(self) -> PromotionBase | None:
        """The promoted image this volume's changes are counted from (None: not known)."""
        return self._header.base

    def set_base(self, base: PromotionBase | None) -> None:
        """Persist the promotion base durably, one header write (every later header write
        keeps it: ``_publish`` replaces only the fields it is given)."""
        self._publish(base=base)
        self._io.sync()

    def resize(self, num_chunks: int) -> None:
        """Change the chunk count (the volume was resized), durably. New chunks start clean;
        bits of chunks beyond a new end are dropped (the journal's superblock already says
        those blocks are gone). The file must already hold ``fmt.file_size(num_chunks)``."""
        need = fmt.file_size(num_chunks)
        if self._io.size() < need:
            raise BitmapError(f"bitmap file is {self._io.size()} bytes, needs {need} for "
                              f"{num_chunks} chunks")
        old = self.num_chunks
        self._bits_view.release()
        if num_chunks < old:
            self._dirty -= sum(1 for chunk in range(num_chunks, old) if self.is_dirty(chunk))
            self._touched = {chunk: gen for chunk, gen in self._touched.items()
                             if chunk < num_chunks}
        del self._bits[fmt.bits_length(num_chunks):]
        self._bits.extend(bytes(fmt.bits_length(num_chunks) - len(self._bits)))
        self._clear_from(min(old, num_chunks))
        self._bits_view = memoryview(self._bits)
        # Clean bits for every chunk past the smaller end, on disk before the header names them.
        start = min(old, num_chunks) >> 3
        self._io.pwritev(fmt.BITS_OFFSET + start, [self._bits_view[start:]])
        self._io.sync()
        self._publish(num_chunks=num_chunks)
        self._io.sync()

    def _clear_from(self, chunk: int) -> None:
        """Clear every bit from `chunk` to the end of the bit area (in memory)."""
        byte = chunk >> 3
        if byte < len(self._bits):
            self._bits[byte] &= (1 << (chunk & 7)) - 1
            self._bits[byte + 1:] = bytes(len(self._bits) - byte - 1)

    # -- marking (writer) -------------------------------------------------------------
    def chunk_range(self, byte_offset: int, length: int) -> tuple[int, int]:
        first = byte_offset // self.chunk_size
        last = (byte_offset + length - 1) // self.chunk_size
        return first, last - first + 1

    def begin_batch(self) -> int:
        """Generation number of the batch about to be written to the mirror."""
        self._batch_gen += 1
        return self._batch_gen

    def mark(self, ranges: Iterable[tuple[int, int]], batch_gen: int) -> bool:
        """Set the bits of the chunk ranges and record that batch `batch_gen` touches them.

        Writes the changed sectors (no sync). Returns True if a bit was newly set, i.e. the
        caller must ``sync`` before the batch's mirror writes."""
        changed: set[int] = set()
        for first, count in ranges:
            bytes_changed, newly = fmt.set_bits(self._bits, first, count)
            self._dirty += newly
            changed.update(byte // SECTOR for byte in bytes_changed)
            if count + len(self._touched) > MAX_TRACKED_TOUCHES:
                self._touch_floor = batch_gen
                self._touched.clear()
            else:
                self._touched.update(dict.fromkeys(range(first, first + count), batch_gen))
        if changed:
            self._write_sectors(changed)
        return bool(changed)

    def mark_all(self) -> None:
        """Every chunk dirty, durably (initial sync, or a full resync after a failover)."""
        fmt.set_bits(self._bits, 0, self.num_chunks)
        self._dirty = self.num_chunks
        self._io.pwritev(fmt.BITS_OFFSET, [self._bits_view])
        self._io.sync()

    def finish_batch(self, batch_gen: int) -> None:
        """The batch's mirror writes are done: tell the resync process (no sync needed:
        after a crash the incarnation changes and older requests are ignored)."""
        self._publish(completed_gen=batch_gen)

    def sync(self) -> None:
        self._io.sync()

    # -- clearing and marking (on the resync process's request) ----------------------
    def pending_request(self) -> fmt.BitmapRequest | None:
        """A request the writer has not handled yet (one 8 KiB read), or None."""
        slots = bytearray(2 * fmt.SLOT_SIZE)
        self._io.pread_into(fmt.REQUEST_OFFSETS[0], memoryview(slots))
        copies = [fmt.decode_request(memoryview(slots)[i * fmt.SLOT_SIZE:(i + 1) * fmt.SLOT_SIZE])
                  for i in range(2)]
        _, req = fmt.newest(copies)
        if req is None or req.request_id <= self._header.processed_request:
            return None
        return req

    def handle_request(self, req: fmt.BitmapRequest) -> int:
        """Clear what `req` may clear. The caller must have made the mirror durable first:
        the resync shipped what it read from the page cache, and a clear must never outlive
        mirror data a power cut could still take. Returns how many chunks were cleared."""
        cleared = 0
        if req.incarnation == self._header.incarnation and req.seen_gen >= self._touch_floor:
            cleared = self._clear(req)
            self._touched = {chunk: gen for chunk, gen in self._touched.items()
                             if gen > req.seen_gen}
            self._touch_floor = max(self._touch_floor, req.seen_gen)
        self._publish(processed_request=req.request_id)
        return cleared

    def handle_mark(self, req: fmt.BitmapRequest) -> int:
        """Make the requested chunks dirty, durably, then say the request is handled (a peer
        that needs a full copy). Marking only ever adds work, so unlike a clear it needs no
        incarnation check. Returns how many chunks became dirty."""
        newly = 0
        for first, count in req.ranges:
            count = min(first + count, self.num_chunks) - first
            if first >= 0 and count > 0:
                newly += fmt.set_bits(self._bits, first, count)[1]
        self._dirty += newly
        self._io.pwritev(fmt.BITS_OFFSET, [self._bits_view])
        self._io.sync()
        self._publish(processed_request=req.request_id)
        return newly

    def poll_requests(self) -> int:
        """pending_request + handle_request, for callers whose mirror is already durable."""
        req = self.pending_request()
        return 0 if req is None else self.handle_request(req)

    def _clear(self, req: fmt.BitmapRequest) -> int:
        changed: set[int] = set()
        cleared = 0
        for first, count in req.ranges:
            for chunk in range(first, min(first + count, self.num_chunks)):
                byte, mask = chunk >> 3, 1 << (chunk & 7)
                if self._bits[byte] & mask and self._touched.get(chunk, 0) <= req.seen_gen:
                    self._bits[byte] &= ~mask
                    changed.add(byte // SECTOR)
                    cleared += 1
        self._dirty -= cleared
        if changed:
            self._write_sectors(changed)
        return cleared

    # -- plumbing ---------------------------------------------------------------------
    def _write_sectors(self, sectors: set[int]) -> None:
        ordered = sorted(sectors)
        start = prev = ordered[0]
        for sector in [*ordered[1:], None]:
            if sector is not None and sector == prev + 1:
                prev = sector
                continue
            lo, hi = start * SECTOR, (prev + 1) * SECTOR
            self._io.pwritev(fmt.BITS_OFFSET + lo, [self._bits_view[lo:hi]])
            if sector is not None:
                start = prev = sector

    def _publish(self, **changes: object) -> None:
        new = dataclasses.replace(self._header, generation=self._header.generation + 1,
                                  **changes)
        self._io.pwritev(fmt.HEADER_OFFSETS[self._next_slot], [fmt.encode_header(new)])
        self._next_slot = 1 - self._next_slot
        self._header = new

    def close(self) -> None:
        self._bits_view.release()
        self._io.close()


def _check_identity(header: fmt.BitmapHeader, volume_uuid: uuid.UUID, chunk_size: int,
                    num_chunks: int) -> None:
    if header.volume_uuid != volume_uuid:
        raise BitmapError(f"bitmap file belongs to volume {header.volume_uuid}, "
                          f"not {volume_uuid}")
    if (header.chunk_size, header.num_chunks) != (chunk_size, num_chunks):
        raise BitmapError(f"bitmap file has {header.num_chunks} chunks of "
                          f"{header.chunk_size} bytes, configuration asks for {num_chunks} "
                          f"of {chunk_size}; delete it to start a full resync with the new "
                          "geometry")
