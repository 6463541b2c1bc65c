"""Test rig for the write fork: mirror, journal and bitmap as simulated files on one machine,
a model of what reads may return, and a stand-in for the peer (transmitter + resync)."""

from __future__ import annotations

import random
import struct
import uuid

from appliance.journal import JournalReader, OpKind, WriteOp
from appliance.volume import FlushPolicy, ResyncSource, Volume, VolumeConfig, region_extent
from appliance.volume import bitmap_format as fmt
from tests.support.simdisk import SimMachine

BS = 512
ZERO = bytes(BS)


def block_data(write_id: int, index: int) -> bytes:
    """A block nobody else writes: (write id, index) repeated."""
    return struct.pack("<QQ", write_id, index) * (BS // 16)


class Rig:
    def __init__(self, *, num_blocks: int = 256, journal_size: int = 288 * 1024,
                 chunk_size: int = 4096, policy: FlushPolicy = FlushPolicy.PER_BATCH,
                 max_transfer: int = 8192) -> None:
        self.m = SimMachine()
        self.uuid = uuid.UUID(int=0xAB)
        self.num_blocks = num_blocks
        self.kw = dict(uuid=self.uuid, num_blocks=num_blocks, block_size=BS,
                       journal_size=journal_size, chunk_size=chunk_size, flush_policy=policy,
                       max_transfer_bytes=max_transfer, pending_limit_bytes=4 * max_transfer,
                       # cached WRITEs of 8 blocks or more are kept as journal spans, smaller
                       # ones copied: the crash programs exercise both
                       overlay_span_bytes=8 * BS,
                       mirror_sync_bytes=journal_size // 4, resync_poll_interval=3600.0,
                       service_interval=None)   # the tests drive service() themselves
        self.num_chunks = -(-num_blocks * BS // chunk_size)

    def config(self) -> VolumeConfig:
        m = self.m
        return VolumeConfig(
            mirror_io=m.open("mirror", self.num_blocks * BS),
            journal_io=m.open("journal", self.kw["journal_size"]),
            bitmap_io=m.open("bitmap", fmt.file_size(self.num_chunks)), **self.kw)

    def open(self) -> Volume:
        return Volume.open(self.config())

    def raw(self, name: str) -> bytes:
        f = self.m.open(name)
        buf = bytearray(f.size())
        f.pread_into(0, memoryview(buf))
        f.close()
        return bytes(buf)

    def crash(self, rng: random.Random, tear: bool) -> None:
        self.m._faults.clear()   # a fault the last command did not reach must not outlive it
        self.m.crash(rng, tear=tear)


def read_all(vol: Volume) -> list[bytes]:
    buf = bytearray(vol.num_blocks * BS)
    step = vol.config.max_transfer_bytes // BS
    for lba in range(0, vol.num_blocks, step):
        n = min(step, vol.num_blocks - lba)
        vol.read_into(lba, n, [memoryview(buf)[lba * BS:(lba + n) * BS]])
    return [bytes(buf[i * BS:(i + 1) * BS]) for i in range(vol.num_blocks)]


def op_blocks(op: WriteOp) -> list[bytes]:
    if op.kind == OpKind.WRITE:
        data = bytes(op.data)
        return [data[i * BS:(i + 1) * BS] for i in range(op.nblocks)]
    if op.kind == OpKind.WRITE_SAME:
        return [bytes(op.data)] * op.nblocks
    return [ZERO] * op.nblocks


class Model:
    """What a read may return: `current` before a crash; after one, any of `candidates`
    (the value at the last durable point plus everything written since)."""

    def __init__(self, num_blocks: int) -> None:
        self.current = [ZERO] * num_blocks
        self.candidates = [{ZERO} for _ in range(num_blocks)]

    def apply(self, ops: list[WriteOp], durable: bool) -> None:
        for op in ops:
            for i, value in enumerate(op_blocks(op)):
                b = op.lba + i
                self.current[b] = value
                if durable:
                    self.candidates[b] = {value}
                else:
                    self.candidates[b].add(value)

    def maybe(self, ops: list[WriteOp]) -> None:
        """A command that failed: its blocks may or may not hold the new data."""
        for op in ops:
            for i, value in enumerate(op_blocks(op)):
                self.candidates[op.lba + i].add(value)

    def flush(self) -> None:
        self.candidates = [{v} for v in self.current]

    def check_after_crash(self, actual: list[bytes]) -> None:
        for b, value in enumerate(actual):
            assert value in self.candidates[b], (
                f"block {b} after the crash holds {value[:16].hex()}, which was never written "
                f"there since its last flush")
        self.current = list(actual)
        self.candidates = [{v} for v in actual]


def apply_record(image: bytearray, op: WriteOp) -> None:
    for i, value in enumerate(op_blocks(op)):
        image[(op.lba + i) * BS:(op.lba + i + 1) * BS] = value


class Peer:
    """The transmitter and the peer's mirror: ships durable journal records, acknowledges
    them, and resyncs dirty regions, each through its own handles (like another process)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.image = bytearray(rig.num_blocks * BS)
        self.acked = 0

    def ship(self, limit: int | None = None) -> int:
        reader = JournalReader(self.rig.m.open("journal"), volume_uuid=self.rig.uuid)
        try:
            shipped = 0
            while limit is None or shipped < limit:
                records = reader.read(self.acked + 1, 1 << 20)
                if not records:
                    break
                if limit is not None:
                    records = records[:limit - shipped]
                for rec in records:
                    apply_record(self.image, rec.op)
                self.acked = records[-1].seq
                reader.acknowledge(self.acked)
                shipped += len(records)
            return shipped
        finally:
            reader.close()

    def resync(self, vol: Volume) -> int:
        """One pass; returns how many chunks it shipped (0 if it had to wait for the drain)."""
        src = ResyncSource(self.rig.m.open("bitmap"))
        try:
            snap = src.snapshot()
            if not snap.runs:
                return 0
            self.ship()
            if self.acked < snap.overflow_seq:
                return 0
            mirror = self.rig.m.open("mirror")
            for first, count in snap.runs:
                off, length = region_extent(snap.chunk_size, first, count, len(self.image))
                mirror.pread_into(off, memoryview(self.image)[off:off + length])
            mirror.close()
            src.clear_shipped(snap, snap.runs, timeout=5, poll=vol.service)
            return snap.dirty_chunks
        finally:
            src.close()

    def expected_mirror(self, vol: Volume) -> bytes:
        """Invariant 3 from the peer's side: what it holds, plus the journal records it has
        not acknowledged, plus the dirty regions, must reproduce the local mirror."""
        image = bytearray(self.image)
        reader = JournalReader(self.rig.m.open("journal"), volume_uuid=self.rig.uuid)
        try:
            assert reader.acked_seq == self.acked, "an acknowledgement was lost"
            seq = reader.acked_seq + 1
            while records := reader.read(seq, 1 << 20):
                for rec in records:
                    apply_record(image, rec.op)
                seq = records[-1].seq + 1
        finally:
            reader.close()
        mirror = self.rig.raw("mirror")
        src = ResyncSource(self.rig.m.open("bitmap"))
        for first, count in src.snapshot().runs:
            off, length = region_extent(src.header().chunk_size, first, count, len(image))
            image[off:off + length] = mirror[off:off + length]
        src.close()
        return bytes(image)


class PowerCut(Exception):
    """Raised in place of the n-th write or sync: the power goes before it happens."""


def arm(m: SimMachine, after: int) -> list[int]:
    """Cut the power at the `after`-th write/sync from now (counted, also when not reached)."""
    seen = [0]
    take = m._take_fault

    def counting(name: str, op: str) -> None:
        if op != "read":
            seen[0] += 1
            if seen[0] == after:
                raise PowerCut(f"power cut before {op} #{after} on {name}")
        take(name, op)

    m._take_fault = counting
    return seen
