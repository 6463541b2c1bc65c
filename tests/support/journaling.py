"""Helpers for journal tests: deterministic write operations and snapshots of sim disks."""

from __future__ import annotations

import random
import uuid

from appliance.journal import Journal, OpKind, WriteOp
from tests.support.simdisk import SimMachine

VOLUME = uuid.UUID("00000000-0000-4000-8000-00000000c0de")


def payload(seed: int, length: int) -> bytes:
    """Recognisable bytes: every op's data differs from every other op's."""
    return random.Random(seed).randbytes(length)


def make_op(kind: OpKind, lba: int, nblocks: int, block_size: int, seed: int) -> WriteOp:
    if kind == OpKind.WRITE:
        return WriteOp(kind, lba, nblocks, payload(seed, nblocks * block_size))
    if kind == OpKind.WRITE_SAME:
        return WriteOp(kind, lba, nblocks, payload(seed, block_size))
    return WriteOp(kind, lba, nblocks, b"")


def sim_journal(machine: SimMachine, *, blocks: int, segment_blocks: int = 16,
                volume_blocks: int = 1024, block_size: int = 512, name: str = "journal",
                first_seq: int = 1) -> Journal:
    size = blocks * 4096
    return Journal.create(machine.open(name, size), size=size, volume_uuid=VOLUME,
                          volume_block_size=block_size, volume_blocks=volume_blocks,
                          first_seq=first_seq, segment_size=segment_blocks * 4096)


def disk_image(machine: SimMachine, name: str) -> bytes:
    """Everything currently visible in a simulated file (for "nothing written" checks)."""
    f = machine.open(name)
    buf = bytearray(f.size())
    f.pread_into(0, memoryview(buf))
    return bytes(buf)
