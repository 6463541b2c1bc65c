"""Record metadata blocks and the checks on write operations (pure functions).

A record is one metadata block followed by the data blocks of its writes, starting at a
journal-block boundary and never crossing a segment boundary. A PAD record is a lone
metadata block that says "the rest of this segment is unused; continue at the next one".
"""

from __future__ import annotations

import enum
import functools
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from appliance.checksum import crc32c
from appliance.journal.errors import InvalidRequest
from appliance.journal.format import FORMAT_VERSION, JBLOCK, MAX_SEQ, Superblock, crc
from appliance.journal.model import OpKind, WriteOp

RECORD_MAGIC: Final = b"DRJRECRD"
ENTRIES_OFFSET: Final = 128
MAX_OPS_PER_RECORD: Final = (JBLOCK - ENTRIES_OFFSET) // 16  # 248

# magic, header crc, version, kind, journal uuid, first seq, op count, record blocks,
# position, timestamp, tail seq, synced seq, prev crc, data crc, data bytes
_HDR: Final = struct.Struct("<8sIHH16sQIIQQQQIIQ")
_ENTRY: Final = struct.Struct("<BxxxIQ")  # kind, nblocks, lba
_CRC_FIELD: Final = struct.Struct("<I")
_CRC_FROM: Final = 12  # the header CRC covers bytes 12..4095 (everything after itself)


class RecordKind(enum.IntEnum):
    BATCH = 1
    PAD = 2


@dataclass(frozen=True, slots=True)
class RecordMeta:
    kind: RecordKind
    first_seq: int
    n_ops: int
    record_blocks: int  # metadata block included; for PAD: up to the segment end
    position: int  # area block of the metadata block
    timestamp_ns: int
    tail_seq: int  # the writer's tail when it wrote this record
    synced_seq: int  # every seq below this was durable when this record was written
    prev_crc: int  # header CRC of the record before this one (the chain link)
    data_crc: int  # CRC32C of the data bytes (without the zero padding)
    data_bytes: int
    entries: tuple[tuple[int, int, int], ...]  # (kind, nblocks, lba) per write
    header_crc: int

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.n_ops

    @property
    def end_block(self) -> int:
        return self.position + self.record_blocks


def op_data_len(kind: int, nblocks: int, volume_block_size: int) -> int:
    if kind == OpKind.WRITE:
        return nblocks * volume_block_size
    if kind == OpKind.WRITE_SAME:
        return volume_block_size
    return 0


