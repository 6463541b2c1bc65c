"""The journal API: round trips, checkpoints, usage, and bad input that must change nothing."""

import dataclasses
import random
import struct
import uuid

import pytest

from appliance.journal import (
    InvalidRequest,
    Journal,
    JournalFull,
    JournalMismatch,
    JournalReader,
    OpKind,
    RecordsGone,
    WriteOp,
)
from appliance.journal.format import JBLOCK, MIN_JOURNAL_BYTES, crc, encode_superblock
from appliance.storage import StorageLocked
from tests.support.journaling import VOLUME, disk_image, make_op, payload, sim_journal
from tests.support.simdisk import SimMachine


def ops_for(seed, count, block_size=512):
    kinds = [OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP]
    return [make_op(kinds[i % 3], (seed + i) % 900, 1 + i % 7, block_size, seed * 1000 + i)
            for i in range(count)]


def test_append_sync_records_roundtrip_and_reopen():
    m = SimMachine()
    j = sim_journal(m, blocks=200, first_seq=42)
    ops = ops_for(1, 10)
    assert j.append(ops) == range(42, 52)
    assert j.append([]) == range(52, 52)
    j.sync()
    got = list(j.records(42))
    assert [r.seq for r in got] == list(range(42, 52))
    assert [r.op for r in got] == [WriteOp(o.kind, o.lba, o.nblocks, bytes(o.data)) for o in ops]
    assert len({r.timestamp_ns for r in got}) == 1
    j.close()
    j = Journal.open(m.open("journal"), volume_uuid=VOLUME)
    assert j.next_seq == 52
    assert [r.op for r in j.records(45)] == [r.op for r in got[3:]]
    assert j.append(ops_for(2, 1)) == range(52, 53)


def test_compact_kinds_take_no_data_blocks():
    m = SimMachine()
    j = sim_journal(m, blocks=200, block_size=4096)
    before = j._head.block
    j.append([WriteOp(OpKind.UNMAP, 0, 500), WriteOp(OpKind.WRITE_SAME, 0, 500, b"\1" * 4096)])
    assert j._head.block - before == 2  # one metadata block + one block of pattern


def test_many_writes_in_one_append_span_records_and_segments():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 40 * 16)
    ops = [make_op(OpKind.WRITE, i, 8, 512, i) for i in range(300)]  # > 248 per record
    seqs = j.append(ops)
    j.sync()
    assert [r.op.data for r in j.records(seqs[0])] == [o.data for o in ops]


def test_reader_makes_what_it_returns_durable_and_respects_max_bytes():
    m = SimMachine()
    j = sim_journal(m, blocks=200)
    reader = JournalReader(m.open("journal"), volume_uuid=VOLUME)
    assert reader.read(1, 1 << 20) == []
    j.append([make_op(OpKind.WRITE, i, 2, 512, i) for i in range(6)])  # not synced
    assert m.unsynced_bytes("journal") > 0
    first = reader.read(1, 2048)  # two writes of 1 KiB fill it
    assert [r.seq for r in first] == [1, 2]
    assert m.unsynced_bytes("journal") == 0  # the reader synced before returning them
    assert reader.durable_seq >= 3
    rest = reader.read(3, 1 << 20)
    assert [r.seq for r in rest] == [3, 4, 5, 6]
    assert rest[0].op.data == payload(2, 1024)
    assert reader.read(7, 1 << 20) == []
    assert reader.read(4, 1)[0].seq == 4  # at least one record, even over max_bytes
    reader.acknowledge(6)
    m.crash(random.Random(0), tear=True)
    again = Journal.open(m.open("journal"))
    assert again.next_seq == 7  # everything a reader returned survived the power cut


