"""Frame version 2's bulk payloads: record and region data on page boundaries (so the DR's
disk writes can go direct from the receive buffer), each payload byte under exactly one CRC
(the frame's covers the head, the records' their data), and any damage still caught."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.replication import wire
from appliance.replication.wire import FrameType, WireRecord

VOL = uuid.UUID("12345678-1234-5678-1234-567812345678")
PAGE = wire.PAGE


def records(start: int, sizes: list[int], seed: int = 1) -> list[WireRecord]:
    rng = random.Random(seed)
    return [WireRecord(start + i, 10 + i, wire.KIND_WRITE if n else wire.KIND_UNMAP, 8 * i,
                       max(1, n // 512), rng.randbytes(n)) for i, n in enumerate(sizes)]


def test_whole_pages_start_on_a_page_and_anything_else_packs():
    recs = records(5, [64 << 10, 4096, 1000, 64 << 10, 0, 8192])
    payload = wire.encode_batch(VOL, 3, recs)
    batch = wire.decode_batch(bytearray(payload))
    assert batch.records == recs
    head = int.from_bytes(payload[:4], "little")
    assert head == PAGE                     # the table, then zeros to the first page
    positions = [payload.index(bytes(r.data)) for r in recs if r.data]
    assert positions[0] == PAGE
    for rec, at in zip([r for r in recs if r.data], positions, strict=True):
        if not len(rec.data) % PAGE:
            assert at % PAGE == 0, (len(rec.data), at)
    assert positions[2] == positions[1] + 4096          # 1000 bytes: packed right after
    # Where the padding would be a large share of the data, the batch goes packed.
    small = records(9, [4096, 512])
    packed = wire.encode_batch(VOL, 3, small)
    assert int.from_bytes(packed[:4], "little") == 36 + 40 * 2
    assert len(packed) == 36 + 40 * 2 + 4096 + 512
    assert wire.decode_batch(packed).records == small


def test_the_padding_is_never_read():
    recs = records(1, [64 << 10, 100, 64 << 10])
    payload = bytearray(wire.encode_batch(VOL, 7, recs))
    first_end = PAGE + (64 << 10) + 100
    for pos in [200, PAGE - 1, first_end, 2 * PAGE + (64 << 10) - 1]:   # zeros, not data
        assert payload[pos] == 0
        payload[pos] ^= 0xFF
    assert wire.decode_batch(payload).records == recs


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 512, 4096, 8192, 65536, 3000]), min_size=1,
                      max_size=6),
       pos=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_any_flip_in_a_head_checked_frame_is_caught_unless_it_hits_padding(sizes, pos, bit):
    recs = records(3, sizes)
    parts = wire.batch_parts(VOL, 2, recs)
    frame = bytearray(b"".join(wire.frame_parts(FrameType.BATCH, parts, wire.FLAG_HEAD_CRC)))
    pos %= len(frame)
    good = bytes(frame)
    frame[pos] ^= 1 << bit
    try:
        (got,), used = wire.decode_frames(frame)
        decoded = wire.decode_batch(got.payload).records
    except wire.WireError:
        return
    # Undetected: then it hit a byte no record uses, and nothing read differs.
    assert decoded == recs and good[pos] == 0 and used == len(frame)


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([1, 4096, 5000, 64 << 10, 1 << 20]), pos=st.integers(0, 10**7),
       bit=st.integers(0, 7))
def test_any_flip_in_a_head_checked_region_frame_is_caught_unless_it_hits_padding(size, pos,
                                                                                 bit):
    """A resync REGION goes as its parts with the head's CRC only, as a BATCH does
    (primary/resync.py ``_ship``): its data is under the region's own CRC."""
    data = random.Random(size).randbytes(size)
    frame = bytearray(b"".join(wire.frame_parts(FrameType.REGION, wire.region_parts(8192, data),
                                                wire.FLAG_HEAD_CRC)))
    pos %= len(frame)
    good = bytes(frame)
    frame[pos] ^= 1 << bit
    try:
        (got,), used = wire.decode_frames(frame)
        offset, region = wire.decode_region(got.payload)
    except wire.WireError:
        return
    assert (offset, bytes(region)) == (8192, data) and good[pos] == 0 and used == len(frame)


def test_head_crc_is_only_for_uncompressed_bulk_frames():
    payload = wire.encode_batch(VOL, 1, records(1, [4096]))
    for ftype, flags in ((FrameType.ACK, wire.FLAG_HEAD_CRC),
                         (FrameType.BATCH, wire.FLAG_HEAD_CRC | wire.FLAG_ZSTD)):
        frame = b"".join(wire.frame_parts(ftype, [payload], flags))
        with pytest.raises(wire.BadFrame, match="head checked alone"):
            wire.decode_frames(frame)
    # A head length pointing outside the payload is refused, not trusted.
    frame = bytearray(b"".join(wire.frame_parts(FrameType.BATCH, [payload],
                                                wire.FLAG_HEAD_CRC)))
    frame[16:20] = (len(payload) + 1).to_bytes(4, "little")
    with pytest.raises(wire.WireError):
        wire.decode_frames(bytes(frame))


def test_a_region_of_whole_pages_starts_on_a_page():
    data = random.Random(2).randbytes(1 << 20)
    parts = wire.region_parts(5 << 20, data)
    assert parts[1] is data and len(parts[0]) == PAGE
    offset, got = wire.decode_region(bytearray(b"".join(parts)))
    assert (offset, bytes(got)) == (5 << 20, data) and not got.readonly
    small = b"x" * 4096          # below 64 KiB: not worth a page of padding
    assert len(b"".join(wire.region_parts(0, small))) == 20 + 4096
    damaged = bytearray(b"".join(parts))
    damaged[PAGE + 77] ^= 1
    with pytest.raises(wire.BadChecksum):
        wire.decode_region(damaged)
    with pytest.raises(wire.BadFrame):          # a data start that is neither 20 nor a page
        wire.decode_region(b"".join([(64).to_bytes(4, "little"), bytes(parts[0][4:]),
                                     data]))
