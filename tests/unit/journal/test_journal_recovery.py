"""Recovery: wrap-around, the logarithmic head search, torn heads and corrupt middles."""

import math
import random

import pytest

from appliance.journal import Journal, JournalCorrupt, JournalReader, OpKind
from appliance.journal.format import (
    HEADER_BLOCKS,
    JBLOCK,
    WRITER_SLOT_BLOCKS,
    WRITER_SLOT_MAGIC,
    decode_slot,
    decode_superblock,
)
from tests.support.journaling import make_op, sim_journal
from tests.support.simdisk import SimMachine

AREA = HEADER_BLOCKS * JBLOCK  # byte offset of area block 0


def reclaim_all(journal, reader):
    journal.sync()
    last = journal.durable_seq - 1
    journal.set_mirror_durable(last)
    reader.acknowledge(last)


def test_wraps_many_times_and_recovers_each_time():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 6 * 16)
    reader = JournalReader(m.open("journal"))
    rng = random.Random(5)
    written = {}
    laps_blocks = 0
    for round_ in range(120):
        ops = [make_op(OpKind.WRITE, rng.randrange(900), rng.randint(1, 20), 512,
                       round_ * 100 + i) for i in range(rng.randint(1, 6))]
        before = j._head.block
        for seq, op in zip(j.append(ops), ops, strict=True):
            written[seq] = bytes(op.data)
        laps_blocks += (j._head.block - before) % j.sb.area_blocks
        reclaim_all(j, reader)
        if round_ % 7 == 6:
            m.crash(random.Random(round_), tear=True)
            j = Journal.open(m.open("journal"))
            reader = JournalReader(m.open("journal"))
        tail_record = list(j.records(j.durable_seq - 1))
        assert [r.op.data for r in tail_record] == [written[j.durable_seq - 1]]
    assert laps_blocks > 5 * j.sb.area_blocks, "the journal did not wrap several times"


def fill_zero_writes(blocks, segment_blocks, laps):
    """A journal whose head has gone round `laps` times: every record fills one segment
    with zeros (the simulated disk keeps zero pages sparse, so this stays cheap)."""
    m = SimMachine()
    j = sim_journal(m, blocks=blocks, segment_blocks=segment_blocks, block_size=4096,
                    volume_blocks=1 << 20)
    reader = JournalReader(m.open("journal"))
    zero = bytes((segment_blocks - 1) * JBLOCK)
    op = make_op(OpKind.WRITE, 0, segment_blocks - 1, 4096, 0)
    op = type(op)(OpKind.WRITE, 0, segment_blocks - 1, zero)
    appends = int(laps * j.sb.segment_count)
    for i in range(appends):
        j.append([op])
        if i % 16 == 15:
            reclaim_all(j, reader)
    j.sync()
    return m, j.next_seq


@pytest.mark.parametrize("segment_blocks", [16])
def test_head_search_reads_grow_logarithmically(segment_blocks):
    reads = {}
    for blocks in (2**10, 2**16):
        m, next_seq = fill_zero_writes(blocks, segment_blocks, laps=1.37)
        m.reads.clear()
        j = Journal.open(m.open("journal"))
        assert j.next_seq == next_seq
        reads[blocks] = m.reads["journal"]
        j.close()
    small, big = reads[2**10], reads[2**16]
    segments_small = (2**10 - HEADER_BLOCKS) // segment_blocks
    segments_big = (2**16 - HEADER_BLOCKS) // segment_blocks
    extra = math.log2(segments_big) - math.log2(segments_small)  # 6 more halvings
    print(f"head search reads: {small} for 2^10 blocks, {big} for 2^16 blocks")
    assert big - small <= extra + 2, reads
    assert big <= 2 * math.log2(segments_big) + 10, reads  # nowhere near the 4095 segments


def write_synced(journal, count, nblocks=8):
    """`count` records of one 4 KiB write each (2 journal blocks), each synced."""
    for i in range(count):
        journal.append([make_op(OpKind.WRITE, i, nblocks, 512, i)])
        journal.sync()


def corrupt(machine, area_block, offset_in_block=100):
    f = machine.open("journal")
    pos = AREA + area_block * JBLOCK + offset_in_block
    buf = bytearray(1)
    f.pread_into(pos, memoryview(buf))
    f.pwritev(pos, [bytes([buf[0] ^ 0xFF])])
    f.sync()


def test_corrupt_record_in_the_middle_is_reported_not_skipped():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 20)  # record k: metadata at area block 2k, data at 2k+1
    j.close()
    corrupt(m, 2 * 4 + 1)  # data of seq 5
    j = Journal.open(m.open("journal"))
    assert j.next_seq == 21  # the head is found past the damage
    with pytest.raises(JournalCorrupt, match="seq 5 is damaged.*CRC") as err:
        list(j.records(1))
    assert err.value.position == AREA + 2 * 4 * JBLOCK
    assert [r.seq for r in j.records(9)] == list(range(9, 21))  # segment 1 onwards
    with pytest.raises(JournalCorrupt, match="below the durable head") as err:
        JournalReader(m.open("journal")).read(1, 1 << 20)
    assert err.value.position == AREA + 2 * 4 * JBLOCK