def test_acknowledge_persists_frees_space_and_is_checked():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 4 * 16)
    reader = JournalReader(m.open("journal"))
    big = [make_op(OpKind.WRITE, 0, 30, 512, 1)]  # 4 blocks with its metadata
    appended = 0
    with pytest.raises(JournalFull):
        while True:
            j.append(big)
            appended += 1
    j.sync()
    assert appended >= 10
    with pytest.raises(InvalidRequest, match="not durable"):
        j.set_mirror_durable(j.next_seq)
    last = j.next_seq - 1
    with pytest.raises(InvalidRequest, match="only seqs below"):
        reader.acknowledge(last)  # not read yet, and the writer has not published it
    assert reader.read(1, 1 << 30)[-1].seq == last
    with pytest.raises(InvalidRequest, match="only seqs below"):
        reader.acknowledge(last + 1)
    reader.acknowledge(last)
    with pytest.raises(JournalFull):  # the mirror does not hold them yet
        j.append(big)
    j.set_mirror_durable(last)
    with pytest.raises(InvalidRequest, match="cannot go back"):
        j.set_mirror_durable(last - 1)
    j.append(big)  # the writer makes its mirror checkpoint durable and reclaims
    assert JournalReader(m.open("journal")).acked_seq == last
    with pytest.raises(RecordsGone):
        reader.read(1, 4096)
    usage = j.usage()
    assert usage.records_held == 1 and usage.tail_seq == last + 1
    assert usage.acked_seq == last and usage.mirror_durable_seq == last


def test_usage_reports_fill_and_high_water():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    assert j.usage().bytes_held == 0 and j.usage().percent == 0
    for i in range(30):
        j.append([make_op(OpKind.WRITE, 0, 8, 512, i)])  # 2 blocks each
    usage = j.usage()
    assert usage.records_held == 30
    assert usage.capacity_bytes == 8 * 16 * JBLOCK
    assert usage.bytes_held == 60 * JBLOCK
    assert not usage.high_water
    j.high_water_percent = 40
    assert j.usage().high_water


BAD_OPS = [
    (WriteOp(OpKind.WRITE, 0, 2, b"x" * 100), "carries 100 bytes"),
    (WriteOp(OpKind.WRITE, 1020, 8, b"x" * 4096), "outside the volume"),
    (WriteOp(OpKind.WRITE, -1, 1, b"x" * 512), "outside the volume"),
    (WriteOp(OpKind.WRITE, 0, 0, b""), "at least one block"),
    (WriteOp(OpKind.WRITE_SAME, 0, 4, b"x" * 1024), "exactly one block"),
    (WriteOp(OpKind.UNMAP, 0, 4, b"x"), "no data"),
    (WriteOp(9, 0, 1, b""), "unknown write kind"),
    (WriteOp(OpKind.WRITE, 0, 128, b"x" * 65536), "exceeds the journal's limit"),
]


@pytest.mark.parametrize(("op", "message"), BAD_OPS)
def test_bad_ops_are_refused_and_nothing_is_written(op, message):
    m = SimMachine()
    j = sim_journal(m, blocks=200)
    j.append(ops_for(3, 2))
    image = disk_image(m, "journal")
    with pytest.raises(InvalidRequest, match=message):
        j.append([make_op(OpKind.WRITE, 0, 1, 512, 7), op])  # a good op first: still nothing
    assert j.next_seq == 3
    assert disk_image(m, "journal") == image


def test_oversize_batch_is_refused_whole():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 6 * 16)
    image = disk_image(m, "journal")
    with pytest.raises(InvalidRequest, match="split it"):
        j.append([make_op(OpKind.WRITE, 0, 120, 512, i) for i in range(6)])
    assert j.next_seq == 1 and disk_image(m, "journal") == image


def test_journal_full_writes_nothing():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 4 * 16)
    with pytest.raises(JournalFull, match="journal full"):
        while True:
            j.append([make_op(OpKind.WRITE, 0, 16, 512, 0)])
    next_seq = j.next_seq
    image = disk_image(m, "journal")
    with pytest.raises(JournalFull):
        j.append([make_op(OpKind.UNMAP, 0, 1, 512, 0)] * 50 + [make_op(OpKind.WRITE, 0, 16, 512, 1)])
    assert j.next_seq == next_seq and disk_image(m, "journal") == image


