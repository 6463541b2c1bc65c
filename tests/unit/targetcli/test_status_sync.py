"""The replication mode in the status text (the handler's ``sync`` entry, docs/volume.md
"Synchronous modes"): nothing for async, ``mode:sync`` / ``mode:sync-on-flush`` in the
volume's line, a fall-back to async with since when, why and that it returns by itself, and
writes held for the DR (hold=true) with what to do (exact text)."""

from __future__ import annotations

import datetime as dt

from recorded_states import recorded

from targetcli_ext.status_text import render_status, sync_effective, volume_views

PEERS = {"192.0.2.2:7700": "dr"}
SINCE = 1699999800.0            # 22:10:00 UTC; the recorded moment is 22:13:20
REASON = "the DR did not acknowledge the write (seq 48230) within 5 s"


def with_sync(state: str, **sync) -> dict:
    snap = recorded(state)
    entry = snap["handler"]["volumes"]["vol1"].setdefault("sync", {
        "mode": "async", "fallback_s": 10.0, "hold": False, "effective": "async",
        "degraded_since": None, "degraded_reason": None, "holding_since": None})
    entry.update(sync)
    return snap


def text(snap: dict) -> str:
    return render_status(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS)


def view(snap: dict):
    return volume_views(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS)[0]


def test_async_says_nothing():
    snap = recorded("healthy")
    assert snap["handler"]["volumes"]["vol1"]["sync"]["mode"] == "async"
    assert text(snap) == ("vol1 role:primary peer:dr (192.0.2.2:7700)\n"
                          "  link:connected replication:replicating journal:2% in-sync\n")
    assert view(snap).summary() == "primary, connected, replicating, in sync"


def test_sync_and_sync_on_flush_are_a_token_of_the_volume_line():
    for mode in ("sync", "sync-on-flush"):
        snap = with_sync("healthy", mode=mode, effective=mode, fallback_s=5.0)
        assert text(snap) == (
            "vol1 role:primary peer:dr (192.0.2.2:7700)\n"
            f"  link:connected replication:replicating mode:{mode} journal:2% in-sync\n")
        assert view(snap).summary() == f"primary, connected, replicating, {mode}, in sync"
        assert view(snap).health is True


def test_a_fall_back_says_since_when_why_and_that_it_returns_by_itself():
    snap = with_sync("connecting", mode="sync", effective="sync-degraded", fallback_s=5.0,
                     degraded_since=SINCE, degraded_reason=REASON)
    assert text(snap) == f"""\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connecting since 22:08:20 replication:stopped mode:sync-degraded since 22:10:00 journal:41% behind
    last error: ConnectionRefusedError: [Errno 111] Connect call failed ('192.0.2.2', 7700)
    lag: 1520 records, 5.9 MiB, recovery point 5m00s ago
    why: 1520 journal records are not acknowledged by the peer yet
    degraded: sync fell back to async: {REASON}; host writes complete without waiting for the DR until it has caught up, then sync again by itself
    do: check that the DR appliance's receiver runs and that 192.0.2.2:7700 is reachable from here; shipping resumes by itself once it is
"""
    assert view(snap).summary() == "primary, connecting, stopped, sync-degraded, behind"
    assert view(snap).health is False


def test_a_fall_back_while_in_sync_is_no_longer_healthy():
    snap = with_sync("healthy", mode="sync-on-flush", effective="sync-degraded",
                     degraded_since=SINCE, degraded_reason=REASON)
    assert text(snap) == f"""\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:replicating mode:sync-degraded since 22:10:00 journal:2% in-sync
    degraded: sync-on-flush fell back to async: {REASON}; host writes complete without waiting for the DR until it has caught up, then sync-on-flush again by itself
"""
    assert view(snap).health is None            # catching up by itself


def test_writes_held_for_the_dr_say_what_to_do():
    snap = with_sync("connecting", mode="sync", effective="sync", hold=True,
                     holding_since=SINCE)
    lines = text(snap).splitlines()
    assert lines[1] == ("  link:connecting since 22:08:20 replication:stopped mode:sync "
                        "journal:41% behind")
    assert lines[5:] == [
        "    holding: host writes wait for the DR since 22:10:00: it has not acknowledged "
        "them and hold=true allows no fall-back",
        "    do: check that the DR appliance's receiver runs and that 192.0.2.2:7700 is "
        "reachable from here; shipping resumes by itself once it is",
        "    do: bring the DR or the link back; or run 'set sync hold=false' in "
        "/replication/volumes/vol1 to let writes fall back to async after the fallback time"]
    assert view(snap).health is False


def test_a_volume_no_transmitter_answers_for_shows_its_mode_too():
    snap = with_sync("healthy", mode="sync", effective="sync-degraded", degraded_since=SINCE,
                     degraded_reason="the volume logs writes to the dirty bitmap (the DR gets "
                                     "them only with the resync)")
    snap["transmitters"] = {}
    assert text(snap) == """\
vol1 role:unreplicated
  replication:none (no transmitter answers for this volume) mode:sync-degraded since 22:10:00 journal:2%
    degraded: sync fell back to async: the volume logs writes to the dirty bitmap (the DR gets them only with the resync); host writes complete without waiting for the DR until it has caught up, then sync again by itself
"""


def test_the_effective_mode_as_get_sync_shows_it():
    now = 1700000000.0
    assert sync_effective({"mode": "sync", "effective": "sync"}, now=now, tz=dt.UTC) == "sync"
    assert sync_effective({"mode": "sync", "effective": "sync-degraded",
                           "degraded_since": SINCE, "degraded_reason": REASON},
                          now=now, tz=dt.UTC) == f"sync-degraded since 22:10:00: {REASON}"
    assert sync_effective({"mode": "sync", "effective": "sync-degraded"}, now=now,
                          tz=dt.UTC) == "sync-degraded"
    assert sync_effective({"mode": "sync", "effective": "sync", "holding_since": SINCE - 86400},
                          now=now, tz=dt.UTC) == (
        "sync, holding writes since 2023-11-13 22:10:00 (the DR has not acknowledged them)")
