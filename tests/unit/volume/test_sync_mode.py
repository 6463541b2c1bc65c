"""The sync gate: when a write may complete in each mode, falling back, coming back."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.volume import SyncAborted
from appliance.volume import bitmap_format as fmt
from appliance.volume.sync_mode import (
    SyncGate,
    SyncMode,
    SyncSettings,
    SyncSettingsError,
    from_header,
    to_header,
)


class Slot:
    """The transmitter's persisted acknowledgement, as the journal would give it."""

    def __init__(self) -> None:
        self.seq = 0
        self.journaling = True


def gate(mode: str, fallback: float = 0.2, *, hold: bool = False,
         slot: Slot | None = None) -> tuple[SyncGate, list[int], Slot]:
    slot = slot or Slot()
    nudges: list[int] = []
    g = SyncGate(SyncSettings.parse(mode, fallback, hold), read_acked=lambda: slot.seq,
                 journaling=lambda: slot.journaling, name="t")
    g.set_nudge(nudges.append)
    return g, nudges, slot


def ack_later(g: SyncGate, seq: int, after: float) -> threading.Thread:
    t = threading.Timer(after, g.note_acked, (seq,))
    t.start()
    return t


def timed(fn, *args, **kwargs) -> float:
    started = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - started


def test_async_never_waits_nor_nudges():
    g, nudges, _ = gate("async")
    assert timed(g.after_write, 5, durable=True) < 0.05
    assert timed(g.after_flush, 5) < 0.05
    assert nudges == [] and g.status()["effective"] == "async"


def test_sync_waits_for_the_acknowledgement_of_its_seq_and_nudges_the_transmitter():
    g, nudges, _ = gate("sync", 5.0)
    ack_later(g, 3, 0.1)
    waited = timed(g.after_write, 3, durable=False)
    assert 0.08 <= waited < 2.0
    assert nudges == [3]
    st = g.status()
    assert st["effective"] == "sync" and st["waits"] == 1 and st["acked_seq"] == 3
    assert timed(g.after_write, 2, durable=False) < 0.05     # already acknowledged


def test_an_acknowledgement_below_the_seq_does_not_release_the_write():
    g, _, _ = gate("sync", 0.3)
    ack_later(g, 2, 0.05)
    assert timed(g.after_write, 3, durable=False) >= 0.3      # fell back, 2 < 3
    assert g.status()["effective"] == "sync-degraded"


def test_sync_on_flush_waits_only_at_commit_points():
    g, nudges, _ = gate("sync-on-flush", 5.0)
    assert timed(g.after_write, 1, durable=False) < 0.05
    assert timed(g.after_write, 2, durable=False) < 0.05
    ack_later(g, 2, 0.1)
    assert timed(g.after_flush, 2) >= 0.08
    ack_later(g, 3, 0.1)
    assert timed(g.after_write, 3, durable=True) >= 0.08       # FUA / write cache off
    assert nudges == [2, 3]


def test_no_acknowledgement_within_the_fallback_degrades_to_async_then_caught_up_returns():
    g, _, _ = gate("sync", 0.2)
    assert 0.2 <= timed(g.after_write, 1, durable=False) < 1.0
    st = g.status()
    assert st["effective"] == "sync-degraded" and st["fallbacks"] == 1
    assert "did not acknowledge the write (seq 1) within 0.2 s" in st["degraded_reason"]
    assert st["degraded_since"] is not None
    for seq in (2, 3, 4):                                      # async meanwhile
        assert timed(g.after_write, seq, durable=False) < 0.05
    g.note_acked(2)             # behind: not caught up
    assert g.status()["effective"] == "sync-degraded"
    g.note_acked(4)             # everything written before the previous ack: caught up
    assert g.status()["effective"] == "sync"
    ack_later(g, 5, 0.05)
    assert timed(g.after_write, 5, durable=False) >= 0.04      # waits again


def test_writes_logged_to_the_bitmap_degrade_at_once_and_return_only_when_journaling():
    g, _, slot = gate("sync", 5.0)
    slot.journaling = False
    assert timed(g.after_write, None, durable=False) < 0.05
    st = g.status()
    assert st["effective"] == "sync-degraded" and "dirty bitmap" in st["degraded_reason"]
    g.note_acked(10)
    assert g.status()["effective"] == "sync-degraded"          # still logging
    slot.journaling = True
    g.note_acked(11)
    assert g.status()["effective"] == "sync"


