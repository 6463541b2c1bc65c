"""The buffers of one placed record, as the writer hands them to `pwritev`.

A BATCH record is its metadata block (header, entries, CRCs), the data of its writes and
the zeros up to the next journal block; a PAD is a lone metadata block. Every host write
passes here: one loop over the ops, no tuple or view per write.
"""

from __future__ import annotations

from typing import Final

from appliance.checksum import crc32c
from appliance.journal.format import JBLOCK, Superblock
from appliance.journal.placement import ChainPoint, Placement
from appliance.journal.records import RecordKind, encode_meta, encode_meta_flat

_ZERO_BLOCK: Final = bytes(JBLOCK)


def emit_record(sb: Superblock, journal_uuid_bytes: bytes, planned: Placement,
                head: ChainPoint, timestamp_ns: int, tail_seq: int, synced_seq: int,
                bufs: list[bytes | memoryview]) -> ChainPoint:
    """Append the buffers of one record to `bufs`; return the chain point after it.

    `journal_uuid_bytes` is `sb.journal_uuid.bytes`, kept by the caller (UUID.bytes is
    computed on every access); `tail_seq` and `synced_seq` go into the header as they are
    when the record is written."""
    total = sb.area_blocks
    if not planned.ops:
        meta, header_crc = encode_meta(
            journal_uuid=sb.journal_uuid, kind=RecordKind.PAD, first_seq=head.seq,
            position=planned.block, record_blocks=planned.record_blocks,
            timestamp_ns=timestamp_ns, tail_seq=tail_seq,
            synced_seq=synced_seq, prev_crc=head.prev_crc, data_crc=0,
            data_bytes=0, entries=())
        bufs.append(memoryview(meta))   # BlockIO.pwritev takes bytes or memoryviews
        # The pad is not followed by its blank blocks: the next record starts a segment,
        # and links to the last BATCH record, as the pad does.
        return ChainPoint((planned.block + planned.record_blocks) % total, head.seq,
                          head.prev_crc)
    # Every host write passes here. One loop over the ops, which are native objects when
    # this module is compiled (docs/compiled.md): attribute reads, no map or chain objects.
    ops = planned.ops
    data_crc = 0
    entries: list[int] = []
    datas: list[bytes | memoryview] = []
    for op in ops:
        data = op.data
        if len(data):                      # UNMAP carries no bytes: no CRC step, no iovec
            data_crc = crc32c(data, data_crc)
            datas.append(data)
        entries += (op.kind, op.nblocks, op.lba)      # the order of a metadata entry
    size = sum(planned.lengths)
    meta, header_crc = encode_meta_flat(
        journal_uuid=journal_uuid_bytes, kind=RecordKind.BATCH, first_seq=head.seq,
        position=planned.block, record_blocks=planned.record_blocks,
        timestamp_ns=timestamp_ns, tail_seq=tail_seq, synced_seq=synced_seq,
        prev_crc=head.prev_crc, data_crc=data_crc, data_bytes=size, n_ops=len(ops),
        flat_entries=entries)
    bufs.append(memoryview(meta))
    bufs.extend(datas)
    if size % JBLOCK:
        bufs.append(_ZERO_BLOCK[: JBLOCK - size % JBLOCK])
    return ChainPoint((planned.block + planned.record_blocks) % total,
                      head.seq + len(planned.ops), header_crc)
