"""The resync side of the dirty-region bitmap, for a process other than the writer.

It never writes the writer's areas (header, bits): it reads them and leaves clear requests
in its own slot, which the writer handles between write batches (``Volume.service``).
One pass, in order:

1. ``snap = source.snapshot()``: reads the header (writer incarnation, ``seen_gen`` = newest
   write batch that had reached the mirror) and then the dirty runs.
2. For each run: read the region from the mirror (``region_extent``), ship it, wait for the
   peer to hold it durably.
3. ``source.request_clear(snap, shipped_runs)`` and ``wait_processed``: the writer clears the
   chunks not written by a batch newer than ``seen_gen``; the others stay dirty for the next
   pass. A request from an older writer incarnation is ignored (nothing cleared).

Before shipping any region the journal must be drained up to ``snap.overflow_seq``, so the peer
never applies an older journal record over a newer region.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.volume import bitmap_format as fmt
from appliance.volume.errors import BitmapError

if TYPE_CHECKING:
    from appliance.storage import BlockIO


@dataclass(frozen=True, slots=True)
class ResyncSnapshot:
    incarnation: int
    seen_gen: int
    logging: bool                        # writer is in logging-to-bitmap
    overflow_seq: int                    # drain the journal to here before shipping regions
    chunk_size: int
    runs: tuple[tuple[int, int], ...]    # dirty (first chunk, count), in order
    logging_since_ns: int = 0            # when logging-to-bitmap began (0: journaling/unknown)
    # The admin paused journaling: the writer stays in logging-to-bitmap until resumed, even
    # once every chunk is clean (a resync then waits for the writer).
    journal_paused: bool = False
    # Why the writer logs to the bitmap, for status ("journal full", "paused by admin", ...;
    # bitmap_format.reason_text); None while journaling.
    logging_reason: str | None = None

    @property
    def dirty_chunks(self) -> int:
        return sum(count for _, count in self.runs)


def region_extent(chunk_size: int, first: int, count: int, volume_bytes: int) -> tuple[int, int]:
    """(byte offset, length) on the mirror of chunks [first, first+count)."""
    start = first * chunk_size
    return start, min((first + count) * chunk_size, volume_bytes) - start


class ResyncSource:
    """Read-only view of a bitmap file plus the resyncer's request slot."""

    def __init__(self, io: BlockIO) -> None:
        self._io = io
        header = self.header()
        self._num_chunks = header.num_chunks
        slots = bytearray(2 * fmt.SLOT_SIZE)
        io.pread_into(fmt.REQUEST_OFFSETS[0], memoryview(slots))
        copies = [fmt.decode_request(memoryview(slots)[i * fmt.SLOT_SIZE:(i + 1) * fmt.SLOT_SIZE])
                  for i in range(2)]
        self._next_slot, last = fmt.newest(copies)
        self._last_id = max(header.processed_request, last.request_id if last else 0)

    def header(self) -> fmt.BitmapHeader:
        slots = bytearray(2 * fmt.SLOT_SIZE)
        self._io.pread_into(0, memoryview(slots))
        try:
            copies = [fmt.decode_header(memoryview(slots)[offset:offset + fmt.SLOT_SIZE])
                      for offset in fmt.HEADER_OFFSETS]
        except fmt.BitmapFormatError as err:
            raise BitmapError(str(err)) from err
        _, found = fmt.newest(copies)
        if found is None:
            raise BitmapError("bitmap file has no valid header (never opened by a writer?)")
        return found

    def snapshot(self) -> ResyncSnapshot:
        """Header first, then the bits: the data read afterwards is at least as new as
        batch ``seen_gen``."""
        header = self.header()
        bits = bytearray(fmt.bits_length(header.num_chunks))
        self._io.pread_into(fmt.BITS_OFFSET, memoryview(bits))
        return ResyncSnapshot(header.incarnation, header.completed_gen,
                              header.mode == fmt.MODE_LOGGING, header.overflow_seq,
                              header.chunk_size, tuple(fmt.iter_runs(bits, header.num_chunks)),
                              header.logging_since_ns, header.journal_paused,
                              header.reason_text)

    def request_clear(self, snap: ResyncSnapshot, runs: Sequence[tuple[int, int]]) -> int:
        """Ask the writer to clear shipped chunks. Returns the request id to wait for.

        One request at a time: wait for it before the next (a newer request replaces an
        unhandled one, whose chunks then simply stay dirty)."""
        if len(runs) > fmt.MAX_REQUEST_RANGES:
            raise ValueError(f"at most {fmt.MAX_REQUEST_RANGES} runs per clear request; "
                             "split the list (see clear_shipped)")
        for first, count in runs:
            if first < 0 or count < 1 or first + count > self._num_chunks:
                raise ValueError(f"chunk run ({first}, {count}) outside 0..{self._num_chunks}")
        self._last_id += 1
        req = fmt.BitmapRequest(self._last_id, snap.incarnation, self._last_id, snap.seen_gen,
                               tuple(runs))
        self._write_request(req)
        return self._last_id

    def _write_request(self, req: fmt.BitmapRequest) -> None:
        self._io.pwritev(fmt.REQUEST_OFFSETS[self._next_slot], [fmt.encode_request(req)])
        self._next_slot = 1 - self._next_slot

    def request_mark_all(self) -> int:
        """Ask the writer to mark every chunk dirty (the peer needs a full copy); it enters
        logging-to-bitmap like after a journal overflow. Returns the request id to wait for."""
        self._last_id += 1
        req = fmt.BitmapRequest(self._last_id, self.header().incarnation, self._last_id, 0,
                                ((0, self.header().num_chunks),), mark=True)
        self._write_request(req)
        return self._last_id

    def wait_processed(self, request_id: int, *, timeout: float,
                       poll: Callable[[], None] | None = None, interval: float = 0.005) -> None:
        """Until the writer has handled `request_id`. `poll` lets an in-process caller drive
        the writer (``volume.service``). Raises TimeoutError naming what hung."""
        deadline = time.monotonic() + timeout
        while self.header().processed_request < request_id:
            if time.monotonic() > deadline:
                raise TimeoutError(f"writer did not handle bitmap request {request_id} "
                                   f"within {timeout}s (is the handler calling service()?)")
            if poll is not None:
                poll()
            else:
                time.sleep(interval)

    def clear_shipped(self, snap: ResyncSnapshot, runs: Sequence[tuple[int, int]], *,
                      timeout: float, poll: Callable[[], None] | None = None) -> None:
        """request_clear + wait_processed, in slices that fit one request slot."""
        step = fmt.MAX_REQUEST_RANGES
        for i in range(0, len(runs), step):
            rid = self.request_clear(snap, runs[i:i + step])
            self.wait_processed(rid, timeout=timeout, poll=poll)

    def close(self) -> None:
        self._io.close()
