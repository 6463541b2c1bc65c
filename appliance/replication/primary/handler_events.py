"""The transmitter's end of the sync events with the volume's handler
(appliance/control/sync_events.py): the DR's durable seq goes to the handler as soon as an ACK
brings it (a write waiting in a synchronous mode completes), and the handler's "a write waits
for seq" wakes the send loop at once instead of at its next idle poll."""

from __future__ import annotations

import asyncio
import logging
import uuid

from appliance.control import sync_events

log = logging.getLogger("appliance.transmitter")
# A handler whose event queue is full (its listener thread was starved) gets the newest
# acknowledgement again this much later: it is the one a waiting write needs.
RETRY_S = 0.002


class HandlerEvents:
    def __init__(self, volume_uuid: uuid.UUID) -> None:
        self.written = asyncio.Event()      # the handler waits for a record: ship now
        self.durable = 0                    # the DR's durable seq as last told
        self.journal: uuid.UUID | None = None   # the journal those seqs are of (the session's)
        self.nudges = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        try:
            self._events: sync_events.SyncEvents | None = sync_events.SyncEvents(
                volume_uuid, sync_events.TRANSMITTER)
        except OSError as err:
            log.warning("volume %s: no sync events with the handler (%s): writes in a "
                        "synchronous mode learn of the DR's acknowledgements only from the "
                        "journal, when their fall-back time runs out", volume_uuid, err)
            self._events = None

    @property
    def available(self) -> bool:
        return self._events is not None

    def as_dict(self) -> dict:
        return {"available": self.available, "acked_sent": self.durable,
                "nudges": self.nudges}

    def start(self) -> None:
        """Listen (on the running loop)."""
        if self._events is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._events.fileno(), self._on_readable)

    def use_journal(self, journal: uuid.UUID) -> None:
        """The seqs from now on are of this journal (a session opened its reader)."""
        if journal != self.journal:
            self.journal, self.durable = journal, 0

    def acknowledged(self, seq: int) -> None:
        """The DR holds every seq up to ``seq`` durably."""
        if seq > self.durable:
            self.durable = seq
            if self._retry is None:     # else the pending retry sends the newest
                self._tell_acked()

    def _tell_acked(self) -> None:
        """Send the newest acknowledgement; if the handler's queue is full, again shortly
        (one retry pending at a time, always with the newest seq)."""
        self._retry = None
        if self._events is None or self.journal is None:
            return
        sent = self._events.send(sync_events.Kind.ACKED, self.durable, self.journal)
        if sent is sync_events.Sent.FULL and self._loop is not None:
            self._retry = self._loop.call_later(RETRY_S, self._tell_acked)

    def _on_readable(self) -> None:
        assert self._events is not None
        while (event := self._events.receive(block=False)) is not None:
            kind, _, journal = event
            if kind is sync_events.Kind.WRITTEN and journal == self.journal:
                self.nudges += 1
                self.written.set()
                if self.durable and self._retry is None:
                    # (A handler that restarted learns where the DR is.)
                    self._tell_acked()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
