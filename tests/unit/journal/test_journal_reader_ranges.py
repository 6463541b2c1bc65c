"""Reading from any seq: fresh readers and follow-up reads across segments, PADs and wraps."""

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.journal import Journal, JournalReader, OpKind, WriteOp
from appliance.journal.format import JBLOCK
from appliance.journal.header import read_header, read_writer_slot, write_writer_slot
from appliance.journal.records import RecordKind, encode_meta, parse_meta
from tests.support.journaling import VOLUME, make_op, sim_journal
from tests.support.simdisk import SimMachine

MAX_BYTES = (1, 512, JBLOCK, 3 * JBLOCK, 1 << 20)


def read_following(reader: JournalReader, from_seq: int, max_bytes: int) -> list:
    """What a transmitter gets: read, then read on from the last seq returned."""
    got = []
    seq = from_seq
    for _ in range(10_000):
        out = reader.read(seq, max_bytes)
        if not out:
            return got
        assert out[0].seq == seq, f"read({seq}) started at seq {out[0].seq}"
        got += out
        seq = out[-1].seq + 1
    raise AssertionError(f"reading from seq {from_seq} never caught up")


def plain(op: WriteOp) -> WriteOp:
    return WriteOp(op.kind, op.lba, op.nblocks, bytes(op.data))


def relink_segment_start_to_pad(machine: SimMachine, journal: Journal, pad_block: int,
                                start_block: int) -> None:
    """Rewrite the record at `start_block` as writers before the PAD rule wrote it: linked
    to the header CRC of the PAD before it instead of to the last BATCH record."""
    sb = journal.sb
    f = machine.open("journal")
    blocks = {}
    for block in (pad_block, start_block):
        buf = bytearray(JBLOCK)
        f.pread_into(sb.block_offset(block), memoryview(buf))
        blocks[block] = parse_meta(buf, sb.journal_uuid, block, sb.volume_block_size)
    pad, start = blocks[pad_block], blocks[start_block]
    assert pad.kind == RecordKind.PAD and start.kind == RecordKind.BATCH
    assert start.prev_crc == pad.prev_crc != pad.header_crc
    meta, _ = encode_meta(
        journal_uuid=sb.journal_uuid, kind=start.kind, first_seq=start.first_seq,
        position=start.position, record_blocks=start.record_blocks,
        timestamp_ns=start.timestamp_ns, tail_seq=start.tail_seq, synced_seq=start.synced_seq,
        prev_crc=pad.header_crc, data_crc=start.data_crc, data_bytes=start.data_bytes,
        entries=start.entries)
    f.pwritev(sb.block_offset(start_block), [meta])
    # Such a writer also published the CRC it wrote, when its anchor sits past that record.
    generation, anchor = read_writer_slot(read_header(f), sb)
    if anchor.head_prev_crc == start.header_crc:
        new_crc = parse_meta(meta, sb.journal_uuid, start_block, sb.volume_block_size).header_crc
        write_writer_slot(f, sb, generation + 1, dataclasses.replace(anchor,
                                                                     head_prev_crc=new_crc))
    f.sync()
    f.close()


