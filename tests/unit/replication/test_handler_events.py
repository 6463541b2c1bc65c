"""The transmitter's end of the sync events: the newest acknowledgement reaches a handler
whose queue was full, and a nudge of another journal wakes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from appliance.control.sync_events import HANDLER, Kind, Sent, SyncEvents
from appliance.replication.primary.handler_events import HandlerEvents

JOURNAL = uuid.UUID(int=5)


@contextlib.asynccontextmanager
async def both_ends() -> AsyncIterator[tuple[SyncEvents, HandlerEvents]]:
    """A handler's end and a started transmitter's end of one volume, shipping JOURNAL."""
    vol = uuid.uuid4()
    handler = SyncEvents(vol, HANDLER)
    tx = HandlerEvents(vol)
    tx.start()
    tx.use_journal(JOURNAL)
    try:
        yield handler, tx
    finally:
        tx.close()
        handler.close()


def test_the_newest_acknowledgement_reaches_a_handler_whose_queue_was_full():
    async def scenario() -> list[int]:
        async with both_ends() as (handler, tx):
            seq = 0
            while True:                       # fill the handler's queue
                seq += 1
                tx.acknowledged(seq)
                if tx._retry is not None:
                    break
            for newer in range(seq + 1, seq + 50):   # while full: coalesced, no error
                tx.acknowledged(newer)
            got = []
            deadline = time.monotonic() + 5
            while not got or got[-1] != seq + 49:
                assert time.monotonic() < deadline, f"the newest never came: {got[-5:]}"
                while (event := handler.receive(block=False)) is not None:
                    got.append(event[1])
                await asyncio.sleep(0.001)
            return got

    got = asyncio.run(scenario())
    assert got == sorted(got) and got[-1] - got[-2] > 1      # the backlog was coalesced


def test_a_nudge_of_another_journal_wakes_nothing():
    async def scenario() -> tuple[bool, bool]:
        async with both_ends() as (handler, tx):
            assert handler.send(Kind.WRITTEN, 3, uuid.uuid4()) is Sent.SENT
            await asyncio.sleep(0.05)
            stale = tx.written.is_set()
            assert handler.send(Kind.WRITTEN, 3, JOURNAL) is Sent.SENT
            await asyncio.wait_for(tx.written.wait(), 5)
            return stale, tx.written.is_set()

    assert asyncio.run(scenario()) == (False, True)
