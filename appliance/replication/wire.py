"""Replication wire format: frames and their payloads, as pure functions over bytes.

Every frame is ``header | payload | payload CRC32C``::

    header (16 bytes, little-endian)
      0  magic        4s   b"DRRL"
      4  version      u8   WIRE_VERSION
      5  type         u8   FrameType
      6  flags        u16  bit 0: payload is zstd-compressed
      8  length       u32  payload length on the wire (<= MAX_PAYLOAD)
     12  header_crc   u32  CRC32C of bytes 0..11
    payload (length bytes)
    payload_crc       u32  CRC32C of the payload as sent (compressed or not)

The header has its own CRC so a corrupted length is caught before we wait for (or allocate)
a payload that will never come. Every record inside a batch carries a second CRC32C computed
over the *uncompressed* record, bound to the volume uuid and generation, so a record that is
damaged anywhere between the primary's journal and the peer's journal is caught end to end.
The full description is ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
from dataclasses import dataclass

from appliance.checksum import crc32c

MAGIC = b"DRRL"
WIRE_VERSION = 1
MAX_PAYLOAD = 64 * 1024 * 1024
FLAG_ZSTD = 0x0001
KNOWN_FLAGS = FLAG_ZSTD

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
    """Our protocol, but a frame version we do not speak."""


class BadChecksum(WireError):
    """A header, payload or record CRC32C did not match: bytes were damaged in transit."""


class BadFrame(WireError):
    """Well-checksummed but malformed: unknown type or flags, impossible length or field."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    payload: bytes | memoryview     # FrameLink.recv hands out a view (no copy)
    flags: int = 0


def encode_frame(ftype: FrameType, payload: bytes | memoryview, flags: int = 0) -> bytes:
    """Serialise one frame. ``payload`` is taken as is (compress before, if at all)."""
    return b"".join(frame_parts(ftype, [payload], flags))


def frame_parts(ftype: FrameType, parts: list[bytes | memoryview], flags: int = 0
                ) -> list[bytes | memoryview]:
    """One frame as a list of buffers (header, the payload ``parts`` themselves, trailer):
    the same bytes as ``encode_frame(ftype, b"".join(parts))``, so that a BATCH built from
    the journal's buffers is copied once (joining the frame), not twice."""
    length = 0
    pcrc = 0
    for part in parts:
        length += len(part)
        pcrc = crc32c(part, pcrc)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}")
    head = _HEADER.pack(MAGIC, WIRE_VERSION, int(ftype), flags, length, 0)[:12]
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
        raise BadVersion(f"frame version {version} not supported (we speak {WIRE_VERSION})")
    try:
        ft = FrameType(ftype)
    except ValueError as err:
        raise BadFrame(f"unknown frame type {ftype}") from err
    if flags & ~KNOWN_FLAGS:
        raise BadFrame(f"unknown frame flags {flags:#x}")
    if length > MAX_PAYLOAD:
        raise BadFrame(f"payload length {length} exceeds {MAX_PAYLOAD}")
    return ft, flags, length


def check_payload(payload: bytes | memoryview, trailer: bytes | memoryview) -> None:
    """Raise BadChecksum unless ``trailer`` is the CRC32C of ``payload``."""
    if crc32c(payload) != _U32.unpack(trailer)[0]:
        raise BadChecksum(f"frame payload CRC32C mismatch ({len(payload)} bytes)")


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
        check_payload(payload, view[end - TRAILER_SIZE : end])
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

_BATCH_HEAD = struct.Struct("<16sQI")           # volume uuid, generation, record count
# seq, timestamp_ns, kind, reserved(3), nblocks, lba, data_len, crc
_REC = struct.Struct("<QQB3xIQII")


@dataclass(frozen=True, slots=True)
class WireRecord:
    """One write as it travels: the journal Record's fields, without the journal's types."""

    seq: int
    timestamp_ns: int
    kind: int
    lba: int
    nblocks: int
    data: bytes | memoryview    # a received record's data is a read-only view of its BATCH


