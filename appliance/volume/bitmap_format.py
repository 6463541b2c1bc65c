"""On-disk layout of the dirty-region bitmap file (pure functions over bytes).

The file is shared by two processes with one rule: each area has exactly one writer.

    offset      size   owner        content
    0           4096   writer       header slot A  } newest valid copy wins
    4096        4096   writer       header slot B  }
    8192        4096   resyncer     request slot A  } newest valid copy wins
    12288       4096   resyncer     request slot B  }
    16384       ...    writer       the bits, one per chunk, LSB first, padded to 4096

Every slot carries a generation number and a CRC32C, and is written to the copy that
does not hold the newest generation, so a torn write leaves the previous copy intact.
See docs/volume.md for the protocol.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from appliance.checksum import crc32c
from appliance.volume.promotion_base import PromotionBase

SLOT_SIZE = 4096
HEADER_OFFSETS = (0, SLOT_SIZE)
REQUEST_OFFSETS = (2 * SLOT_SIZE, 3 * SLOT_SIZE)
BITS_OFFSET = 4 * SLOT_SIZE

HEADER_MAGIC = b"DRBITMAP"
REQUEST_MAGIC = b"DRBMCLR1"         # "clear these chunks, shipped as read after seen_gen"
MARK_MAGIC = b"DRBMMRK1"            # "mark these chunks dirty" (a full copy to a new peer)
# Header versions: 2 added logging_since_ns, 3 added flags and logging_reason, 4 the
# replication mode's fall-back time, 5 the promotion base (promotion_base.py). Versions 1 to 4
# are still read (the missing fields as 0, no base); the next header write is version 5.
HEADER_VERSION = 5
# Requests kept their layout: a resyncer of an earlier release still talks to this writer.
REQUEST_VERSION = 2

MODE_JOURNALING = 0
MODE_LOGGING = 1

# Header flags.
FLAG_JOURNAL_PAUSED = 1     # the admin paused journaling: stay in logging-to-bitmap until resumed
# The admin's replication mode (appliance/volume/sync_mode.py; neither bit: async) and its
# opt-in to hold writes rather than fall back to async.
FLAG_SYNC = 2
FLAG_SYNC_ON_FLUSH = 4
FLAG_SYNC_HOLD = 8
SYNC_FLAGS = FLAG_SYNC | FLAG_SYNC_ON_FLUSH | FLAG_SYNC_HOLD

# Why the writer logs to the bitmap (header field logging_reason; 0 while journaling, and in
# headers of versions 1 and 2, where it is unknown).
REASON_UNKNOWN = 0
REASON_JOURNAL_FULL = 1
REASON_FULL_RESYNC = 2
REASON_PEER_FULL_COPY = 3
REASON_ADOPTED_MIRROR = 4
REASON_ADMIN_PAUSE = 5
REASON_TEXT = {
    REASON_UNKNOWN: "unknown (an earlier release entered logging-to-bitmap)",
    REASON_JOURNAL_FULL: "journal full",
    REASON_FULL_RESYNC: "full resync requested",
    REASON_PEER_FULL_COPY: "peer needs a full copy",
    REASON_ADOPTED_MIRROR: "mirror held data the journal never recorded",
    REASON_ADMIN_PAUSE: "journaling resumed by admin; the resync ships what was written "
                        "while paused",
}
PAUSED_TEXT = "paused by admin"

# magic, version, generation, volume uuid, chunk size, chunks, incarnation,
# completed batch generation, mode, overflow seq, processed request id, logging since (ns),
# flags, logging reason, sync fall-back (ms), promotion base: lineage (all zero: none), seq,
# generation, promoted (ns)
_HEADER = struct.Struct("<8sIQ16sIQQQIQQQIII16sQQQ")
_HEADER_V4 = struct.Struct("<8sIQ16sIQQQIQQQIII")  # without the promotion base
_HEADER_V3 = struct.Struct("<8sIQ16sIQQQIQQQII")  # without the sync fall-back
_HEADER_V2 = struct.Struct("<8sIQ16sIQQQIQQQ")    # without flags and logging reason
_HEADER_V1 = struct.Struct("<8sIQ16sIQQQIQQ")     # without logging since either
# The fields versions 2 to 5 added, as an older header reads them.
_LATER_FIELDS = (0, 0, 0, 0, bytes(16), 0, 0, 0)
_LAYOUTS = {HEADER_VERSION: _HEADER, 4: _HEADER_V4, 3: _HEADER_V3, 2: _HEADER_V2, 1: _HEADER_V1}
# magic, version, generation, incarnation, request id, batch generation seen, range count
_REQUEST = struct.Struct("<8sIQQQQI")
_RANGE = struct.Struct("<QI")
_CRC = struct.Struct("<I")
MAX_REQUEST_RANGES = (SLOT_SIZE - _REQUEST.size - _CRC.size) // _RANGE.size


class BitmapFormatError(ValueError):
    """A slot or file that is not a bitmap of ours (bad magic, version or geometry)."""


@dataclass(frozen=True, slots=True)
class BitmapHeader:
    """The writer's slot: geometry plus the state the resync needs to read."""

    generation: int
    volume_uuid: uuid.UUID
    chunk_size: int
    num_chunks: int
    incarnation: int          # bumped at every writer open; stale requests are ignored
    completed_gen: int        # every write batch <= this has reached the mirror
    mode: int                 # MODE_JOURNALING or MODE_LOGGING
    overflow_seq: int         # last journal seq written before the overflow
    processed_request: int    # newest clear request the writer has handled
    # Wall clock (ns) when the writer entered logging-to-bitmap; 0 while journaling and in
    # headers of format version 1. Status reports it: since when the DR lacks these writes.
    logging_since_ns: int = 0
    flags: int = 0            # FLAG_JOURNAL_PAUSED (version 3; 0 in older headers)
    logging_reason: int = 0   # REASON_* why it logs to the bitmap (version 3; 0: unknown)
    sync_fallback_ms: int = 0  # the replication mode's fall-back time (version 4; 0: default)
    # The promoted image this volume's changes are counted from (version 5; None: the bitmap
    # and journal say nothing about an image before them).
    base: PromotionBase | None = None

    @property
    def journal_paused(self) -> bool:
        """The admin paused journaling: the writer stays in logging-to-bitmap until resumed."""
        return bool(self.flags & FLAG_JOURNAL_PAUSED)

    @property
    def reason_text(self) -> str | None:
        """Why the writer logs to the bitmap, for status; None while journaling."""
        return reason_text(self.mode == MODE_LOGGING, self.journal_paused, self.logging_reason)


