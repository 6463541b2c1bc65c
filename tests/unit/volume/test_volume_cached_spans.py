"""Write cache on: large writes wait in the journal's file (no overlay copy), and the
background mirror checkpoint fdatasyncs without holding the volume lock."""

from __future__ import annotations

import random
import threading
import time

from volume_harness import BS, Rig, block_data, read_all

from appliance.journal import OpKind, WriteOp
from appliance.volume import FlushPolicy
from appliance.volume.mirror import JournalSpan

WAIT = 10.0     # seconds any single wait below may take before the test fails


def write(lba: int, n: int, wid: int) -> WriteOp:
    return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))


def pending_data_types(vol) -> list[type]:
    return [type(op.data) for op in vol._pending._ops]


def test_a_large_cached_write_stays_in_the_journal_file_until_the_sync():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    rig.kw["overlay_span_bytes"] = 8 * BS
    vol = rig.open()
    syncs = dict(rig.m.syncs)
    small, big = write(20, 2, 1), write(16, 8, 2)           # 8 blocks: at the threshold
    vol.submit([small])
    vol.submit([big])
    # Cached, both: no sync, nothing on the mirror; the big one is not copied but kept as a
    # span of the journal file, where its bytes are.
    assert dict(rig.m.syncs) == syncs
    assert vol.status()["pending_bytes"] == 10 * BS
    assert pending_data_types(vol) == [bytes, JournalSpan]
    span = vol._pending._ops[1].data
    assert rig.raw("journal")[span.offset:span.offset + span.length] == big.data
    assert rig.raw("mirror")[:30 * BS] == bytes(30 * BS)
    expect = bytearray(bytes(30 * BS))                      # reads see both, newest first
    expect[20 * BS:22 * BS] = small.data
    expect[16 * BS:24 * BS] = big.data
    assert b"".join(read_all(vol)[:30]) == expect
    vol.flush()                                             # journal sync, then the mirror
    assert vol.status()["pending_bytes"] == 0
    assert rig.m.unsynced_bytes("journal") == 0
    assert rig.raw("mirror")[:30 * BS] == expect
    rig.crash(random.Random(3), tear=True)                  # flushed: kept
    vol = rig.open()
    assert b"".join(read_all(vol)[:30]) == expect


def test_a_span_read_spreads_over_the_callers_scatter_list():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    vol = rig.open()
    big = write(0, 16, 7)
    vol.submit([big])
    assert pending_data_types(vol) == [JournalSpan]
    bufs = [bytearray(3 * BS), bytearray(BS), bytearray(6 * BS)]    # blocks 5..15
    vol.read_into(5, 10, [memoryview(b) for b in bufs])
    assert b"".join(bufs) == big.data[5 * BS:15 * BS]


def test_a_write_below_the_threshold_or_with_fua_is_not_a_span():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    rig.kw["overlay_span_bytes"] = 8 * BS
    vol = rig.open()
    syncs = dict(rig.m.syncs)
    vol.submit([write(0, 7, 1)])
    assert dict(rig.m.syncs) == syncs and pending_data_types(vol) == [bytes]
    vol.submit([write(40, 8, 2)], fua=True)                 # FUA: durable and on the mirror
    assert vol.status()["pending_bytes"] == 0
    assert rig.raw("mirror")[40 * BS:48 * BS] == write(40, 8, 2).data


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
        applier = vol._applier
        mark = applier.checkpoint_begin()            # the ticker's sync starts here...
        vol.submit([write(8, 4, 2)])
        applier.checkpoint_mirror()                  # ...a flush-time checkpoint passes it
        vol.submit([write(16, 2, 3)])                # unsynced now: these 2 blocks
        applier.checkpoint_end(mark)                 # the ticker's sync ends late
        assert applier.unsynced_mirror_bytes() == 2 * BS
        assert vol.status()["mirror_durable_seq"] == 2
    finally:
        vol.close()
