"""Write cache on: large batches go straight through (no overlay copy), and the background
mirror checkpoint fdatasyncs without holding the volume lock."""

from __future__ import annotations

import random
import threading
import time

from volume_harness import BS, Rig, block_data, read_all

from appliance.journal import OpKind, WriteOp
from appliance.volume import FlushPolicy

WAIT = 10.0     # seconds any single wait below may take before the test fails


def write(lba: int, n: int, wid: int) -> WriteOp:
    return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))


def test_a_large_cached_batch_is_journaled_durably_and_written_through():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    rig.kw["write_through_bytes"] = 8 * BS
    vol = rig.open()
    vol.submit([write(20, 2, 1)])                            # small: cached in the overlay
    assert vol.status()["pending_bytes"] == 2 * BS
    assert rig.raw("mirror")[20 * BS:22 * BS] == bytes(2 * BS)
    big = [write(16, 4, 2), write(21, 4, 3)]                 # 8 blocks: at the threshold
    vol.submit(big)
    assert vol.status()["pending_bytes"] == 0                # nothing copied or left behind
    assert rig.m.unsynced_bytes("journal") == 0              # the batch is durable...
    expect = bytearray(bytes(30 * BS))                       # ...and on the mirror, in order
    expect[20 * BS:22 * BS] = write(20, 2, 1).data           # (the older cached write first)
    expect[16 * BS:20 * BS] = big[0].data
    expect[21 * BS:25 * BS] = big[1].data
    assert rig.raw("mirror")[:30 * BS] == expect
    rig.crash(random.Random(3), tear=True)                   # completed without FUA, yet kept
    vol = rig.open()
    assert b"".join(read_all(vol)[:30]) == expect


def test_a_batch_below_the_threshold_stays_cached():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    rig.kw["write_through_bytes"] = 8 * BS
    vol = rig.open()
    syncs = dict(rig.m.syncs)
    vol.submit([write(0, 7, 1)])
    assert dict(rig.m.syncs) == syncs and vol.status()["pending_bytes"] == 7 * BS


class GatedSync:
    """A mirror whose fdatasync waits for a permit, to hold a checkpoint in mid-sync."""

    def __init__(self, io) -> None:
        self.io = io
        self.entered = threading.Semaphore(0)
        self.permits = threading.Semaphore(0)

    def sync(self) -> None:
        self.entered.release()
        if not self.permits.acquire(timeout=WAIT):
            raise TimeoutError("the test never let this mirror sync proceed")
        self.io.sync()

    def __getattr__(self, name: str):
        return getattr(self.io, name)


def test_the_background_mirror_sync_leaves_host_io_running_and_claims_only_what_it_covers():
    rig = Rig(policy=FlushPolicy.PER_BATCH)
    rig.kw.update(service_interval=0.01, mirror_sync_interval=0.02)
    cfg = rig.config()
    gate = GatedSync(cfg.mirror_io)
    from dataclasses import replace

    from appliance.volume import Volume
    vol = Volume.open(replace(cfg, mirror_io=gate))
    try:
        vol.submit([write(0, 2, 1)])                         # seq 1, on the mirror, unsynced
        assert gate.entered.acquire(timeout=WAIT), "the ticker never began a mirror checkpoint"
        # The ticker now sits in the mirror's fdatasync. Host I/O must not wait for it.
        done = threading.Event()

        def host_io() -> None:
            vol.submit([write(10, 2, 2)])                    # seq 2, applied after the sync began
            buf = bytearray(2 * BS)
            vol.read_into(10, 2, [memoryview(buf)])
            assert buf == write(10, 2, 2).data
            done.set()

        worker = threading.Thread(target=host_io)
        worker.start()
        worker.join(WAIT)
        assert done.is_set(), "a write and a read waited for the background mirror fdatasync"
        assert vol.status()["mirror_durable_seq"] == 0
        gate.permits.release()                               # that sync completes...
        deadline = time.monotonic() + WAIT
        while vol.status()["mirror_durable_seq"] == 0:
            assert time.monotonic() < deadline, "the checkpoint never moved after the sync"
            time.sleep(0.005)
        # ...and claims seq 1 only: seq 2 needs the next sync, which waits for its permit.
        assert gate.entered.acquire(timeout=WAIT), "no second checkpoint for seq 2"
        assert vol.status()["mirror_durable_seq"] == 1
    finally:
        for _ in range(100):
            gate.permits.release()
        vol.close()
    assert rig.raw("mirror")[10 * BS:12 * BS] == write(10, 2, 2).data


def test_unsynced_mirror_bytes_stay_exact_when_a_checkpoint_overtakes_the_background_one():
    """The background checkpoint's fdatasync (begun at mark 1) is overtaken by a checkpoint
    under the lock, then more is written: when the background one ends, what is still
    unsynced is exactly the later writes (it must not subtract its own bytes twice)."""
    rig = Rig(policy=FlushPolicy.PER_BATCH)
    vol = rig.open()
    try:
        vol.submit([write(0, 4, 1)])
        mark = vol._checkpoint_begin()               # the ticker's sync starts here...
        vol.submit([write(8, 4, 2)])
        vol._checkpoint_mirror()                     # ...a flush-time checkpoint passes it
        vol.submit([write(16, 2, 3)])                # unsynced now: these 2 blocks
        vol._checkpoint_end(mark)                    # the ticker's sync ends late
        assert vol._unsynced_mirror_bytes() == 2 * BS
        assert vol.status()["mirror_durable_seq"] == 2
    finally:
        vol.close()
