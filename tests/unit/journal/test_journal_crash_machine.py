"""State machine: random appends, syncs, checkpoints and acks, with power cuts anywhere.

After every crash the journal must hold every record that was synced, and exactly a
prefix of what was appended (same seqs, same bytes); seqs that were durable are never
handed out again.
"""

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from appliance.journal import (
    InvalidRequest,
    Journal,
    JournalFull,
    JournalReader,
    OpKind,
    RecordsGone,
)
from appliance.replication.buffers import BufferPool
from tests.support.journaling import make_op, sim_journal
from tests.support.simdisk import SimMachine

VOLUME_BLOCKS = 256
op_shapes = st.tuples(
    st.sampled_from([OpKind.WRITE, OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP]),
    st.integers(0, VOLUME_BLOCKS - 1),
    st.integers(1, 24),
)


class JournalUnderPowerCuts(RuleBasedStateMachine):
    @initialize(block_size=st.sampled_from([512, 4096]), seed=st.integers(0, 2**32))
    def create(self, block_size, seed):
        self.machine = SimMachine()
        self.block_size = block_size
        self.rng = random.Random(seed)
        self.journal = sim_journal(self.machine, blocks=8 + 8 * 16, block_size=block_size,
                                   volume_blocks=VOLUME_BLOCKS, first_seq=1000)
        # The transmitter's reader: views of reused read buffers (one pool for the run, so
        # buffers filled before a crash are refilled after it).
        self.pool = BufferPool(1 << 20)
        self.reader = JournalReader(self.machine.open("journal"), buffers=self.pool)
        self.held = []  # the last read's records (being sent) and their bytes when read
        self.appended = {}  # seq -> WriteOp, the latest op given each seq
        self.synced = self.journal.next_seq  # every seq below was synced
        self.mirror = 999
        self.acked = 999
        self.crashes = 0

    def _ops(self, shapes):
        ops = []
        for kind, lba, nblocks in shapes:
            limit = 15 * 4096 // self.block_size if kind == OpKind.WRITE else VOLUME_BLOCKS
            nblocks = max(1, min(nblocks, limit, VOLUME_BLOCKS - lba))
            ops.append(make_op(kind, lba, nblocks, self.block_size, self.rng.getrandbits(32)))
        return ops

    @rule(shapes=st.lists(op_shapes, min_size=1, max_size=12))
    def append(self, shapes):
        ops = self._ops(shapes)
        before = self.journal.next_seq
        try:
            seqs = self.journal.append(ops)
        except (JournalFull, InvalidRequest):  # full, or a batch bigger than the journal
            assert self.journal.next_seq == before
            return
        assert seqs == range(before, before + len(ops))
        for seq, op in zip(seqs, ops, strict=True):
            self.appended[seq] = op

    @rule()
    def sync(self):
        self.journal.sync()
        self.synced = self.journal.next_seq

    @rule(data=st.data())
    def mirror_catches_up(self, data):
        durable = self.journal.durable_seq
        if durable - 1 > self.mirror:
            self.mirror = data.draw(st.integers(self.mirror, durable - 1))
            self.journal.set_mirror_durable(self.mirror)

    @rule(data=st.data())
    def peer_acknowledges(self, data):
        durable = self.reader.durable_seq
        if durable - 1 > self.acked:
            self.acked = data.draw(st.integers(self.acked, durable - 1))
            self.reader.acknowledge(self.acked)

    @rule(max_bytes=st.integers(1, 64 * 1024))
    def transmitter_reads(self, max_bytes):
        got = self.reader.read(self.acked + 1, max_bytes, views=True)
        for record, data in self.held:
            assert record.op.data == data, "a read buffer was refilled under a held record"
        self.held = [(record, bytes(record.op.data)) for record in got]
        assert [r.seq for r in got] == list(range(self.acked + 1, self.acked + 1 + len(got)))
        # Every appended record is readable (the reader syncs what the writer has not).
        assert bool(got) == (self.acked + 1 < self.journal.next_seq)
        for record in got:
            self.assert_same(record)
        if got:  # what a reader returned may be shipped: it must survive any crash
            self.synced = max(self.synced, got[-1].seq + 1)

    @rule(tear=st.booleans(), seed=st.integers(0, 2**32))
    def power_cut(self, tear, seed):
        before = self.journal.next_seq
        self.machine.crash(random.Random(seed), tear=tear)
        self.crashes += 1
        self.journal = Journal.open(self.machine.open("journal"))
        self.reader = JournalReader(self.machine.open("journal"), buffers=self.pool)
        after = self.journal.next_seq
        # Every synced or shipped record survived; nothing beyond what was appended appeared.
        assert max(self.synced, self.acked + 1) <= after <= before
        # The acknowledgement is fdatasync'd by the reader, the mirror checkpoint lags a sync.
        assert self.reader.acked_seq == self.acked
        assert self.journal.mirror_durable_seq <= self.mirror
        self.mirror = self.journal.mirror_durable_seq
        for seq in [s for s in self.appended if s >= after]:
            del self.appended[seq]  # lost unsynced: these seqs were never durable
        self.synced = after

    @rule()
    def writer_process_dies(self):
        """kill -9 of the writer: no power loss, so the page cache keeps every append."""
        before = self.journal.next_seq
        self.journal = Journal.open(self.machine.open("journal"))
        assert self.journal.next_seq == before
        self.synced = before  # recovery syncs what it found

    def assert_same(self, record):
        want = self.appended[record.seq]
        assert (record.op.kind, record.op.lba, record.op.nblocks) == (want.kind, want.lba, want.nblocks)
        assert record.op.data == bytes(want.data)

    @invariant()
    def journal_holds_exactly_a_prefix(self):
        journal = self.journal
        tail = journal.tail_seq
        try:
            seqs = [r.seq for r in journal.records(tail) if self.assert_same(r) is None]
        except RecordsGone:
            raise AssertionError(f"records from the tail {tail} are gone") from None
        assert seqs == list(range(tail, journal.next_seq))
        assert journal.durable_seq <= journal.next_seq

    def teardown(self):
        self.journal.close()
        self.reader.close()


JournalUnderPowerCuts.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestJournalUnderPowerCuts = JournalUnderPowerCuts.TestCase