@dataclass(frozen=True, slots=True)
class Batch:
    volume_uuid: uuid.UUID
    generation: int
    records: list[WireRecord]


def encode_batch(volume_uuid: uuid.UUID, generation: int, records: list[WireRecord]) -> bytes:
    """Serialise records (uncompressed). Each record's CRC covers uuid, generation, header, data."""
    return b"".join(batch_parts(volume_uuid, generation, records))


def batch_parts(volume_uuid: uuid.UUID, generation: int, records: list[WireRecord]
                ) -> list[bytes | memoryview]:
    """``encode_batch`` as a list of buffers (small headers and the records' own data), for
    ``frame_parts``: the data is not copied."""
    prefix_crc = crc32c(volume_uuid.bytes + _SEQ.pack(generation))
    parts: list[bytes | memoryview] = [_BATCH_HEAD.pack(volume_uuid.bytes, generation,
                                                        len(records))]
    pack, u32 = _REC.pack, _U32.pack
    for r in records:
        if r.kind not in _KINDS:
            raise ValueError(f"record {r.seq}: unknown kind {r.kind}")
        head = pack(r.seq, r.timestamp_ns, r.kind, r.nblocks, r.lba, len(r.data), 0)[:-4]
        crc = crc32c(r.data, crc32c(head, prefix_crc))
        parts.append(head + u32(crc))
        parts.append(r.data)
    return parts


def decode_batch(payload: bytes | memoryview) -> Batch:
    """Parse and verify every record of a batch; raise BadChecksum/BadFrame on the first bad one.

    The records' data are read-only views into ``payload`` (no copy; they keep it alive)."""
    view = memoryview(payload).toreadonly()
    if len(view) < _BATCH_HEAD.size:
        raise BadFrame(f"batch payload of {len(view)} bytes is shorter than its header")
    ubytes, generation, count = _BATCH_HEAD.unpack(view[: _BATCH_HEAD.size])
    prefix_crc = crc32c(bytes(ubytes) + _SEQ.pack(generation))
    pos = _BATCH_HEAD.size
    records: list[WireRecord] = []
    prev_seq = None
    for i in range(count):
        if len(view) - pos < _REC.size:
            raise BadFrame(f"batch truncated in the header of record {i} of {count}")
        head = view[pos : pos + _REC.size]
        seq, ts, kind, nblocks, lba, data_len, crc = _REC.unpack(head)
        pos += _REC.size
        if len(view) - pos < data_len:
            raise BadFrame(f"batch truncated in the data of record {seq} ({data_len} bytes)")
        data = view[pos : pos + data_len]
        pos += data_len
        if crc32c(data, crc32c(head[:-4], prefix_crc)) != crc:
            raise BadChecksum(f"record {seq} CRC32C mismatch")
        if kind not in _KINDS:
            raise BadFrame(f"record {seq}: unknown kind {kind}")
        if prev_seq is not None and seq != prev_seq + 1:
            raise BadFrame(f"records within a batch must be consecutive: {prev_seq} then {seq}")
        prev_seq = seq
        records.append(WireRecord(seq, ts, kind, lba, nblocks, data))
    if pos != len(view):
        raise BadFrame(f"{len(view) - pos} trailing bytes after {count} records")
    return Batch(uuid.UUID(bytes=bytes(ubytes)), generation, records)


# --- REGION, HASHES, HASH_REPLY ----------------------------------------------------------

_REGION = struct.Struct("<QII")    # byte offset, length, CRC32C of the data
_HASHES_HEAD = struct.Struct("<QI")   # request id, count
_HASH = struct.Struct("<QI16s")    # byte offset, length, blake2b-128 of the data


def encode_region(offset: int, data: bytes | memoryview) -> bytes:
    return _REGION.pack(offset, len(data), crc32c(data)) + bytes(data)


def decode_region(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < _REGION.size:
        raise BadFrame(f"REGION payload of {len(payload)} bytes is shorter than its header")
    offset, length, crc = _REGION.unpack_from(payload)
    data = payload[_REGION.size:]
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