def test_read_from_inside_a_segments_last_record_crosses_a_pad_linked_segment_start():
    """Regression: journals written before PADs stopped being chain links have segment
    starts linked to the PAD. A fresh reader starting inside the last record of the
    segment before (the transmitter restarting from acked + 1) raised JournalCorrupt
    "record seq 13 ... does not follow seq 12" at the next segment's start."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 10 * 16)
    ops = [make_op(OpKind.WRITE, 8 * i, 8, 512, i) for i in range(16)]
    # 4 writes of 4 KiB a record: 5 blocks each, records at 0, 5, 10, a PAD at 15.
    for i in range(0, 16, 4):
        j.append(ops[i : i + 4])
        j.sync()
    j.close()
    relink_segment_start_to_pad(m, j, pad_block=15, start_block=16)
    expected = [plain(op) for op in ops]

    for from_seq in range(1, 18):
        for max_bytes in MAX_BYTES:
            with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
                got = read_following(reader, from_seq, max_bytes)
            assert [r.seq for r in got] == list(range(from_seq, 17)), (from_seq, max_bytes)
            assert [r.op for r in got] == expected[from_seq - 1 :]

    # The writer's redo path reads the same chain, and a writer continuing such a
    # journal links new records the current way.
    j = Journal.open(m.open("journal"), volume_uuid=VOLUME)
    assert j.next_seq == 17
    assert [r.op for r in j.records(10)] == expected[9:]
    more = [make_op(OpKind.WRITE, 8 * i, 8, 512, 100 + i) for i in range(12)]
    for i in range(0, 12, 4):
        j.append(more[i : i + 4])
    j.sync()
    expected += [plain(op) for op in more]
    assert [r.op for r in j.records(10)] == expected[9:]
    with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
        assert [r.op for r in read_following(reader, 10, JBLOCK)] == expected[9:]
    j.close()


def test_a_reader_caught_up_right_after_a_pad_continues_at_a_pad_linked_segment_start():
    """A reader that stopped just after a PAD (the next segment not written yet) resumes
    from its cursor; a segment start linked to that PAD must not stall it."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 10 * 16)
    ops = [make_op(OpKind.WRITE, 8 * i, 8, 512, i) for i in range(16)]
    for i in range(0, 16, 4):
        j.append(ops[i : i + 4])
        j.sync()  # the writer stays open: its slot says durable below seq 13 (segment entry)
    f = m.open("journal")
    start = bytearray(JBLOCK)
    f.pread_into(j.sb.block_offset(16), memoryview(start))
    f.pwritev(j.sb.block_offset(16), [bytes(JBLOCK)])  # segment 1 not written yet
    reader = JournalReader(m.open("journal"), volume_uuid=VOLUME)
    assert [r.seq for r in read_following(reader, 1, 1 << 20)] == list(range(1, 13))
    f.pwritev(j.sb.block_offset(16), [start])
    relink_segment_start_to_pad(m, j, pad_block=15, start_block=16)
    got = read_following(reader, 13, 1 << 20)
    assert [r.op for r in got] == [plain(op) for op in ops[12:]]
    reader.close()
    f.close()
    j.close()


op_strategy = st.tuples(
    st.sampled_from([OpKind.WRITE, OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP]),
    st.integers(0, 1000), st.integers(1, 24))
batches_strategy = st.lists(st.lists(op_strategy, min_size=1, max_size=12),
                            min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, lag=st.integers(0, 40), max_bytes=st.sampled_from(MAX_BYTES))
def test_every_from_seq_reads_exactly_the_appended_records(batches, lag, max_bytes):
    """For every from_seq in [tail, head]: a fresh reader, reading on from what it got,
    returns exactly the appended writes from from_seq on, and so does `records`, across
    segment boundaries, PADs and wraps of the circle."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 8 * 16)
    acker = JournalReader(m.open("journal"), volume_uuid=VOLUME)
    written: dict[int, WriteOp] = {}
    for b, batch in enumerate(batches):
        ops = [make_op(kind, min(lba, 1024 - n), n, 512, b * 100 + i)
               for i, (kind, lba, n) in enumerate(batch)]
        # Keep the tail `lag` writes behind the head so the journal wraps instead of filling.
        j.sync()
        keep_from = max(j.tail_seq, j.durable_seq - lag)
        if keep_from - 1 > j.mirror_durable_seq:
            j.set_mirror_durable(keep_from - 1)
            acker.acknowledge(keep_from - 1)
        seqs = j.append(ops)
        written.update(zip(seqs, (plain(op) for op in ops), strict=True))
    j.sync()
    usage = j.usage()  # re-reads the acked seq, which the writer otherwise reads lazily
    tail, head = usage.tail_seq, j.next_seq
    for from_seq in range(tail, head + 1):
        want = [(seq, written[seq]) for seq in range(from_seq, head)]
        with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
            got = read_following(reader, from_seq, max_bytes)
        assert [(r.seq, r.op) for r in got] == want, f"reader from seq {from_seq}"
        assert [(r.seq, r.op) for r in j.records(from_seq)] == want, f"records({from_seq})"
    acker.close()
    j.close()
