"""Synchronous replication modes: when a write may complete to the host (docs/volume.md,
"Synchronous modes").

- ``async``: as soon as it is readable (and locally durable if FUA / write cache off);
- ``sync``: only once the DR has made it durable (DRBD's protocol C);
- ``sync-on-flush``: ordinary writes as in async; a FUA write or a SYNCHRONIZE CACHE (and
  every write while the write cache is off) only once everything written before it is
  durable at the DR.

The gate knows the DR's durable seq from the transmitter's acknowledgement events
(``note_acked``, appliance/control/sync_events.py): a waiting write wakes on the event, not on
a timer. When the DR does not acknowledge within ``fallback_s`` the volume falls back to
async (``sync-degraded``, logged, in status and raised as an alert by the exporter), so a
lost link stalls host writes for at most that long; it returns to its mode by itself once
the DR has caught up. With ``hold`` the writes wait instead, for as long as it takes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from appliance.volume import bitmap_format as fmt
from appliance.volume.errors import SyncAborted

log = logging.getLogger("appliance.volume")

DEFAULT_FALLBACK_S = 10.0
MIN_FALLBACK_S = 0.01
MAX_FALLBACK_S = 3600.0
# While holding writes (``hold``), how often the gate re-reads the acknowledged seq the
# transmitter persists in the journal (an event lost with a restarted transmitter) and logs.
HOLD_RECHECK_S = 5.0


class SyncMode(StrEnum):
    ASYNC = "async"
    SYNC = "sync"
    SYNC_ON_FLUSH = "sync-on-flush"


DEGRADED = "sync-degraded"
MODE_NAMES = tuple(mode.value for mode in SyncMode)


class SyncSettingsError(ValueError):
    """A sync setting we cannot honour; the message names the key and what to give."""


@dataclass(frozen=True, slots=True)
class SyncSettings:
    mode: SyncMode = SyncMode.ASYNC
    fallback_s: float = DEFAULT_FALLBACK_S    # the longest a write waits for the DR
    hold: bool = False                        # wait for the DR however long (no fall-back)

    @classmethod
    def parse(cls, mode: object, fallback_s: object = DEFAULT_FALLBACK_S,
              hold: object = False) -> SyncSettings:
        """Validated settings; SyncSettingsError names the key that is wrong."""
        if not isinstance(mode, str) or mode not in MODE_NAMES:
            raise SyncSettingsError(f"mode {mode!r} is not a replication mode: give one of "
                                    f"{', '.join(MODE_NAMES)}")
        if isinstance(fallback_s, bool) or not isinstance(fallback_s, (int, float)) or not (
                MIN_FALLBACK_S <= fallback_s <= MAX_FALLBACK_S):
            raise SyncSettingsError(f"fallback {fallback_s!r} is out of range: give seconds "
                                    f"from {MIN_FALLBACK_S} to {MAX_FALLBACK_S:.0f}")
        if not isinstance(hold, bool):
            raise SyncSettingsError(f"hold {hold!r} is not a boolean: give true or false")
        return cls(SyncMode(mode), float(fallback_s), hold)

    def as_dict(self) -> dict:
        return {"mode": self.mode.value, "fallback_s": self.fallback_s, "hold": self.hold}


_MODE_FLAGS = {SyncMode.ASYNC: 0, SyncMode.SYNC: fmt.FLAG_SYNC,
               SyncMode.SYNC_ON_FLUSH: fmt.FLAG_SYNC_ON_FLUSH}


def to_header(settings: SyncSettings) -> tuple[int, int]:
    """(flags, fall-back ms) as the bitmap header keeps them (the handler's own record of the
    admin's choice, like a journal pause: it survives restarts and reboots)."""
    flags = _MODE_FLAGS[settings.mode] | (fmt.FLAG_SYNC_HOLD if settings.hold else 0)
    return flags, round(settings.fallback_s * 1000)


def from_header(flags: int, fallback_ms: int) -> SyncSettings:
    """The settings a bitmap header records; a header written before modes existed: async."""
    mode = next((m for m, bit in _MODE_FLAGS.items() if bit and flags & bit), SyncMode.ASYNC)
    fallback = fallback_ms / 1000 if fallback_ms else DEFAULT_FALLBACK_S
    return SyncSettings(mode, fallback, bool(flags & fmt.FLAG_SYNC_HOLD))


class SyncGate:
    """One volume's gate between a completed local write and its completion to the host.

    Thread-safe: the device thread waits in ``after_write`` / ``after_flush``, the event
    listener calls ``note_acked``, the control socket ``configure`` and ``status``."""

    def __init__(self, settings: SyncSettings, *, read_acked: Callable[[], int],
                 journaling: Callable[[], bool], name: str = "") -> None:
        self._settings = settings
        self._read_acked = read_acked       # the transmitter's slot in the journal
        self._acked = read_acked()
        self._journaling = journaling
        self._name = name
        self._cond = threading.Condition()
        self._nudge: Callable[[int], None] | None = None
        self._latest = 0                    # newest journaled seq a write or flush saw
        self._degraded_since: float | None = None
        self._degraded_reason: str | None = None
        # Degraded: caught up once acked reaches this (None: no acknowledgement came since).
        self._rearm_at: int | None = None
        self._holding_since: float | None = None
        self._waits = 0
        self._wait_seconds = 0.0
        self._max_wait_s = 0.0
        self._fallbacks = 0
        self._closed = False
        # A batch of commands defers its waits to its end (defer/settle), per thread.
        self._batch = threading.local()

    def close(self) -> None:
        """The device stops: writes waiting now, and any after, fail with SyncAborted (they
        are not known durable at the DR; the host retries them), so no loop thread outlives
        its device waiting for an acknowledgement."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- wiring ---------------------------------------------------------------------------
    def set_nudge(self, nudge: Callable[[int], None] | None) -> None:
        """``nudge(seq)`` tells the transmitter a write waits for ``seq`` (ship now)."""
        self._nudge = nudge

    @property
    def settings(self) -> SyncSettings:
        return self._settings

    def configure(self, settings: SyncSettings) -> bool:
        """Switch live; True if anything changed. Waiting writes see the new mode at once
        (async releases them). A change of mode starts undegraded."""
        with self._cond:
            if settings == self._settings:
                return False
            if settings.mode != self._settings.mode:
                self._clear_degraded()
            self._settings = settings
            self._cond.notify_all()
        log.warning("volume %s: replication mode %s (fallback %.3g s%s)", self._name,
                    settings.mode.value, settings.fallback_s,
                    ", holding writes instead of falling back" if settings.hold else "")
        return True

    # -- the DR's acknowledgements --------------------------------------------------------
    def note_acked(self, seq: int) -> None:
        """The DR holds every seq up to ``seq`` durably (the transmitter's event)."""
        with self._cond:
            if seq <= self._acked:
                return
            self._acked = seq
            self._cond.notify_all()
            if self._degraded_since is None:
                return
            # Caught up: the DR holds everything written, or everything written when the
            # previous acknowledgement came (the backlog is one round of them at most).
            if self._journaling() and (seq >= self._latest or (
                    self._rearm_at is not None and seq >= self._rearm_at)):
                log.warning("volume %s: the DR caught up (seq %d): %s again", self._name,
                            seq, self._settings.mode.value)
                self._clear_degraded()
                return
            self._rearm_at = self._latest

    @property
    def acked_seq(self) -> int:
        return self._acked

    # -- the gate -------------------------------------------------------------------------
    def defer(self) -> None:
        """Until ``settle``, this thread's writes and flushes only note the seq they need:
        a batch of commands (ScsiDisk.execute) waits once, for the highest, instead of one
        round trip to the DR per flush or write group in it."""
        self._batch.needs = 0

    def settle(self) -> None:
        """End a deferral: wait for what the batch's writes and flushes needed (SyncAborted
        if the device stops meanwhile)."""
        needs = self._batch.__dict__.pop("needs", 0)
        if needs:
            self._await(needs, "batch")

    def after_write(self, seq: int | None, *, durable: bool) -> None:
        """A write batch is local; ``seq`` its last journal seq, None if it went to the dirty
        bitmap. ``durable``: FUA or write cache off (a commit point for sync-on-flush)."""
        mode = self._settings.mode
        if mode is SyncMode.ASYNC:
            return
        self._written(seq)
        if mode is SyncMode.SYNC or durable:
            self._need(seq, "write")

    def after_flush(self, head_seq: int | None) -> None:
        """SYNCHRONIZE CACHE is durable locally; ``head_seq`` the newest journaled seq, None
        while the volume logs to the dirty bitmap."""
        if self._settings.mode is not SyncMode.ASYNC:
            self._written(head_seq)
            self._need(head_seq, "flush")

    def _written(self, seq: int | None) -> None:
        """The newest journaled seq seen (what "caught up" is measured against)."""
        if seq is not None:
            with self._cond:
                self._latest = max(self._latest, seq)

    def _need(self, seq: int | None, what: str) -> None:
        batch = self._batch.__dict__
        if "needs" in batch and seq is not None:
            batch["needs"] = max(batch["needs"], seq)
        else:
            self._await(seq, what)      # (seq None degrades at once: nothing to wait for)

    def _aborted(self, what: str, seq: int | None) -> SyncAborted:
        return SyncAborted(f"the device stops: {what} (seq {seq}) not acknowledged by the DR")

    def _await(self, seq: int | None, what: str) -> None:
        with self._cond:
            if self._closed:
                raise self._aborted(what, seq)
            if seq is None:
                self._degrade("the volume logs writes to the dirty bitmap (the DR gets them "
                              "only with the resync)")
                return
            if self._acked >= seq or (self._degraded_since is not None
                                      and not self._settings.hold):
                return
        nudge = self._nudge
        if nudge is not None:
            nudge(seq)
        started = time.monotonic()
        recheck: float | None = None        # holding: when to look at the journal again
        with self._cond:
            while self._acked < seq and self._settings.mode is not SyncMode.ASYNC:
                if self._closed:
                    raise self._aborted(what, seq)
                # Settings are read afresh on every wake-up: a shorter fallback, or hold
                # switched off, applies to a write that already waits (configure notifies).
                settings = self._settings
                if self._degraded_since is not None and not settings.hold:
                    break                      # degraded meanwhile by another waiter
                now = time.monotonic()
                deadline = (recheck if settings.hold and recheck is not None
                            else started + settings.fallback_s)
                if now >= deadline:
                    if self._check_slot(seq):
                        break
                    if not settings.hold:
                        self._degrade(f"the DR did not acknowledge the {what} (seq {seq}) "
                                      f"within {settings.fallback_s:.3g} s")
                        break
                    self._hold(seq, now - started)
                    recheck = now + HOLD_RECHECK_S
                    continue
                self._cond.wait(deadline - now)
            self._holding_since = None
            elapsed = time.monotonic() - started
            self._waits += 1
            self._wait_seconds += elapsed
            self._max_wait_s = max(self._max_wait_s, elapsed)

    def _check_slot(self, seq: int) -> bool:
        """Before falling back: the acknowledged seq the transmitter persisted (an event may
        have gone to a handler that was restarting). Called with the lock held."""
        try:
            slot = self._read_acked()
        except (OSError, ValueError):
            return False
        if slot > self._acked:
            self._acked = slot
        return self._acked >= seq

    def _hold(self, seq: int, waited: float) -> None:
        if self._holding_since is None:
            self._holding_since = time.time()
        log.warning("volume %s: holding writes for %.1f s: the DR has not acknowledged seq "
                    "%d (hold is set: no fall-back to async)", self._name, waited, seq)

    def _degrade(self, why: str) -> None:
        if self._degraded_since is not None:
            return
        self._degraded_since = time.time()
        self._degraded_reason = why
        self._rearm_at = None
        self._fallbacks += 1
        self._cond.notify_all()
        log.warning("volume %s: %s degraded to async: %s; host writes complete locally until "
                    "the DR catches up", self._name, self._settings.mode.value, why)

    def _clear_degraded(self) -> None:
        self._degraded_since = None
        self._degraded_reason = None

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        with self._cond:
            settings = self._settings
            degraded = (self._degraded_since is not None
                        and settings.mode is not SyncMode.ASYNC)
            return {
                **settings.as_dict(),
                "effective": DEGRADED if degraded else settings.mode.value,
                "degraded_since": self._degraded_since if degraded else None,
                "degraded_reason": self._degraded_reason if degraded else None,
                "holding_since": self._holding_since,
                "acked_seq": self._acked,
                "waits": self._waits,
                "wait_seconds": round(self._wait_seconds, 6),
                "max_wait_s": round(self._max_wait_s, 6),
                "fallbacks": self._fallbacks,
            }