def test_other_volume_unknown_version_and_not_a_journal(tmp_path):
    m = SimMachine()
    sim_journal(m, blocks=200).close()
    other = uuid.uuid4()
    with pytest.raises(JournalMismatch, match=f"belongs to volume {VOLUME}, not to volume {other}"):
        Journal.open(m.open("journal"), volume_uuid=other)
    with pytest.raises(JournalMismatch, match="belongs to volume"):
        JournalReader(m.open("journal"), volume_uuid=other)
    # A superblock of format version 2 (intact CRC) must be refused, not misread.
    f = m.open("journal")
    block = bytearray(JBLOCK)
    f.pread_into(0, memoryview(block))
    struct.pack_into("<I", block, 8, 2)
    struct.pack_into("<I", block, 104, crc(block[:104]))
    image = disk_image(m, "journal")
    for copy in (0, 1):
        f.pwritev(copy * JBLOCK, [bytes(block)])
    with pytest.raises(JournalMismatch, match="format version 2 is not supported"):
        Journal.open(m.open("journal"))
    m.open("blank", 1 << 20)
    with pytest.raises(JournalMismatch, match="not a journal"):
        Journal.open(m.open("blank"))
    with pytest.raises(JournalMismatch, match="too small"):
        Journal.open(m.open("tiny", 100))
    assert image != disk_image(m, "journal")


def test_truncated_file_and_too_small_journal_and_create_over_existing(tmp_path):
    path = tmp_path / "j"
    with pytest.raises(InvalidRequest, match="below the minimum"):
        Journal.create(path, size=MIN_JOURNAL_BYTES - JBLOCK, volume_uuid=VOLUME,
                       volume_block_size=512, volume_blocks=100)
    assert not path.exists() or path.stat().st_size == 0
    j = Journal.create(path, size=MIN_JOURNAL_BYTES * 2, volume_uuid=VOLUME,
                       volume_block_size=512, volume_blocks=100)
    j.append(ops_for(4, 3, 512)[:1])
    with pytest.raises(StorageLocked):
        Journal.open(path)
    j.close()
    with pytest.raises(InvalidRequest, match="already holds a journal"):
        Journal.create(path, size=MIN_JOURNAL_BYTES * 2, volume_uuid=VOLUME,
                       volume_block_size=512, volume_blocks=100)
    with Journal.open(path) as again:
        assert again.next_seq == 2
    with open(path, "r+b") as f:
        f.truncate(MIN_JOURNAL_BYTES)
    with pytest.raises(JournalMismatch, match="truncated"):
        Journal.open(path)
    with pytest.raises(InvalidRequest, match="block size 520"):
        Journal.create(tmp_path / "k", size=MIN_JOURNAL_BYTES, volume_uuid=VOLUME,
                       volume_block_size=520, volume_blocks=100)


def test_superblock_describing_a_journal_below_the_minimum_is_refused():
    m = SimMachine()
    j = sim_journal(m, blocks=200)
    sb = j.sb
    j.close()
    tiny = dataclasses.replace(sb, segment_count=2)
    m.open("journal").pwritev(0, [encode_superblock(tiny)] * 2)
    with pytest.raises(JournalMismatch, match="2 segments of 16 blocks .minimum 4"):
        Journal.open(m.open("journal"))


@pytest.mark.parametrize("seed", range(6))
def test_append_reports_where_each_ops_data_lies_in_the_file(seed):
    """The volume's overlay reads cached writes back by these offsets: across records,
    segments, PADs and the wrap of the area, every offset must hold that op's bytes."""
    rng = random.Random(seed)
    m = SimMachine()
    j = sim_journal(m, blocks=120, segment_blocks=16)
    peer = JournalReader(m.open("journal"))
    for batch in range(40):
        ops = ops_for(seed * 100 + batch, rng.choice([1, 3, 9, 30, 300]))
        offsets: list[int] = []
        j.append(ops, offsets)
        assert len(offsets) == len(ops)
        image = disk_image(m, "journal")
        for op, at in zip(ops, offsets, strict=True):
            assert image[at:at + len(op.data)] == bytes(op.data)
        j.sync()                                   # acknowledged and on the mirror: the
        j.set_mirror_durable(j.next_seq - 1)       # space is reused, the area wraps
        peer.read(j.next_seq - len(ops), 1 << 30)
        peer.acknowledge(j.next_seq - 1)