def test_before_falling_back_the_persisted_acknowledgement_is_read():
    g, _, slot = gate("sync", 0.1)
    slot.seq = 7                # the event was lost (a handler restart), the journal has it
    assert timed(g.after_write, 7, durable=False) >= 0.1
    assert g.status()["effective"] == "sync"


def test_hold_keeps_waiting_past_the_fallback(monkeypatch):
    monkeypatch.setattr("appliance.volume.sync_mode.HOLD_RECHECK_S", 0.05)
    g, _, _ = gate("sync", 0.05, hold=True)
    ack_later(g, 1, 0.4)
    assert timed(g.after_write, 1, durable=False) >= 0.38
    st = g.status()
    assert st["effective"] == "sync" and st["fallbacks"] == 0 and st["holding_since"] is None


def test_switching_to_async_releases_a_waiting_write():
    g, _, _ = gate("sync", 30.0)
    threading.Timer(0.1, g.configure, (SyncSettings.parse("async"),)).start()
    assert timed(g.after_write, 1, durable=False) < 5.0
    assert g.status()["effective"] == "async"


@pytest.mark.parametrize("mode, fallback, hold, key", [
    ("syncronous", 1, False, "mode"), (None, 1, False, "mode"),
    ("sync", 0, False, "fallback"), ("sync", 7200, False, "fallback"),
    ("sync", True, False, "fallback"), ("sync", 1, "yes", "hold"),
])
def test_settings_we_cannot_honour_are_refused_naming_the_key(mode, fallback, hold, key):
    with pytest.raises(SyncSettingsError, match=f"^{key} "):
        SyncSettings.parse(mode, fallback, hold)


@pytest.mark.parametrize("settings", [
    SyncSettings(), SyncSettings(SyncMode.SYNC, 2.5), SyncSettings(SyncMode.SYNC_ON_FLUSH, 0.01,
                                                                   True)])
def test_settings_round_trip_through_the_bitmap_header(settings):
    assert from_header(*to_header(settings)) == settings


def test_a_header_from_before_modes_reads_as_async():
    assert from_header(fmt.FLAG_JOURNAL_PAUSED, 0) == SyncSettings()


def test_a_shorter_fallback_reaches_a_write_that_already_waits():
    g, _, _ = gate("sync", 30.0)
    threading.Timer(0.1, g.configure, (SyncSettings.parse("sync", 0.2),)).start()
    assert timed(g.after_write, 1, durable=False) < 2.0
    assert g.status()["effective"] == "sync-degraded"


def test_hold_switched_off_releases_held_writes_at_once(monkeypatch):
    monkeypatch.setattr("appliance.volume.sync_mode.HOLD_RECHECK_S", 30.0)
    g, _, _ = gate("sync", 0.05, hold=True)
    threading.Timer(0.3, g.configure, (SyncSettings.parse("sync", 0.05),)).start()
    assert timed(g.after_write, 1, durable=False) < 2.0
    assert g.status()["effective"] == "sync-degraded"


def test_closing_releases_a_held_write_with_an_error_never_as_done():
    g, _, _ = gate("sync", 0.05, hold=True)
    threading.Timer(0.2, g.close).start()
    started = time.monotonic()
    with pytest.raises(SyncAborted, match=r"device stops: write \(seq 1\)"):
        g.after_write(1, durable=False)
    assert time.monotonic() - started < 2.0
    with pytest.raises(SyncAborted):
        g.after_flush(1)


def test_a_deferred_batch_waits_once_for_the_highest_seq_it_needs():
    g, nudges, _ = gate("sync-on-flush", 5.0)
    g.defer()
    assert timed(g.after_write, 1, durable=False) < 0.05      # not a commit point
    assert timed(g.after_flush, 1) < 0.05                     # noted, not waited
    assert timed(g.after_write, 3, durable=True) < 0.05
    assert timed(g.after_flush, 3) < 0.05
    assert nudges == [] and g.status()["waits"] == 0
    ack_later(g, 3, 0.1)
    assert 0.08 <= timed(g.settle) < 2.0
    assert nudges == [3] and g.status()["waits"] == 1
    assert timed(g.settle) < 0.05                             # nothing deferred any more
    g.defer()
    g.close()
    g.after_flush(4)
    with pytest.raises(SyncAborted, match="batch"):
        g.settle()


def test_deferral_is_per_thread():
    g, _, _ = gate("sync", 0.3)
    g.defer()                                    # this thread defers ...
    waited: list[float] = []
    other = threading.Thread(target=lambda: waited.append(timed(g.after_write, 1,
                                                                 durable=False)))
    other.start()                                # ... another does not
    other.join(5)
    assert waited and waited[0] >= 0.3
    g.settle()