@dataclass(frozen=True, slots=True)
class BitmapRequest:
    """The resyncer's slot. A clear request: "these chunks were shipped as read after batch
    `seen_gen`". A mark request: "make these chunks dirty" (the peer needs a full copy)."""

    generation: int
    incarnation: int
    request_id: int
    seen_gen: int
    ranges: tuple[tuple[int, int], ...]   # (first chunk, count)
    mark: bool = False


_Slot = TypeVar("_Slot", BitmapHeader, BitmapRequest)


def reason_text(logging: bool, journal_paused: bool, reason: int) -> str | None:
    """Status text of why a writer logs to the bitmap: "paused by admin" while paused (that is
    what keeps it there), else the reason it began; None while journaling."""
    if not logging:
        return None
    if journal_paused:
        return PAUSED_TEXT
    return REASON_TEXT.get(reason, f"reason code {reason}")


def bits_length(num_chunks: int) -> int:
    """Bytes of the bit area, padded to a whole slot."""
    raw = (num_chunks + 7) // 8
    return -(-raw // SLOT_SIZE) * SLOT_SIZE


def file_size(num_chunks: int) -> int:
    return BITS_OFFSET + bits_length(num_chunks)


def _seal(body: bytes) -> bytes:
    sealed = body + _CRC.pack(crc32c(body))
    return sealed + bytes(SLOT_SIZE - len(sealed))


def _unseal(slot: bytes | memoryview, length: int) -> bytes | None:
    body = bytes(slot[:length])
    (crc,) = _CRC.unpack_from(slot, length)
    return body if crc32c(body) == crc else None


def encode_header(header: BitmapHeader) -> bytes:
    base = header.base
    lineage, seq, generation, promoted_ns = (
        (bytes(16), 0, 0, 0) if base is None
        else (base.lineage.bytes, base.seq, base.generation, base.promoted_ns))
    return _seal(_HEADER.pack(
        HEADER_MAGIC, HEADER_VERSION, header.generation, header.volume_uuid.bytes,
        header.chunk_size, header.num_chunks, header.incarnation, header.completed_gen,
        header.mode, header.overflow_seq, header.processed_request, header.logging_since_ns,
        header.flags, header.logging_reason, header.sync_fallback_ms,
        lineage, seq, generation, promoted_ns))


def decode_header(slot: bytes | memoryview) -> BitmapHeader | None:
    """The header in one slot, or None if the slot is empty or torn.

    Raises BitmapFormatError for an intact slot of another format version."""
    if bytes(slot[:8]) != HEADER_MAGIC:
        return None
    (version,) = struct.unpack_from("<I", slot, 8)
    layout = _LAYOUTS.get(version)
    body = _unseal(slot, layout.size if layout else _HEADER.size)
    if body is None:
        return None
    if layout is None:
        raise BitmapFormatError(f"bitmap format version {version} is not supported "
                                f"(this software reads versions 1 to {HEADER_VERSION})")
    (_, _, gen, vol, chunk, chunks, inc, done, mode, ovf, proc, *rest) = layout.unpack(body)
    since, flags, reason, fallback, lineage, seq, generation, promoted_ns = (
        *rest, *_LATER_FIELDS[len(rest):])
    base = None if not any(lineage) else PromotionBase(uuid.UUID(bytes=lineage), seq,
                                                       generation, promoted_ns)
    return BitmapHeader(gen, uuid.UUID(bytes=vol), chunk, chunks, inc, done, mode, ovf, proc,
                        since, flags, reason, fallback, base)


def encode_request(request: BitmapRequest) -> bytes:
    if len(request.ranges) > MAX_REQUEST_RANGES:
        raise ValueError(f"a clear request holds at most {MAX_REQUEST_RANGES} ranges")
    magic = MARK_MAGIC if request.mark else REQUEST_MAGIC
    body = _REQUEST.pack(magic, REQUEST_VERSION, request.generation, request.incarnation,
                         request.request_id, request.seen_gen, len(request.ranges))
    body += b"".join(_RANGE.pack(first, count) for first, count in request.ranges)
    return _seal(body)


def decode_request(slot: bytes | memoryview) -> BitmapRequest | None:
    """The request in one slot, or None if empty, torn or not ours."""
    (n_ranges,) = struct.unpack_from("<I", slot, _REQUEST.size - 4)
    if n_ranges > MAX_REQUEST_RANGES:
        return None
    length = _REQUEST.size + n_ranges * _RANGE.size
    body = _unseal(slot, length)
    if body is None:
        return None
    magic, version, gen, inc, rid, seen, _ = _REQUEST.unpack_from(body)
    if magic not in (REQUEST_MAGIC, MARK_MAGIC) or version != REQUEST_VERSION:
        return None
    ranges = tuple(_RANGE.unpack_from(body, _REQUEST.size + i * _RANGE.size)
                   for i in range(n_ranges))
    return BitmapRequest(gen, inc, rid, seen, ranges, mark=magic == MARK_MAGIC)


def newest(copies: Sequence[_Slot | None]) -> tuple[int, _Slot | None]:
    """Index of the copy to overwrite next and the newest valid copy (or None)."""
    valid = [(copy.generation, i, copy) for i, copy in enumerate(copies) if copy is not None]
    if not valid:
        return 0, None
    _, idx, best = max(valid, key=lambda entry: entry[0])
    return 1 - idx, best


def set_bits(bits: bytearray, first: int, count: int) -> tuple[list[int], int]:
    """Set bits [first, first+count). Returns (indexes of changed bytes, bits newly set)."""
    changed: list[int] = []
    newly = 0
    chunk, end = first, first + count
    while chunk < end:
        byte, lo = chunk >> 3, chunk & 7
        hi = min(8, lo + end - chunk)
        old = bits[byte]
        new = old | (((1 << hi) - 1) & ~((1 << lo) - 1))
        if new != old:
            bits[byte] = new
            changed.append(byte)
            newly += (new ^ old).bit_count()
        chunk += hi - lo
    return changed, newly


def iter_runs(bits: bytes | bytearray | memoryview, num_chunks: int, start: int = 0):
    """Yield (first chunk, count) for each run of set bits from `start`, skipping clear bytes fast."""
    mv = memoryview(bits)
    nbytes = (num_chunks + 7) // 8
    chunk = start
    run_start = -1
    while chunk < num_chunks:
        byte = chunk >> 3
        if run_start < 0 and chunk & 7 == 0:
            # skip zero bytes quickly
            nxt = _next_nonzero(mv, byte, nbytes)
            if nxt >= nbytes:
                break
            chunk = nxt << 3
            byte = nxt
        is_set = bool(mv[byte] & (1 << (chunk & 7)))
        if is_set and run_start < 0:
            run_start = chunk
        elif not is_set and run_start >= 0:
            yield run_start, chunk - run_start
            run_start = -1
        chunk += 1
    if run_start >= 0:
        yield run_start, min(chunk, num_chunks) - run_start


def _next_nonzero(mv: memoryview, byte: int, nbytes: int) -> int:
    step = 4096
    while byte < nbytes:
        end = min(nbytes, (byte // step + 1) * step)
        block = bytes(mv[byte:end])
        stripped = block.lstrip(b"\0")
        if stripped:
            return byte + len(block) - len(stripped)
        byte = end
    return nbytes