def data_blocks(data_bytes: int) -> int:
    return -(-data_bytes // JBLOCK)


@functools.lru_cache(maxsize=MAX_OPS_PER_RECORD + 1)
def _entries_struct(count: int) -> struct.Struct:
    return struct.Struct("<" + "BxxxIQ" * count)


def encode_meta(*, journal_uuid: uuid.UUID, kind: RecordKind, first_seq: int, position: int,
                record_blocks: int, timestamp_ns: int, tail_seq: int, synced_seq: int,
                prev_crc: int, data_crc: int, data_bytes: int,
                entries: Sequence[tuple[int, int, int]]) -> tuple[bytearray, int]:
    """The metadata block and its header CRC (the next record's `prev_crc`)."""
    return encode_meta_flat(
        journal_uuid=journal_uuid, kind=kind, first_seq=first_seq, position=position,
        record_blocks=record_blocks, timestamp_ns=timestamp_ns, tail_seq=tail_seq,
        synced_seq=synced_seq, prev_crc=prev_crc, data_crc=data_crc, data_bytes=data_bytes,
        n_ops=len(entries), flat_entries=[field for entry in entries for field in entry])


def encode_meta_flat(*, journal_uuid: uuid.UUID | bytes, kind: RecordKind, first_seq: int,
                     position: int, record_blocks: int, timestamp_ns: int, tail_seq: int,
                     synced_seq: int, prev_crc: int, data_crc: int, data_bytes: int,
                     n_ops: int, flat_entries: Sequence[int]) -> tuple[bytearray, int]:
    """`encode_meta` with the entries given flat (kind, nblocks, lba, kind, ...), as the
    writer's append path builds them without a tuple per write; `journal_uuid` may be given
    as its 16 bytes (the writer keeps them, sparing a UUID.bytes per record)."""
    if isinstance(journal_uuid, uuid.UUID):
        journal_uuid = journal_uuid.bytes
    block = bytearray(JBLOCK)
    _HDR.pack_into(block, 0, RECORD_MAGIC, 0, FORMAT_VERSION, kind, journal_uuid,
                   first_seq, n_ops, record_blocks, position, timestamp_ns, tail_seq,
                   synced_seq, prev_crc, data_crc, data_bytes)
    if n_ops == 1:                  # a batch of one write (every write at queue depth 1)
        _ENTRY.pack_into(block, ENTRIES_OFFSET, flat_entries[0], flat_entries[1],
                         flat_entries[2])
    elif n_ops:
        _entries_struct(n_ops).pack_into(block, ENTRIES_OFFSET, *flat_entries)
    header_crc = crc32c(memoryview(block)[_CRC_FROM:])
    _CRC_FIELD.pack_into(block, 8, header_crc)
    return block, header_crc


def parse_meta(block: bytes | bytearray | memoryview, journal_uuid: uuid.UUID, position: int,
               volume_block_size: int) -> RecordMeta | None:
    """The record metadata in `block` read from area block `position`, or None when the
    block is not an intact metadata block of this journal written at this position."""
    if bytes(block[:8]) != RECORD_MAGIC:
        return None
    (_, header_crc, version, kind, juuid, first_seq, n_ops, record_blocks, pos, ts, tail,
     synced, prev_crc, data_crc, data_bytes) = _HDR.unpack_from(block, 0)
    if header_crc != crc(memoryview(block)[_CRC_FROM:JBLOCK]):
        return None
    if (version != FORMAT_VERSION or juuid != journal_uuid.bytes or pos != position
            or kind not in (RecordKind.BATCH, RecordKind.PAD) or n_ops > MAX_OPS_PER_RECORD
            or record_blocks < 1 or first_seq > MAX_SEQ):
        return None
    entries = tuple(_ENTRY.unpack_from(block, ENTRIES_OFFSET + i * _ENTRY.size)
                    for i in range(n_ops))
    if kind == RecordKind.BATCH:
        total = 0
        for op_kind, nblocks, _ in entries:
            if op_kind not in (OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP):
                return None
            total += op_data_len(op_kind, nblocks, volume_block_size)
        if n_ops == 0 or total != data_bytes or record_blocks != 1 + data_blocks(data_bytes):
            return None
    elif n_ops or data_bytes:
        return None
    return RecordMeta(RecordKind(kind), first_seq, n_ops, record_blocks, pos, ts, tail, synced,
                      prev_crc, data_crc, data_bytes, entries, header_crc)


_KINDS: Final = {int(op_kind): op_kind for op_kind in OpKind}
_WHAT: Final = {OpKind.WRITE: "{n} blocks of {bs} bytes",
                OpKind.WRITE_SAME: "exactly one block of {bs} bytes", OpKind.UNMAP: "no data"}


def check_ops(ops: Sequence[WriteOp], sb: Superblock) -> list[int]:
    """Validate writes against the volume geometry; return their payload lengths.
    (One loop with local names, enum members matched by identity and no calls per write:
    this runs for every host write. `_refuse` works out what is wrong.)"""
    bs, volume_blocks = sb.volume_block_size, sb.volume_blocks
    limit = sb.max_op_data_blocks * JBLOCK
    write, write_same, unmap = OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP
    kinds = _KINDS
    lengths: list[int] = []
    add = lengths.append
    for op in ops:
        kind, lba, nblocks, data = op.kind, op.lba, op.nblocks, op.data
        if (type(lba) is not int or type(nblocks) is not int or nblocks < 1 or lba < 0
                or lba + nblocks > volume_blocks):
            _refuse(op, sb)
        if kind is write:
            want = nblocks * bs
        elif kind is write_same:
            want = bs
        elif kind is unmap:
            want = 0
        else:  # a plain int is accepted too
            known = kinds.get(kind) if type(kind) is int else None
            if known is None:
                _refuse(op, sb)
            want = op_data_len(known, nblocks, bs)
        if want > limit or (data.nbytes if type(data) is memoryview else len(data)) != want:
            _refuse(op, sb)
        add(want)
    return lengths


def _refuse(op: WriteOp, sb: Superblock) -> NoReturn:
    """Raise the InvalidRequest that says what is wrong with `op`."""
    kind = _KINDS.get(op.kind) if type(op.kind) in (int, OpKind) else None  # not bool
    if kind is None:
        raise InvalidRequest(f"unknown write kind {op.kind!r}; use OpKind.WRITE, "
                             f"WRITE_SAME or UNMAP")
    lba, nblocks = op.lba, op.nblocks
    if type(lba) is not int or type(nblocks) is not int:
        raise InvalidRequest(f"lba and nblocks must be integers, got {lba!r}, {nblocks!r}")
    if nblocks < 1:
        raise InvalidRequest(f"a write must cover at least one block, got nblocks={nblocks}")
    if lba < 0 or lba + nblocks > sb.volume_blocks:
        raise InvalidRequest(
            f"blocks {lba}..{lba + nblocks - 1} are outside the volume of "
            f"{sb.volume_blocks} blocks of {sb.volume_block_size} bytes")
    bs = sb.volume_block_size
    want = op_data_len(kind, nblocks, bs)
    got = op.data.nbytes if isinstance(op.data, memoryview) else len(op.data)
    if got != want:
        what = _WHAT[kind].format(n=nblocks, bs=bs)
        raise InvalidRequest(f"{kind.name} at lba {lba} carries {got} bytes of data; "
                             f"it must carry {what} ({want} bytes)")
    raise InvalidRequest(
        f"a single write of {want} bytes exceeds the journal's limit of "
        f"{sb.max_op_data_blocks * JBLOCK} bytes (segment size "
        f"{sb.segment_blocks * JBLOCK} minus one metadata block); split it")