def test_damaged_record_below_later_synced_records_fails_recovery():
    """A damaged record past the durable anchor is a torn write only if nothing written
    after it had been synced; here record 20 was written after a sync that covered 18."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 16)  # the writer slot now says: seqs below 17 are durable
    for i in range(3):  # seqs 17..19 (area blocks 32..37), then one sync
        j.append([make_op(OpKind.WRITE, i, 8, 512, 17 + i)])
    j.sync()
    j.append([make_op(OpKind.WRITE, 0, 8, 512, 20)])  # seq 20 carries synced_seq=20
    m.open("journal").sync()
    lose_newest_writer_slot(m)  # as if the slot published at the last sync tore
    corrupt(m, 34)  # metadata of seq 18
    with pytest.raises(JournalCorrupt, match="seq 18 is damaged.*seq 20") as err:
        Journal.open(m.open("journal"))
    assert err.value.position == AREA + 34 * JBLOCK


def lose_newest_writer_slot(machine):
    f = machine.open("journal")
    copies = []
    for index in WRITER_SLOT_BLOCKS:
        block = bytearray(JBLOCK)
        f.pread_into(index * JBLOCK, memoryview(block))
        got = decode_slot(block, WRITER_SLOT_MAGIC, read_uuid(f))
        copies.append((got[0], index))
    f.pwritev(max(copies)[1] * JBLOCK, [bytes(JBLOCK)])
    f.sync()


def read_uuid(f):
    block = bytearray(JBLOCK)
    f.pread_into(0, memoryview(block))
    return decode_superblock(block).journal_uuid


def test_damaged_record_below_the_published_head_is_not_trimmed():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 20)
    j.close()
    corrupt(m, 2 * 19 + 1)  # the data of the last record, synced and published
    j = Journal.open(m.open("journal"))
    assert j.next_seq == 21  # not cut off: the writer had published it as durable
    with pytest.raises(JournalCorrupt, match="seq 20 is damaged"):
        list(j.records(17))
    with pytest.raises(JournalCorrupt, match="seq 20 below the durable head 21 is damaged"):
        JournalReader(m.open("journal")).read(20, 4096)


def test_torn_record_at_the_head_is_cut_off():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 10)
    j.append([make_op(OpKind.WRITE, 0, 8, 512, 99)])  # seq 11, never synced by the journal
    m.open("journal").sync()  # ...but its blocks reached the disk, then one sector tore:
    corrupt(m, 2 * 10 + 1, offset_in_block=600)
    m.crash(random.Random(0), tear=False)
    j = Journal.open(m.open("journal"))
    assert j.next_seq == 11
    assert [r.seq for r in j.records(1)] == list(range(1, 11))
    assert j.append([make_op(OpKind.UNMAP, 0, 1, 512, 0)]) == range(11, 12)
    j.sync()
    m.crash(random.Random(1), tear=False)
    assert Journal.open(m.open("journal")).next_seq == 12


def test_stale_records_past_a_cut_head_are_never_resurrected():
    """After a cut, old records beyond the head must not rejoin the chain later."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 4)
    for i in range(4):  # seqs 5..8 at area blocks 8..15, unsynced
        j.append([make_op(OpKind.WRITE, i, 8, 512, 50 + i)])
    m.open("journal").sync()
    corrupt(m, 8)  # metadata of seq 5: 6..8 remain intact on disk
    m.crash(random.Random(0), tear=False)
    j = Journal.open(m.open("journal"))
    assert j.next_seq == 5
    # Write a same-sized seq 5 again: the chain now continues to block 10, where the old
    # seq 6 sits with the right seq and position but a link to the old seq 5.
    j.append([make_op(OpKind.WRITE, 0, 8, 512, 77)])
    j.sync()
    m.crash(random.Random(1), tear=False)
    j = Journal.open(m.open("journal"))
    assert j.next_seq == 6
    assert [r.op.data for r in j.records(5)] == [make_op(OpKind.WRITE, 0, 8, 512, 77).data]


def test_process_crash_keeps_unsynced_records_and_recovery_makes_them_durable():
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    write_synced(j, 3)
    j.append([make_op(OpKind.WRITE, 0, 8, 512, 40), make_op(OpKind.UNMAP, 9, 3, 512, 0)])
    # The writer process dies (no close, no sync); the page cache keeps its writes.
    again = Journal.open(m.open("journal"))
    assert again.next_seq == 6
    assert m.unsynced_bytes("journal") <= 4096  # only the republished checkpoint slot
    m.crash(random.Random(3), tear=True)  # then the power goes too
    after = Journal.open(m.open("journal"))
    assert [r.seq for r in after.records(1)] == [1, 2, 3, 4, 5]
    assert after.append([make_op(OpKind.UNMAP, 0, 1, 512, 0)]) == range(6, 7)


def test_a_torn_segment_entry_is_cut_and_overwritten():
    """A power cut while entering segment 1 leaves its first metadata block without data:
    recovery puts the head right there (after the PAD), and the writer reuses the spot."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16, volume_blocks=4096)
    j.append([make_op(OpKind.WRITE, 0, 8 * 11, 512, 1)])  # seq 1: blocks 0..11
    j.sync()
    j.append([make_op(OpKind.WRITE, 0, 8 * 6, 512, 2)])  # seq 2: PAD at 12, record at 16..22
    m.open("journal").sync()
    corrupt(m, 17)  # its data never made it
    m.crash(random.Random(0), tear=False)
    j = Journal.open(m.open("journal"))
    assert (j.next_seq, j._head.block) == (2, 16)
    assert j.append([make_op(OpKind.WRITE, 0, 8 * 2, 512, 3)]) == range(2, 3)
    j.sync()
    assert [r.op.data for r in j.records(2)] == [make_op(OpKind.WRITE, 0, 16, 512, 3).data]
    m.crash(random.Random(1), tear=False)
    assert Journal.open(m.open("journal")).next_seq == 3
