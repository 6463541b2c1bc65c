"""Random host workloads on a simulated machine, power cuts at random points, recovery.

Each example runs a random program of writes, WRITE SAMEs, UNMAPs, COMPARE AND WRITEs,
flushes, FUA writes, transmitter shipments, resync passes, write-cache switches, bad
requests, I/O faults and crashes (drop or tear) against a small volume whose journal fills
quickly, so the overflow to the bitmap and the way back are exercised too. It checks:

* reads return the last write (before a crash); after a crash every block holds its value
  at the last flush/FUA or something written to it since (nothing invented, nothing
  flushed lost);
* invariant 3: the peer's image + unacknowledged journal records + dirty regions == mirror;
* recovery is exactly the journal's redo: the mirror that survived the crash plus the
  recovered records above the checkpoint, applied by the test, equals the recovered mirror,
  which is also what the volume reads;
* bad requests raise InvalidRequest and write nothing at all.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from volume_harness import BS, Model, Peer, Rig, apply_record, block_data, read_all

from appliance.journal import InvalidRequest, JournalReader, OpKind, WriteOp
from appliance.volume import LOGGING_TO_BITMAP, FlushPolicy, MediumError

NUM_BLOCKS = 512        # 256 KiB volume, 64 chunks of 4 KiB
MAX_BLOCKS = 64         # max_transfer 32 KiB: a few unacknowledged batches fill the journal

lba_len = st.integers(0, NUM_BLOCKS - 1).flatmap(
    lambda lba: st.tuples(st.just(lba), st.integers(1, min(MAX_BLOCKS, NUM_BLOCKS - lba))))
write_op = st.tuples(st.sampled_from(["write", "write", "write", "same", "unmap"]), lba_len)
submit = st.tuples(st.just("submit"), st.lists(write_op, min_size=1, max_size=4), st.booleans())
action = st.one_of(
    submit, submit, submit, submit,
    st.tuples(st.just("caw"), lba_len, st.booleans(), st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("ship"), st.integers(1, 50)),
    st.tuples(st.just("resync")),
    st.tuples(st.just("wce"), st.booleans()),
    st.tuples(st.just("bad"), st.integers(0, 4)),
    st.tuples(st.just("fault"), st.sampled_from(["journal", "mirror", "bitmap"]),
              st.sampled_from(["write", "sync"]), write_op),
    st.tuples(st.just("crash"), st.booleans()),
    st.tuples(st.just("burst"), st.integers(2, 8), st.integers(0, NUM_BLOCKS - MAX_BLOCKS)),
)


class Driver:
    def __init__(self, policy: FlushPolicy, seed: int) -> None:
        self.rig = Rig(num_blocks=NUM_BLOCKS, policy=policy, max_transfer=MAX_BLOCKS * BS)
        self.vol = self.rig.open()
        self.model = Model(NUM_BLOCKS)
        self.peer = Peer(self.rig)
        self.rng = random.Random(seed)
        self.next_id = 1
        self.saw_logging = False
        self.saw_return = False

    def make_op(self, kind: str, lba: int, n: int) -> WriteOp:
        wid, self.next_id = self.next_id, self.next_id + 1
        if kind == "write":
            return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))
        if kind == "same":
            return WriteOp(OpKind.WRITE_SAME, lba, n, block_data(wid, 0))
        return WriteOp(OpKind.UNMAP, lba, n)

    @property
    def durable_writes(self) -> bool:
        return not self.vol.write_cache_enabled

    def submit(self, ops: list[WriteOp], fua: bool) -> None:
        was_logging = self.vol.state == LOGGING_TO_BITMAP
        self.vol.submit(ops, fua=fua)
        self.model.apply(ops, durable=fua or self.durable_writes)
        logging = self.vol.state == LOGGING_TO_BITMAP
        self.saw_logging |= logging
        self.saw_return |= was_logging and not logging

    def step(self, act: tuple) -> None:
        name = act[0]
        if name == "submit":
            self.submit([self.make_op(k, lba, n) for k, (lba, n) in act[1]], act[2])
        elif name == "caw":
            (lba, n), match, fua = act[1:]
            verify = bytearray(b"".join(self.model.current[lba:lba + n]))
            where = None
            if not match:
                where = self.rng.randrange(len(verify))
                verify[where] ^= 0x5A
            op = self.make_op("write", lba, n)
            got = self.vol.compare_and_write(lba, memoryview(verify), memoryview(op.data), fua=fua)
            assert got == where
            if where is None:
                self.model.apply([op], durable=fua or self.durable_writes)
        elif name == "flush":
            self.vol.flush()
            self.model.flush()
        elif name == "ship":
            self.peer.ship(act[1])
        elif name == "resync":
            self.peer.resync(self.vol)
            self.vol.service()
            self.saw_return |= self.saw_logging and self.vol.state != LOGGING_TO_BITMAP
        elif name == "wce":
            self.vol.write_cache_enabled = act[1]
        elif name == "bad":
            self.bad_request(act[1])
        elif name == "fault":
            _, target, what, (kind, (lba, n)) = act
            self.rig.m.inject_fault(target, what)
            op = self.make_op(kind, lba, n)
            try:
                self.submit([op], fua=True)
            except MediumError:
                self.model.maybe([op])
            self.crash(tear=True)
        elif name == "crash":
            self.crash(tear=act[1])
        elif name == "burst":       # a streak of big writes: fills the journal quickly
            for i in range(act[1]):
                lba = (act[2] + 7 * i) % (NUM_BLOCKS - MAX_BLOCKS)
                self.submit([self.make_op("write", lba, MAX_BLOCKS)], fua=False)
        self.check_reads()

    def bad_request(self, which: int) -> None:
        good = self.make_op("write", 0, 1)
        bad = [WriteOp(OpKind.WRITE, NUM_BLOCKS - 1, 2, bytes(2 * BS)),          # past the end
               WriteOp(OpKind.WRITE, 3, 2, bytes(BS)),                          # short data
               WriteOp(OpKind.WRITE, 0, MAX_BLOCKS + 1, bytes((MAX_BLOCKS + 1) * BS)),
               WriteOp(OpKind.WRITE_SAME, 5, 3, bytes(2 * BS)),                 # not one block
               WriteOp(OpKind.UNMAP, -1, 1)][which]
        before = (dict(self.rig.m.writes), dict(self.rig.m.syncs))
        with pytest.raises(InvalidRequest):
            self.vol.submit([good, bad])
        assert (dict(self.rig.m.writes), dict(self.rig.m.syncs)) == before, "bad batch wrote"

    def crash(self, tear: bool) -> None:
        self.rig.crash(self.rng, tear)
        before = bytearray(self.rig.raw("mirror"))
        reader = JournalReader(self.rig.m.open("journal"), volume_uuid=self.rig.uuid)
        checkpoint = reader.writer_checkpoint().mirror_durable_seq
        reader.close()
        self.vol = self.rig.open()
        # Recovery == redo: the surviving mirror plus every recovered record above the
        # checkpoint, applied in order by this test, gives what the volume made of it.
        for rec in self.vol._journal.records(checkpoint + 1):
            apply_record(before, rec.op)
        assert bytes(before) == self.rig.raw("mirror"), "recovery is not the journal's redo"
        actual = read_all(self.vol)
        self.model.check_after_crash(actual)
        mirror = self.rig.raw("mirror")
        assert b"".join(actual) == mirror, "recovery left writes the mirror lacks"
        assert self.peer.expected_mirror(self.vol) == mirror, "invariant 3 broken"

    def check_reads(self) -> None:
        lba = self.rng.randrange(NUM_BLOCKS)
        n = self.rng.randint(1, min(MAX_BLOCKS, NUM_BLOCKS - lba))
        a, b = bytearray(n * BS // 2), bytearray(n * BS - n * BS // 2)   # two buffers
        self.vol.read_into(lba, n, [memoryview(a), memoryview(b)])
        assert bytes(a + b) == b"".join(self.model.current[lba:lba + n])


@pytest.mark.parametrize("policy", list(FlushPolicy))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(action, min_size=10, max_size=50), seed=st.integers(0, 2**32))
def test_random_programs_with_crashes_keep_every_invariant(policy, program, seed):
    d = Driver(policy, seed)
    for act in program:
        d.step(act)
    d.crash(tear=True)


@pytest.mark.parametrize("policy", list(FlushPolicy))
def test_overflow_to_bitmap_and_back_with_crashes_in_between(policy):
    """A long outage: journal fills, writes go on in logging-to-bitmap, the link returns,
    the journal drains, resync cleans the bitmap, journaling resumes; crashes throughout."""
    d = Driver(policy, seed=11)
    rng = random.Random(3)
    for round_ in range(3):
        while d.vol.state != LOGGING_TO_BITMAP:
            lba = rng.randrange(NUM_BLOCKS - MAX_BLOCKS)
            d.step(("submit", [("write", (lba, MAX_BLOCKS))], False))
        assert d.vol.status()["alert"].startswith("journal full")
        for _ in range(20):
            d.step(("submit", [("write", (rng.randrange(NUM_BLOCKS - 4), 4))], rng.random() < .3))
        assert d.vol.status()["dirty_chunks"] > 0
        d.step(("crash", True))
        assert d.vol.state == LOGGING_TO_BITMAP, "overflow mode must survive a crash"
        for _ in range(10):
            d.step(("resync",))
            if d.vol.state != LOGGING_TO_BITMAP:
                break
        assert d.vol.state == "journaling", f"round {round_}: never returned to journaling"
        assert d.vol.status()["alert"] is None
        d.peer.ship()
        assert bytes(d.peer.image) == d.rig.raw("mirror") or policy == FlushPolicy.ON_FLUSH
        d.step(("flush",))
        d.peer.ship()
        assert bytes(d.peer.image) == b"".join(read_all(d.vol)), "peer diverged after resync"
    d.crash(tear=True)
