"""Wire frames: round trips, and every kind of damage is detected, never misread."""

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.replication import wire
from appliance.replication.wire import FrameType, WireRecord

VOL = uuid.UUID("12345678-1234-5678-1234-567812345678")

records_st = st.lists(
    st.tuples(st.integers(0, 2**40), st.sampled_from([1, 2, 3]), st.integers(1, 8),
              st.binary(max_size=64)),
    max_size=6,
)


def make_records(start: int, specs) -> list[WireRecord]:
    return [WireRecord(start + i, 1000 + i, kind, lba, n, data)
            for i, (lba, kind, n, data) in enumerate(specs)]


@settings(max_examples=60, deadline=None)
@given(ftype=st.sampled_from(list(FrameType)), payload=st.binary(max_size=2048),
       split=st.integers(0, 4096))
def test_frame_round_trip_in_any_split(ftype, payload, split):
    data = wire.encode_frame(ftype, payload) * 2
    split = min(split, len(data))
    frames, used = wire.decode_frames(data[:split])
    rest = data[used:]
    more, used2 = wire.decode_frames(rest)
    frames += more
    assert used2 == len(rest)
    assert [(f.type, f.payload) for f in frames] == [(ftype, payload)] * 2


@settings(max_examples=60, deadline=None)
@given(specs=records_st, start=st.integers(1, 2**62), gen=st.integers(0, 2**63))
def test_batch_round_trip(specs, start, gen):
    recs = make_records(start, specs)
    batch = wire.decode_batch(wire.encode_batch(VOL, gen, recs))
    assert batch.volume_uuid == VOL and batch.generation == gen and batch.records == recs


@settings(max_examples=60, deadline=None)
@given(ftype=st.sampled_from(list(FrameType)),
       parts=st.lists(st.binary(max_size=300), max_size=5), flags=st.sampled_from([0, 1]))
def test_frame_parts_are_the_bytes_of_encode_frame(ftype, parts, flags):
    """A frame sent as buffers is byte for byte the frame of the joined payload."""
    assert b"".join(wire.frame_parts(ftype, parts, flags)) == \
        wire.encode_frame(ftype, b"".join(parts), flags)


@settings(max_examples=40, deadline=None)
@given(specs=records_st, gen=st.integers(0, 2**63))
def test_batch_parts_are_the_bytes_of_encode_batch_and_decoding_does_not_copy(specs, gen):
    recs = make_records(7, specs)
    parts = wire.batch_parts(VOL, gen, recs)
    payload = b"".join(parts)
    assert payload == wire.encode_batch(VOL, gen, recs)
    data_parts = [p for p in parts[1:] if any(p is r.data for r in recs)]
    assert len(data_parts) == sum(1 for r in recs if r.data)      # not copied
    decoded = wire.decode_batch(bytearray(payload)).records
    assert decoded == recs
    for rec in decoded:   # views into the payload (writable over a bytearray: the receiver's)
        assert isinstance(rec.data, memoryview) and not rec.data.readonly


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(min_size=1, max_size=300), pos=st.integers(0, 10_000),
       bit=st.integers(0, 7))
def test_any_single_bit_flip_in_a_frame_is_detected(payload, pos, bit):
    data = bytearray(wire.encode_frame(FrameType.BATCH, payload))
    data[pos % len(data)] ^= 1 << bit
    with pytest.raises(wire.WireError):
        wire.decode_frames(bytes(data))


@settings(max_examples=80, deadline=None)
@given(specs=records_st.filter(bool), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_bit_flip_inside_a_batch_is_detected(specs, pos, bit):
    """Records carry their own CRC: damage that slips past the frame CRC is still caught."""
    payload = bytearray(wire.encode_batch(VOL, 7, make_records(10, specs)))
    payload[pos % len(payload)] ^= 1 << bit
    with pytest.raises(wire.WireError):
        wire.decode_batch(bytes(payload))


def test_record_crc_binds_volume_and_generation():
    recs = make_records(5, [(0, 1, 1, b"x" * 8)])
    good = wire.encode_batch(VOL, 3, recs)
    other = uuid.uuid4().bytes
    with pytest.raises(wire.BadChecksum):     # (the uuid follows the head's length)
        wire.decode_batch(good[:4] + other + good[20:])
    with pytest.raises(wire.BadChecksum):
        wire.decode_batch(good[:20] + (4).to_bytes(8, "little") + good[28:])


def test_garbage_is_bad_magic():
    with pytest.raises(wire.BadMagic, match="not a replication peer"):
        wire.decode_frames(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_truncated_frame_waits_and_truncated_batch_is_refused():
    frame = wire.encode_frame(FrameType.ACK, wire.encode_ack(5, 4))
    for cut in range(len(frame)):
        frames, used = wire.decode_frames(frame[:cut])
        assert (frames, used) == ([], 0)
    payload = wire.encode_batch(VOL, 1, make_records(1, [(0, 1, 1, b"y" * 16)]))
    for cut in range(len(payload) - 1):
        with pytest.raises(wire.WireError):
            wire.decode_batch(payload[:cut])


def test_header_checks_version_type_flags_and_length():
    def header(version=wire.WIRE_VERSION, ftype=4, flags=0, length=0):
        import struct

        import crc32c
        head = struct.pack("<4sBBHI", wire.MAGIC, version, ftype, flags, length)
        return head + struct.pack("<I", crc32c.crc32c(head))

    for version in (wire.LEGACY_VERSION, wire.WIRE_VERSION + 1):
        with pytest.raises(wire.BadVersion) as caught:
            wire.parse_header(header(version=version))
        assert caught.value.version == version
    with pytest.raises(wire.BadFrame, match="unknown frame type"):
        wire.parse_header(header(ftype=99))
    with pytest.raises(wire.BadFrame, match="flags"):
        wire.parse_header(header(flags=0x10))
    with pytest.raises(wire.BadFrame, match="exceeds"):
        wire.parse_header(header(length=wire.MAX_PAYLOAD + 1))


def test_batch_records_must_be_consecutive():
    recs = [WireRecord(1, 0, 1, 0, 1, b"a"), WireRecord(3, 0, 1, 0, 1, b"b")]
    with pytest.raises(wire.BadFrame, match="consecutive"):
        wire.decode_batch(wire.encode_batch(VOL, 1, recs))


def test_ack_and_seq_payloads():
    assert wire.decode_ack(wire.encode_ack(2**64 - 1, 3)) == (2**64 - 1, 3)
    assert wire.decode_seq(wire.encode_seq(42)) == 42
    with pytest.raises(wire.BadFrame):
        wire.decode_ack(b"short")
    with pytest.raises(wire.BadFrame):
        wire.decode_json(b"[1,2]")
    with pytest.raises(wire.BadFrame):
        wire.decode_json(b"\xff\xfe")
