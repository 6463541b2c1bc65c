"""Replication wire format: frames and their payloads, as pure functions over bytes.

Every frame is ``header | payload | payload CRC32C``::

    header (16 bytes, little-endian)
      0  magic        4s   b"DRRL"
      4  version      u8   WIRE_VERSION
      5  type         u8   FrameType
      6  flags        u16  bit 0: payload is zstd-compressed; bit 1: the CRC covers the head
      8  length       u32  payload length on the wire (<= MAX_PAYLOAD)
     12  header_crc   u32  CRC32C of bytes 0..11
    payload (length bytes)
    payload_crc       u32  CRC32C of the payload as sent (compressed or not), or with bit 1
                           (FLAG_HEAD_CRC) of its head: the first ``u32`` of the payload
                           bytes, which the payload's own CRCs take over from there

The header has its own CRC so a corrupted length is caught before we wait for (or allocate)
a payload that will never come. Every record inside a batch carries a second CRC32C computed
over the *uncompressed* record, bound to the volume uuid and generation, so a record that is
damaged anywhere between the primary's journal and the peer's journal is caught end to end.
Bulk frames (BATCH, REGION) sent uncompressed carry FLAG_HEAD_CRC: their data is covered
once, by the records' (the region's) own CRCs, not twice (version 2; version 1 covered it
twice). Their data lies at page-aligned offsets of the payload where it is a whole number of
pages, so a receiver that reads the payload into page-aligned memory can write it to disk
with O_DIRECT straight from there. The full description is ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
from dataclasses import dataclass

from appliance.checksum import crc32c

MAGIC = b"DRRL"
WIRE_VERSION = 2
# The version before this one: a peer speaking it gets a REFUSE it can read (``encode_frame``
# with ``version``), never a frame of ours it would misread.
LEGACY_VERSION = 1
MAX_PAYLOAD = 64 * 1024 * 1024
FLAG_ZSTD = 0x0001
FLAG_HEAD_CRC = 0x0002
KNOWN_FLAGS = FLAG_ZSTD | FLAG_HEAD_CRC
PAGE = 4096                 # data a whole number of pages long starts on a page boundary

_HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = _HEADER.size
TRAILER_SIZE = 4
_U32 = struct.Struct("<I")


class FrameType(enum.IntEnum):
    HELLO = 1       # transmitter -> receiver, JSON
    WELCOME = 2     # receiver -> transmitter, JSON
    REFUSE = 3      # receiver -> transmitter, JSON; the receiver closes afterwards
    BATCH = 4       # transmitter -> receiver, binary records
    ACK = 5         # receiver -> transmitter: highest durable seq, highest applied seq
    RESEND = 6      # receiver -> transmitter: send again from this seq (gap seen)
    HEARTBEAT = 7   # either way, when idle
    ERROR = 8       # either way, JSON; the sender closes afterwards
    RESYNC_BEGIN = 9    # transmitter -> receiver, JSON: the DR image becomes inconsistent
    REGION = 10         # transmitter -> receiver: one region of the primary mirror
    REGION_ACK = 11     # receiver -> transmitter: that region is durable on the DR mirror
    RESYNC_END = 12     # transmitter -> receiver, JSON: consistent again at this seq
    HASHES = 13         # transmitter -> receiver: region hashes (verify / checksum skip)
    HASH_REPLY = 14     # receiver -> transmitter: which of those regions differ
    PRIMARY_STATE = 15  # transmitter -> receiver, JSON: what the primary holds that the DR
                        # may lack (sent only when WELCOME says primary_state)


class WireError(Exception):
    """Base: the byte stream is not a valid frame sequence. The link must be dropped."""


class BadMagic(WireError):
    """Not our protocol at all (garbage, or a different service on the port)."""


class BadVersion(WireError):
    """Our protocol, but a frame version we do not speak (``version``: the one received)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class BadChecksum(WireError):
    """A header, payload or record CRC32C did not match: bytes were damaged in transit."""


