"""JournalReader.read(views=True): the same records as bytes reads, with each write's data a
read-only view of the buffer it was read and CRC-checked into, still valid after later reads
(a buffer is never reused), across segments, PADs and wraps."""

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.journal import JournalReader, OpKind
from appliance.journal.format import JBLOCK
from tests.support.journaling import VOLUME, make_op, sim_journal
from tests.support.simdisk import SimMachine

KINDS = (OpKind.WRITE, OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP)


def written_journal(nrecords: int, per_record: int, wraps: bool) -> tuple[SimMachine, list]:
    """A journal holding ``nrecords`` records of ``per_record`` writes each (mixed kinds);
    with ``wraps``, acknowledged as it goes so that the circular area wraps."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + (6 if wraps else 64) * 16)
    ops = []
    reader = JournalReader(m.open("journal"), volume_uuid=VOLUME) if wraps else None
    try:
        for r in range(nrecords):
            batch = [make_op(KINDS[(r + i) % 4], 8 * ((r + i) % 120), 1 + (r * 3 + i) % 8, 512,
                             1000 * r + i) for i in range(per_record)]
            seqs = j.append(batch)
            j.sync()
            j.set_mirror_durable(seqs[-1])
            ops += batch
            if reader is not None and seqs[-1] > 12:
                reader.acknowledge(seqs[-1] - 12)   # the peer a few records behind
    finally:
        if reader is not None:
            reader.close()
        j.close()
    return m, ops


def read_all(reader: JournalReader, from_seq: int, max_bytes: int, views: bool) -> list:
    got, seq = [], from_seq
    for _ in range(10_000):
        out = reader.read(seq, max_bytes, views=views)
        if not out:
            return got
        got += out
        seq = out[-1].seq + 1
    raise AssertionError(f"reading from seq {from_seq} never caught up")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.sampled_from((1, 700, JBLOCK, 1 << 20)))
def test_views_are_the_records_bytes_reads_return(nrecords, per_record, max_bytes):
    m, ops = written_journal(nrecords, per_record, wraps=False)
    with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
        copies = read_all(reader, 1, max_bytes, views=False)
    with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
        views = read_all(reader, 1, max_bytes, views=True)
    assert [r.seq for r in views] == [r.seq for r in copies] == list(range(1, len(ops) + 1))
    for v, c, op in zip(views, copies, ops, strict=True):
        assert isinstance(c.op.data, bytes)
        assert isinstance(v.op.data, memoryview) and v.op.data.readonly
        # (held until now, across every later read: no buffer was reused under them)
        assert (v.op.kind, v.op.lba, v.op.nblocks, bytes(v.op.data)) == (
            op.kind, op.lba, op.nblocks, bytes(op.data))
        assert v == c and v.timestamp_ns == c.timestamp_ns


def test_views_across_a_wrapped_journal_from_every_seq():
    m, ops = written_journal(150, 3, wraps=True)
    total = len(ops)
    assert sum(len(op.data) for op in ops) > 6 * 16 * JBLOCK, "the journal did not wrap"
    with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
        oldest = reader.acked_seq + 1
    for from_seq in range(oldest, total + 1):
        with JournalReader(m.open("journal"), volume_uuid=VOLUME) as reader:
            got = read_all(reader, from_seq, 2 * JBLOCK, views=True)
        assert [r.seq for r in got] == list(range(from_seq, total + 1))
        assert [bytes(r.op.data) for r in got] == [bytes(op.data) for op in ops[from_seq - 1:]]
