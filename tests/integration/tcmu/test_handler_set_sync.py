"""set-sync on the handler's control socket, with host commands through the simulated TCMU
ring and the test as the transmitter's end of the sync events: in sync mode a WRITE completes
only once ACKED covers it, in sync-on-flush only FUA writes and SYNCHRONIZE CACHE wait, the
mode survives a handler restart, and bad settings are refused with nothing changed
(docs/volume.md, "Synchronous modes")."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest
from one_volume_handler import one_volume

from appliance.control import sync_events
from appliance.control.client import ControlError, call
from appliance.tcmu.daemon import HandlerDaemon
from appliance.tcmu.sim import SimKernel

pytestmark = pytest.mark.integration

ACK_DELAY_S = 0.3


def write10(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, nblocks, 0)


SYNC_CACHE10 = struct.pack(">BBIBHB", 0x35, 0, 0, 0, 0, 0)


class FakeTransmitter:
    """The transmitter's end of the events: answers each WRITTEN seq with ACKED after
    ACK_DELAY_S (a DR one round trip away), and counts the nudges."""

    def __init__(self, volume_uuid) -> None:
        self.events = sync_events.SyncEvents(volume_uuid, sync_events.TRANSMITTER)
        self.nudged: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (event := self.events.receive()) is not None:
            kind, seq, journal = event
            if kind is sync_events.Kind.STOP:
                return
            if kind is sync_events.Kind.WRITTEN:
                self.nudged.append(seq)
                threading.Timer(ACK_DELAY_S, self.events.send,
                                (sync_events.Kind.ACKED, seq, journal)).start()

    def close(self) -> None:
        self.events.wake()
        self._thread.join(5)
        self.events.close()


def timed(kernel: SimKernel, cdb: bytes, data: bytes = b"") -> float:
    started = time.monotonic()
    result = kernel.wait_for([kernel.submit(cdb, data)], timeout=20)[0]
    assert result.status == 0, f"{cdb.hex()} failed: status {result.status:#x}"
    return time.monotonic() - started


def test_set_sync_gates_completions_on_the_drs_acknowledgement_and_survives_a_restart(
        tmp_path: Path) -> None:
    vol1 = one_volume(tmp_path)
    kernel, vol_uuid = vol1.kernel, vol1.volume_uuid
    block = os.urandom(4096)

    async def ctl(cmd: str, **args) -> dict:
        return await asyncio.to_thread(call, vol1.socket, cmd, args)

    async def sync_status() -> dict:
        return (await ctl("status"))["volumes"]["vol1"]["sync"]

    async def first_life(daemon: HandlerDaemon) -> None:
        st = await sync_status()
        assert st["mode"] == "async" and st["effective"] == "async", st
        assert await asyncio.to_thread(timed, kernel, write10(0, 8), block) < ACK_DELAY_S

        # Refusals: nothing changes.
        for args, message in (
                ({"mode": "semi-sync"}, r"mode 'semi-sync' is not a replication mode: give "
                                        r"one of async, sync, sync-on-flush; nothing changed"),
                ({"mode": "sync", "fallback_s": 0}, r"fallback 0 is out of range"),
                ({"mode": "sync", "hold": "yes"}, r"hold 'yes' is not a boolean"),
                ({}, r"missing the mode"),
                ({"mode": "sync", "wait": 1}, r"unknown argument 'wait'")):
            with pytest.raises(ControlError, match=message):
                await ctl("set-sync", volume="vol1", **args)
        with pytest.raises(ControlError, match=r"no volume 'vol9'.*nothing changed"):
            await ctl("set-sync", volume="vol9", mode="sync")
        assert (await sync_status())["mode"] == "async"

        tx = FakeTransmitter(vol_uuid)
        try:
            changed = await ctl("set-sync", volume="vol1", mode="sync", fallback_s=5)
            assert changed["changed"] is True and changed["sync"]["mode"] == "sync"
            # A transmitter of another journal (one made anew since) is not believed.
            tx.events.send(sync_events.Kind.ACKED, 10**9, uuid.uuid4())
            waited = await asyncio.to_thread(timed, kernel, write10(8, 8), block)
            assert ACK_DELAY_S <= waited < 5, waited     # completed on the ACK, not before
            st = await sync_status()
            assert st["effective"] == "sync" and st["waits"] == 1 and st["fallbacks"] == 0
            assert tx.nudged == [2], tx.nudged           # the write's seq, at once

            kept = await ctl("set-sync", volume="vol1", mode="sync-on-flush")
            assert (kept["sync"]["fallback_s"], kept["sync"]["hold"]) == (5.0, False), kept
            # Commands fetched together wait for the DR once, for the highest seq any of
            # them needs: two flushes and a FUA write, one round trip.
            waits = (await sync_status())["waits"]
            started = time.monotonic()
            with kernel.plugged():
                tickets = [kernel.submit(write10(56, 8), block), kernel.submit(SYNC_CACHE10),
                           kernel.submit(write10(64, 8), block), kernel.submit(SYNC_CACHE10),
                           kernel.submit(write10(72, 8, fua=True), block)]
            results = await asyncio.to_thread(kernel.wait_for, tickets, 20)
            took = time.monotonic() - started
            assert all(r.status == 0 for r in results), results
            assert ACK_DELAY_S <= took < 2 * ACK_DELAY_S, took
            assert (await sync_status())["waits"] == waits + 1
            tx.nudged.clear()
            assert await asyncio.to_thread(timed, kernel, write10(16, 8), block) < ACK_DELAY_S
            assert await asyncio.to_thread(timed, kernel, SYNC_CACHE10) >= ACK_DELAY_S
            assert await asyncio.to_thread(
                timed, kernel, write10(24, 8, fua=True), block) >= ACK_DELAY_S
            assert tx.nudged == [6, 7], tx.nudged
        finally:
            tx.close()

        # No transmitter at all: the write waits the fall-back time once, then async.
        await ctl("set-sync", volume="vol1", mode="sync", fallback_s=0.5)
        assert 0.5 <= await asyncio.to_thread(timed, kernel, write10(32, 8), block) < 3
        st = await sync_status()
        assert st["effective"] == "sync-degraded" and st["fallbacks"] == 1, st
        assert await asyncio.to_thread(timed, kernel, write10(40, 8), block) < 0.5
        await ctl("set-sync", volume="vol1", mode="sync-on-flush", fallback_s=2.5, hold=True)

    held: list[int] = []

    async def second_life(daemon: HandlerDaemon) -> None:
        st = await sync_status()
        assert (st["mode"], st["fallback_s"], st["hold"]) == ("sync-on-flush", 2.5, True), st
        assert st["effective"] == "sync-on-flush"
        assert (await ctl("set-sync", volume="vol1", mode="sync-on-flush", fallback_s=2.5,
                          hold=True))["changed"] is False
        # A FUA write held for a DR that never answers, then the handler stops.
        held.append(kernel.submit(write10(48, 8, fua=True), block))
        deadline = time.monotonic() + 10
        while (await sync_status())["holding_since"] is None:
            assert time.monotonic() < deadline, "the write was never held"
            await asyncio.sleep(0.05)

    try:
        vol1.run(first_life)
        started = time.monotonic()
        vol1.run(second_life)
        # The stop released it, as ABORTED COMMAND / I/O PROCESS TERMINATED (the host
        # retries), never as GOOD: the DR does not hold it.
        assert time.monotonic() - started < 20
        result = kernel.wait_for(held, timeout=5)[0]
        assert result.status == 0x02, result
        assert (result.sense[2] & 0x0F, result.sense[12], result.sense[13]) == (0x0B, 0, 6)
    finally:
        kernel.close()
