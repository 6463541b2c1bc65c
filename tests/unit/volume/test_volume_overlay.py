"""The on-flush overlay: newest write wins, and a read looks only at the writes near it."""

from __future__ import annotations

import random
import time
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from volume_harness import BS, block_data

from appliance.journal import OpKind, WriteOp
from appliance.volume import FlushPolicy, Volume, VolumeConfig
from appliance.volume.pending import MAX_INDEXED_STRIPES, STRIPE_BYTES, PendingWrites

VOLUME_BLOCKS = 1 << 16
STRIPE_BLOCKS = STRIPE_BYTES // BS


def naive_overlay(ops: list[WriteOp], lba: int, nblocks: int, base: bytes) -> bytes:
    """The reference: every op, oldest first, block by block."""
    out = [base[i * BS:(i + 1) * BS] for i in range(nblocks)]
    for op in ops:
        for b in range(max(lba, op.lba), min(lba + nblocks, op.lba + op.nblocks)):
            if op.kind == OpKind.WRITE:
                k = b - op.lba
                out[b - lba] = bytes(op.data[k * BS:(k + 1) * BS])
            elif op.kind == OpKind.WRITE_SAME:
                out[b - lba] = bytes(op.data)
            else:
                out[b - lba] = bytes(BS)
    return b"".join(out)


def make_op(kind: OpKind, lba: int, n: int, wid: int) -> WriteOp:
    if kind == OpKind.WRITE:
        return WriteOp(kind, lba, n, b"".join(block_data(wid, i) for i in range(n)))
    if kind == OpKind.WRITE_SAME:
        return WriteOp(kind, lba, n, block_data(wid, 0))
    return WriteOp(kind, lba, n, b"")


# An op is narrow (a few blocks), stripe-crossing, or wider than the index takes.
op_shapes = st.tuples(
    st.sampled_from(list(OpKind)),
    st.integers(0, 4 * STRIPE_BLOCKS),
    st.sampled_from([1, 3, STRIPE_BLOCKS + 5, (MAX_INDEXED_STRIPES + 2) * STRIPE_BLOCKS]))


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(op_shapes, min_size=1, max_size=25),
       reads=st.lists(st.tuples(st.integers(0, 5 * STRIPE_BLOCKS), st.integers(1, 300)),
                      min_size=1, max_size=6))
def test_overlay_matches_applying_every_op_in_order(shapes, reads):
    ops = []
    for wid, (kind, lba, n) in enumerate(shapes):
        n = n if kind != OpKind.WRITE else min(n, 2 * STRIPE_BLOCKS)   # keep payloads small
        ops.append(make_op(kind, lba, n, wid + 1))
    pending = PendingWrites(BS)
    pending.add(ops[: len(ops) // 2], 1)
    pending.add(ops[len(ops) // 2:], 2)
    for lba, n in reads:
        base = b"".join(block_data(0xFFFF, lba + i) for i in range(n))   # "the mirror"
        buf = bytearray(base)
        cut = min(len(buf), 700)           # a scatter list that splits a block
        pending.overlay(lba, n, [memoryview(buf)[:cut], memoryview(buf)[cut:]])
        assert bytes(buf) == naive_overlay(ops, lba, n, base)


def scattered_writes(count: int, seed: int = 1) -> list[WriteOp]:
    rng = random.Random(seed)
    return [make_op(OpKind.WRITE, rng.randrange(0, VOLUME_BLOCKS - 8) & ~7, 8, i + 1)
            for i in range(count)]


def test_a_read_examines_only_the_pending_writes_near_it():
    """3,200 cached 4 KiB writes spread over 32 MiB: a 4 KiB read looks at a handful of them
    (the old overlay looked at all 3,200 on every read)."""
    ops = scattered_writes(3200)
    pending = PendingWrites(BS)
    pending.add(ops, 3200)
    rng = random.Random(2)
    reads = 1000
    buf = bytearray(8 * BS)
    for _ in range(reads):
        pending.overlay(rng.randrange(0, VOLUME_BLOCKS - 8) & ~7, 8, [memoryview(buf)])
    # 512 stripes of 64 KiB hold ~6 writes each; a read touches one or two stripes.
    assert pending.examined / reads < 20, pending.examined / reads
    # ... and still sees the newest write to its block.
    target = ops[-1]
    pending.add([make_op(OpKind.WRITE, target.lba, 8, 99_999)], 3201)
    pending.overlay(target.lba, 8, [memoryview(buf)])
    assert bytes(buf) == b"".join(block_data(99_999, i) for i in range(8))


def test_wide_ops_are_checked_by_every_read_and_take_clears_the_index():
    pending = PendingWrites(BS)
    wide = make_op(OpKind.UNMAP, 0, VOLUME_BLOCKS, 0)
    pending.add([make_op(OpKind.WRITE, 100, 1, 1), wide, make_op(OpKind.WRITE, 101, 1, 2)], 3)
    buf = bytearray(2 * BS)
    pending.overlay(100, 2, [memoryview(buf)])
    assert bytes(buf) == bytes(BS) + block_data(2, 0)      # the UNMAP after write 1 wins
    assert len(pending.take()) == 3
    assert not pending and pending.nbytes == 0
    pending.overlay(100, 2, [memoryview(buf)])              # nothing left to apply
    assert bytes(buf) == bytes(BS) + block_data(2, 0)


def random_read_iops(vol: Volume, reads: int, seed: int = 3) -> float:
    rng = random.Random(seed)
    buf = bytearray(4096)
    views = [memoryview(buf)]
    start = time.perf_counter()
    for _ in range(reads):
        vol.read_into(rng.randrange(0, vol.num_blocks - 8) & ~7, 8, views)
    return reads / (time.perf_counter() - start)


def test_random_reads_with_3000_cached_writes_pending(tmp_path, capsys):
    """The figure for the report (printed with -s); the assertion is on the overlay's work,
    not on time, so a busy machine cannot fail it."""
    cfg = VolumeConfig(uuid=uuid.UUID(int=9), num_blocks=VOLUME_BLOCKS, block_size=BS,
                       journal_size=64 << 20, max_transfer_bytes=64 * 1024,
                       flush_policy=FlushPolicy.ON_FLUSH, pending_limit_bytes=64 << 20,
                       mirror_sync_interval=3600.0, service_interval=None,
                       mirror_path=tmp_path / "m", journal_path=tmp_path / "j",
                       bitmap_path=tmp_path / "b")
    with Volume.open(cfg) as vol:
        vol.write_cache_enabled = True
        for op in scattered_writes(3200):
            vol.submit([op])
        assert vol.status()["pending_bytes"] == 3200 * 8 * BS
        iops = random_read_iops(vol, 2000)
        pending = vol._pending
        assert pending.examined < 2000 * 20
        with capsys.disabled():
            print(f"\nrandom 4 KiB reads, 3,200 writes pending: {iops:,.0f} IOPS, "
                  f"{pending.examined / 2000:.1f} pending ops examined per read")
