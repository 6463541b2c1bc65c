"""A reader with reused read buffers (the transmitter's, ``JournalReader(buffers=...)``):
the same records as fresh reads, buffers refilled once no view of them is held and never
while one is, and every CRC still checked on the bytes actually read (a buffer that held an
intact copy of a record before hides nothing)."""

import pytest

from appliance.journal import Journal, JournalCorrupt, JournalReader, OpKind, RecordsGone
from appliance.journal.format import HEADER_BLOCKS, JBLOCK
from appliance.replication.buffers import BufferPool
from tests.support.journaling import VOLUME, make_op, sim_journal
from tests.support.simdisk import SimMachine

AREA = HEADER_BLOCKS * JBLOCK


def written(nrecords: int, nblocks: int = 8) -> tuple[SimMachine, list]:
    """``nrecords`` records of one write each (``nblocks`` volume blocks), each synced."""
    m = SimMachine()
    j = sim_journal(m, blocks=8 + 32 * 16)
    ops = []
    for i in range(nrecords):
        op = make_op(OpKind.WRITE, i, nblocks, 512, i)
        j.append([op])
        j.sync()
        ops.append(op)
    j.close()
    return m, ops


def read_on(reader: JournalReader, seq: int, max_bytes: int, *, hold: int) -> list:
    """Read to the end as the transmitter does: views, the last ``hold`` reads still held
    (a batch being sent, one read ahead) while the next is read; checks that no held view
    changed under a later read."""
    held: list[tuple[list, list[bytes]]] = []
    got = []
    while out := reader.read(seq, max_bytes, views=True):
        for records, snapshot in held:
            assert [bytes(r.op.data) for r in records] == snapshot, \
                "a buffer was refilled while a record still referred to it"
        held = [*held, (out, [bytes(r.op.data) for r in out])][-hold:] if hold else []
        got += [(r.seq, bytes(r.op.data)) for r in out]
        seq = out[-1].seq + 1
    return got


@pytest.mark.parametrize("hold", [0, 2, 5])
def test_pooled_reads_return_what_fresh_reads_do_and_reuse_their_buffers(hold):
    m, ops = written(120)
    pool = BufferPool(16 << 20)
    with JournalReader(m.open("journal"), volume_uuid=VOLUME, buffers=pool) as reader:
        got = read_on(reader, 1, 3 * 4096, hold=hold)
    assert got == [(i + 1, bytes(op.data)) for i, op in enumerate(ops)]
    reads = 120 // 3
    assert pool.made < reads // 2, f"{pool.made} buffers made for {reads} reads: none reused"


def test_a_record_damaged_since_a_buffer_held_it_intact_is_still_reported():
    m, _ = written(20)
    pool = BufferPool(16 << 20)
    with JournalReader(m.open("journal"), volume_uuid=VOLUME, buffers=pool) as reader:
        assert len(read_on(reader, 1, 1 << 20, hold=0)) == 20
    f = m.open("journal")      # the data of seq 5 (record k: metadata at 2k, data at 2k+1)
    pos = AREA + (2 * 4 + 1) * JBLOCK + 100
    byte = bytearray(1)
    f.pread_into(pos, memoryview(byte))
    f.pwritev(pos, [bytes([byte[0] ^ 0xFF])])
    f.sync()
    made = pool.made
    with (JournalReader(m.open("journal"), volume_uuid=VOLUME, buffers=pool) as reader,
          pytest.raises(JournalCorrupt, match="seq 5 below the durable head 21 is damaged")):
        reader.read(1, 1 << 20, views=True)
    assert pool.made == made, "the damaged read went to fresh memory: the reuse is untested"


def test_reclaimed_seqs_are_gone_for_a_pooled_reader_too():
    m, _ = written(20)
    with JournalReader(m.open("journal"), volume_uuid=VOLUME) as acker:
        acker.acknowledge(10)
    journal = Journal.open(m.open("journal"))
    journal.set_mirror_durable(20)
    journal.close()
    with JournalReader(m.open("journal"), volume_uuid=VOLUME,
                       buffers=BufferPool(16 << 20)) as reader:
        with pytest.raises(RecordsGone, match="seq 5 were reclaimed; the oldest held is 11"):
            reader.read(5, 1 << 20, views=True)
        assert [r.seq for r in reader.read(11, 1 << 20, views=True)] == list(range(11, 21))
