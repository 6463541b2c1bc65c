"""The handler <-> transmitter events of the synchronous modes: what is believed and what is
dropped (appliance/control/sync_events.py)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from appliance.control import sync_events
from appliance.control.sync_events import (
    HANDLER,
    TRANSMITTER,
    Kind,
    Sent,
    SyncEvents,
    address,
)

JOURNAL = uuid.UUID(int=42)


@pytest.fixture
def ends():
    vol = uuid.uuid4()
    handler, transmitter = SyncEvents(vol, HANDLER), SyncEvents(vol, TRANSMITTER)
    yield handler, transmitter
    handler.close()
    transmitter.close()


def test_events_go_both_ways_with_their_journal(ends):
    handler, transmitter = ends
    assert transmitter.send(Kind.ACKED, 7, JOURNAL) is Sent.SENT
    assert handler.receive() == (Kind.ACKED, 7, JOURNAL)
    assert handler.send(Kind.WRITTEN, 8, JOURNAL) is Sent.SENT
    assert transmitter.receive(block=False) == (Kind.WRITTEN, 8, JOURNAL)
    assert transmitter.receive(block=False) is None


def test_no_other_end_is_not_an_error():
    lone = SyncEvents(uuid.uuid4(), HANDLER)
    try:
        assert lone.send(Kind.WRITTEN, 1, JOURNAL) is Sent.ABSENT
    finally:
        lone.close()


def test_a_second_end_of_the_same_role_is_refused_naming_it(ends):
    handler, _ = ends
    with pytest.raises(OSError, match="another handler of volume .* is running"):
        SyncEvents(handler.volume_uuid, HANDLER)


def test_malformed_datagrams_are_dropped(ends, caplog):
    handler, _ = ends
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        target = address(handler.volume_uuid, HANDLER)
        raw.sendto(b"short", target)
        raw.sendto(b"XXXX" + bytes(28), target)
    assert handler.receive(block=False) is None
    assert "dropped a 5-byte datagram" in caplog.text
    assert "not ours" in caplog.text


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to send as another user")
def test_a_datagram_from_another_user_is_not_believed(ends, caplog):
    handler, transmitter = ends
    pid = os.fork()
    if pid == 0:                 # the child: another user forging an acknowledgement
        try:
            os.setuid(65534)
            forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            forger.sendto(sync_events._MESSAGE.pack(sync_events._MAGIC, Kind.ACKED, 10**9,
                                                    JOURNAL.bytes),
                          address(handler.volume_uuid, HANDLER))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    transmitter.send(Kind.ACKED, 3, JOURNAL)          # then the real one
    assert handler.receive() == (Kind.ACKED, 3, JOURNAL)
    assert "dropped a datagram from uid 65534" in caplog.text


def test_a_full_queue_never_blocks_the_sender(ends):
    handler, transmitter = ends
    results = [transmitter.send(Kind.ACKED, seq, JOURNAL) for seq in range(1, 2001)]
    assert results[0] is Sent.SENT and results[-1] is Sent.FULL     # the queue is bounded
    assert transmitter.dropped == results.count(Sent.FULL)
    taken = []
    while (event := handler.receive(block=False)) is not None:
        taken.append(event[1])
    assert taken == list(range(1, len(taken) + 1))                  # in order, none lost