class BadFrame(WireError):
    """Well-checksummed but malformed: unknown type or flags, impossible length or field."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    payload: bytes | memoryview     # FrameLink.recv hands out a view (no copy)
    flags: int = 0


def encode_frame(ftype: FrameType, payload: bytes | memoryview, flags: int = 0,
                 *, version: int = WIRE_VERSION) -> bytes:
    """Serialise one frame. ``payload`` is taken as is (compress before, if at all).
    ``version``: LEGACY_VERSION only for the REFUSE that tells an old peer why."""
    return b"".join(frame_parts(ftype, [payload], flags, version=version))


_BULK = frozenset({FrameType.BATCH, FrameType.REGION})


def head_length(payload: bytes | memoryview, length: int) -> int:
    """The head a FLAG_HEAD_CRC frame's CRC covers: the payload's first u32, which must
    hold itself and lie within the payload."""
    if length < 4:
        raise BadFrame(f"a head-checked payload of {length} bytes has no head length")
    head = _U32.unpack_from(payload)[0]
    if not 4 <= head <= length:
        raise BadFrame(f"head length {head} outside the payload of {length} bytes")
    return head


def frame_parts(ftype: FrameType, parts: list[bytes | memoryview], flags: int = 0,
                *, version: int = WIRE_VERSION) -> list[bytes | memoryview]:
    """One frame as a list of buffers (header, the payload ``parts`` themselves, trailer):
    the same bytes as ``encode_frame(ftype, b"".join(parts), flags)``, so that a BATCH built
    from the journal's buffers is not copied on its way to the socket. With FLAG_HEAD_CRC
    the CRC covers the head only (its length: the first u32, inside ``parts[0]``)."""
    length = sum(len(p) for p in parts)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}")
    if flags & FLAG_HEAD_CRC:
        first = memoryview(parts[0]).cast("B")
        if len(first) < 4 or len(first) < head_length(first, length):
            raise ValueError("a head-checked frame's head must lie in its first part")
        pcrc = crc32c(first[: head_length(first, length)])
    else:
        pcrc = 0
        for part in parts:
            pcrc = crc32c(part, pcrc)
    head = _HEADER.pack(MAGIC, version, int(ftype), flags, length, 0)[:12]
    head += _U32.pack(crc32c(head))
    return [head, *parts, _U32.pack(pcrc)]


def parse_header(head: bytes | memoryview) -> tuple[FrameType, int, int]:
    """Validate a 16-byte header; return (type, flags, payload length).

    The order of checks gives the clearest message: magic first (a stranger), then the header
    CRC (damage), then version, type, flags and length.
    """
    if len(head) != HEADER_SIZE:
        raise BadFrame(f"header must be {HEADER_SIZE} bytes, got {len(head)}")
    magic, version, ftype, flags, length, hcrc = _HEADER.unpack(head)
    if magic != MAGIC:
        raise BadMagic(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a replication peer")
    if crc32c(bytes(head[:12])) != hcrc:
        raise BadChecksum("frame header CRC32C mismatch")
    if version != WIRE_VERSION:
        raise BadVersion(f"frame version {version} not supported (we speak {WIRE_VERSION})",
                         version)
    try:
        ft = FrameType(ftype)
    except ValueError as err:
        raise BadFrame(f"unknown frame type {ftype}") from err
    if flags & ~KNOWN_FLAGS:
        raise BadFrame(f"unknown frame flags {flags:#x}")
    if flags & FLAG_HEAD_CRC and (ft not in _BULK or flags & FLAG_ZSTD):
        raise BadFrame(f"{ft.name} frame with flags {flags:#x}: only an uncompressed BATCH or "
                       f"REGION has its head checked alone")
    if length > MAX_PAYLOAD:
        raise BadFrame(f"payload length {length} exceeds {MAX_PAYLOAD}")
    return ft, flags, length


def check_payload(payload: bytes | memoryview, trailer: bytes | memoryview,
                  flags: int = 0) -> None:
    """Raise BadChecksum unless ``trailer`` is the CRC32C of ``payload`` (of its head, with
    FLAG_HEAD_CRC: the rest is checked by the payload's own CRCs when it is decoded)."""
    covered = payload
    if flags & FLAG_HEAD_CRC:
        covered = memoryview(payload)[: head_length(payload, len(payload))]
    if crc32c(covered) != _U32.unpack(trailer)[0]:
        raise BadChecksum(f"frame payload CRC32C mismatch ({len(covered)} bytes)")


def decode_frames(buf: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
    """Decode all complete frames at the start of ``buf``.

    Returns the frames and the number of bytes consumed; a partial frame at the end is left
    for the next call. Raises a WireError on the first invalid frame.
    """
    view = memoryview(buf)
    frames: list[Frame] = []
    pos = 0
    while len(view) - pos >= HEADER_SIZE:
        ftype, flags, length = parse_header(view[pos : pos + HEADER_SIZE])
        end = pos + HEADER_SIZE + length + TRAILER_SIZE
        if end > len(view):
            break
        payload = view[pos + HEADER_SIZE : end - TRAILER_SIZE]
        check_payload(payload, view[end - TRAILER_SIZE : end], flags)
        frames.append(Frame(ftype, bytes(payload), flags))
        pos = end
    return frames, pos


# --- JSON control payloads (HELLO, WELCOME, REFUSE, ERROR) -------------------------------


def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_json(payload: bytes | memoryview) -> dict:
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadFrame(f"control payload is not JSON: {err}") from err
    if not isinstance(obj, dict):
        raise BadFrame("control payload must be a JSON object")
    return obj


# --- ACK, RESEND, HEARTBEAT ---------------------------------------------------------------

_ACK = struct.Struct("<QQ")
_SEQ = struct.Struct("<Q")


def encode_ack(durable_seq: int, applied_seq: int) -> bytes:
    return _ACK.pack(durable_seq, applied_seq)


def decode_ack(payload: bytes) -> tuple[int, int]:
    if len(payload) != _ACK.size:
        raise BadFrame(f"ACK payload must be {_ACK.size} bytes, got {len(payload)}")
    return _ACK.unpack(payload)


def encode_seq(seq: int) -> bytes:
    return _SEQ.pack(seq)


def decode_seq(payload: bytes) -> int:
    if len(payload) != _SEQ.size:
        raise BadFrame(f"payload must be {_SEQ.size} bytes, got {len(payload)}")
    return _SEQ.unpack(payload)[0]


# --- BATCH: records ------------------------------------------------------------------------

KIND_WRITE, KIND_WRITE_SAME, KIND_UNMAP = 1, 2, 3   # same values as appliance.journal.OpKind
_KINDS = (KIND_WRITE, KIND_WRITE_SAME, KIND_UNMAP)

# data_start (the head's length), volume uuid, generation, record count, alignment
_BATCH_HEAD = struct.Struct("<I16sQII")
# seq, timestamp_ns, kind, reserved(3), nblocks, lba, data_len, crc
_REC = struct.Struct("<QQB3xIQII")
_REC_CRC_AT = _REC.size - 4
_ALIGNS = (1, PAGE)
_ZEROS = bytes(PAGE)
# Pages of padding a batch may carry to align its data, per data byte (else it goes packed).
_PAD_SHARE = 16


@dataclass(frozen=True, slots=True)
class WireRecord:
    """One write as it travels: the journal Record's fields, without the journal's types."""

    seq: int
    timestamp_ns: int
    kind: int
    lba: int
    nblocks: int
    data: bytes | memoryview    # a received record's data is a view of its BATCH


@dataclass(frozen=True, slots=True)
class Batch:
    volume_uuid: uuid.UUID
    generation: int
    records: list[WireRecord]


def _align_up(n: int, align: int) -> int:
    return -(-n // align) * align


def batch_layout(lengths: list[int], align: int) -> tuple[int, list[int], int]:
    """Where a batch's parts go: (data_start, each record's data offset, payload length).

    The head (batch header, the record table, zeros) ends at ``data_start``, the table's
    end rounded up to ``align``; each record's data follows the one before, rounded up to
    ``align`` when the data is a whole number of ``align`` bytes (an empty one is not moved).
    ``align`` 1 packs everything."""
    data_start = _align_up(_BATCH_HEAD.size + _REC.size * len(lengths), align)
    pos, offsets = data_start, []
    for n in lengths:
        if align > 1 and n and not n % align:
            pos = _align_up(pos, align)
        offsets.append(pos)
        pos += n
    return data_start, offsets, pos


def encode_batch(volume_uuid: uuid.UUID, generation: int, records: list[WireRecord]) -> bytes:
    """Serialise records (uncompressed). Each record's CRC covers uuid, generation, header, data."""
    return b"".join(batch_parts(volume_uuid, generation, records))


def batch_parts(volume_uuid: uuid.UUID, generation: int, records: list[WireRecord]
                ) -> list[bytes | memoryview]:
    """``encode_batch`` as a list of buffers: the head (batch header, record table, zeros to
    the data), then the records' own data (not copied), with zeros between them where one is
    moved to a page boundary. Pages are used when the padding is a small share of the data
    (so that the receiver's disk writes can go direct), else the data is packed."""
    lengths = [len(r.data) for r in records]
    align = PAGE
    data_start, offsets, end = batch_layout(lengths, PAGE)
    if (end - sum(lengths) - _BATCH_HEAD.size - _REC.size * len(records)) * _PAD_SHARE > \
            sum(lengths):
        align = 1
        data_start, offsets, end = batch_layout(lengths, 1)
    ubytes = volume_uuid.bytes
    prefix_crc = crc32c(ubytes + _SEQ.pack(generation))
    table = [_BATCH_HEAD.pack(data_start, ubytes, generation, len(records), align)]
    pack, u32 = _REC.pack, _U32.pack
    for r in records:
        if r.kind not in _KINDS:
            raise ValueError(f"record {r.seq}: unknown kind {r.kind}")
        head = pack(r.seq, r.timestamp_ns, r.kind, r.nblocks, r.lba, len(r.data), 0)[:-4]
        table.append(head + u32(crc32c(r.data, crc32c(head, prefix_crc))))
    head_len = _BATCH_HEAD.size + _REC.size * len(records)
    table.append(_ZEROS[: data_start - head_len])
    parts: list[bytes | memoryview] = [b"".join(table)]
    pos = data_start
    for r, at in zip(records, offsets, strict=True):
        if at > pos:
            parts.append(_ZEROS[: at - pos])
        if len(r.data):
            parts.append(r.data)
        pos = at + len(r.data)
    return parts


def decode_batch(payload: bytes | memoryview) -> Batch:
    """Parse and verify every record of a batch; raise BadChecksum/BadFrame on the first bad one.

    The records' data are views into ``payload`` (no copy; they keep it alive), writable if
    the payload is: the receiver's own page-aligned buffer, which its disk writes read
    straight from. Zeros between records are never read."""
    view = memoryview(payload).cast("B")
    if len(view) < _BATCH_HEAD.size:
        raise BadFrame(f"batch payload of {len(view)} bytes is shorter than its header")
    data_start, ubytes, generation, count, align = _BATCH_HEAD.unpack_from(view)
    if align not in _ALIGNS:
        raise BadFrame(f"batch alignment {align} is neither 1 nor {PAGE}")
    table_end = _BATCH_HEAD.size + _REC.size * count
    if table_end > len(view):
        raise BadFrame(f"batch of {len(view)} bytes is too short for the table of its "
                       f"{count} records")
    if data_start != _align_up(table_end, align):
        raise BadFrame(f"batch data starts at {data_start}, its table ends at {table_end}")
    ubytes = bytes(ubytes)
    prefix_crc = crc32c(ubytes + _SEQ.pack(generation))
    table = view[_BATCH_HEAD.size:table_end]
    records: list[WireRecord] = []
    append = records.append
    pos = data_start
    prev_seq = None
    at = 0
    for seq, ts, kind, nblocks, lba, data_len, crc in _REC.iter_unpack(table):
        if align > 1 and data_len and not data_len % align:
            pos = _align_up(pos, align)
        end = pos + data_len
        if end > len(view):
            raise BadFrame(f"batch truncated in the data of record {seq} ({data_len} bytes)")
        data = view[pos:end]
        if crc32c(data, crc32c(table[at : at + _REC_CRC_AT], prefix_crc)) != crc:
            raise BadChecksum(f"record {seq} CRC32C mismatch")
        if kind not in _KINDS:
            raise BadFrame(f"record {seq}: unknown kind {kind}")
        if prev_seq is not None and seq != prev_seq + 1:
            raise BadFrame(f"records within a batch must be consecutive: {prev_seq} then {seq}")
        prev_seq = seq
        append(WireRecord(seq, ts, kind, lba, nblocks, data))
        pos = end
        at += _REC.size
    if pos != len(view):
        raise BadFrame(f"{len(view) - pos} trailing bytes after {count} records")
    return Batch(uuid.UUID(bytes=ubytes), generation, records)


# --- REGION, HASHES, HASH_REPLY ----------------------------------------------------------

_REGION = struct.Struct("<IQII")   # data_start (the head's length), byte offset, length, CRC32C
_HASHES_HEAD = struct.Struct("<QI")   # request id, count
_HASH = struct.Struct("<QI16s")    # byte offset, length, blake2b-128 of the data
_ALIGN_REGIONS_FROM = 64 * 1024     # smaller regions are not worth a page of padding


def region_parts(offset: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    """A REGION payload as buffers: its head (zeros to a page boundary when the data is a
    whole number of pages of at least 64 KiB), then the data itself (not copied)."""
    length = len(data)
    start = PAGE if length >= _ALIGN_REGIONS_FROM and not length % PAGE else _REGION.size
    head = _REGION.pack(start, offset, length, crc32c(data))
    return [head + _ZEROS[: start - _REGION.size], data]


def encode_region(offset: int, data: bytes | memoryview) -> bytes:
    return b"".join(region_parts(offset, data))


def decode_region(payload: bytes | memoryview) -> tuple[int, memoryview]:
    """(byte offset, data): the data is a view of the payload, checked against its CRC."""
    view = memoryview(payload).cast("B")
    if len(view) < _REGION.size:
        raise BadFrame(f"REGION payload of {len(view)} bytes is shorter than its header")
    start, offset, length, crc = _REGION.unpack_from(view)
    if start not in (_REGION.size, PAGE) or start > len(view):
        raise BadFrame(f"REGION data starts at {start} of a {len(view)}-byte payload")
    data = view[start:]
    if len(data) != length:
        raise BadFrame(f"REGION at {offset} says {length} bytes but carries {len(data)}")
    if crc32c(data) != crc:
        raise BadChecksum(f"REGION at byte {offset}: data CRC32C mismatch")
    return offset, data


def encode_hashes(request_id: int, regions: list[tuple[int, int, bytes]]) -> bytes:
    return _HASHES_HEAD.pack(request_id, len(regions)) + b"".join(
        _HASH.pack(off, length, digest) for off, length, digest in regions)


def decode_hashes(payload: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
    if len(payload) < _HASHES_HEAD.size:
        raise BadFrame("HASHES payload shorter than its header")
    rid, count = _HASHES_HEAD.unpack_from(payload)
    if len(payload) != _HASHES_HEAD.size + count * _HASH.size:
        raise BadFrame(f"HASHES payload of {len(payload)} bytes does not hold {count} hashes")
    return rid, [_HASH.unpack_from(payload, _HASHES_HEAD.size + i * _HASH.size)
                 for i in range(count)]


def encode_hash_reply(request_id: int, differing: list[int]) -> bytes:
    return _HASHES_HEAD.pack(request_id, len(differing)) + b"".join(
        _U32.pack(i) for i in differing)


def decode_hash_reply(payload: bytes) -> tuple[int, list[int]]:
    if len(payload) < _HASHES_HEAD.size:
        raise BadFrame("HASH_REPLY payload shorter than its header")
    rid, count = _HASHES_HEAD.unpack_from(payload)
    if len(payload) != _HASHES_HEAD.size + 4 * count:
        raise BadFrame(f"HASH_REPLY payload does not hold {count} indices")
    return rid, [_U32.unpack_from(payload, _HASHES_HEAD.size + 4 * i)[0] for i in range(count)]
