"""The admin's steering of a running transmitter over its control socket (what the targetcli
shell calls): pause/resume, live pacing (`set`), a full `resync`, and `discard` of the queued
records (docs/protocol.md, "Steering the transmitter")."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from repl_harness import converge, read, read_log, status, wait_for

from appliance.control.client import ControlError, call
from appliance.journal import JournalReader

pytestmark = pytest.mark.integration


def tx_call(site, cmd: str, **args):
    # A transmitter just started may not have bound its socket yet: under load, `converge`
    # can already hold (nothing written, both mirrors blank) while it is still importing.
    wait_for(site.control.exists, 30, f"the transmitter's control socket {site.control}")
    return call(site.control, cmd, args, timeout=30.0)


def rx_volume(pair, site) -> dict:
    return pair.rx_status()["volumes"][str(site.uuid)]


def writer_state(proc) -> str | None:
    lines = [ln for ln in proc.output().splitlines() if ln.startswith("writer: status ")]
    return json.loads(lines[-1].removeprefix("writer: status "))["state"] if lines else None


def both_in_sync(pair, site) -> bool:
    return status(site.control)["in_sync"] and rx_volume(pair, site)["in_sync"]


def window_around_now() -> str:
    now = dt.datetime.now()
    return f"{now - dt.timedelta(minutes=30):%H:%M}-{now + dt.timedelta(minutes=30):%H:%M}"


def test_pause_holds_records_both_sides_say_why_and_resume_converges(pair):
    # Started paused from its configuration, as the shell writes it for a paused volume.
    site = pair.site("site-a", extra='name = "vol-a"\npaused = true\n')
    pair.serve(site)
    w = pair.writer(site, 60).start()
    pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    st = wait_for(lambda: (s := status(site.control))["link"]["state"] == "paused:admin"
                  and s["lag_records"] >= 60 and s, 20, "the paused link and the 60 records")
    assert st["paused"] is True and st["name"] == "vol-a", st
    assert st["in_sync"] is False and "paused by the admin" in st["behind_reason"], st
    assert "60 journal records" in st["behind_reason"], st
    rx = wait_for(lambda: (v := rx_volume(pair, site))["primary_report"]
                  and v["primary_report"]["head_seq"] >= 60 and v, 20,
                  "the primary's report to reach the DR")
    assert rx["in_sync"] is False and "not applied here" in rx["behind_reason"], rx
    assert rx["name"] == "vol-a", rx        # the HELLO's name
    time.sleep(1.0)     # held, not merely slow: nothing reaches the DR while paused
    assert rx_volume(pair, site)["durable_seq"] == 0, rx_volume(pair, site)
    assert status(site.control)["records_sent"] == 0

    assert tx_call(site, "resume") == {"paused": False, "needs_resync": False}
    converge(pair, site)
    wait_for(lambda: both_in_sync(pair, site), 20, "both sides in sync after resume")
    st = status(site.control)
    assert st["link"]["state"] == "replicating" and st["paused"] is False, st

    # Paused with nothing owed is not "behind": the DR holds every write.
    assert tx_call(site, "pause") == {"paused": True}
    st = wait_for(lambda: (s := status(site.control))["link"]["state"] == "paused:admin" and s,
                  10, "the pause")
    assert st["in_sync"] is True and st["behind_reason"] is None, st


def test_set_bandwidth_limit_and_blackout_apply_to_the_live_link(pair):
    site = pair.site("site-a", compression=False)   # wire bytes = what the limit counts
    pair.serve(site)
    w = pair.writer(site, 10).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    tx = pair.transmitter(site).start()
    converge(pair, site)
    wait_for(lambda: status(site.control)["link"]["state"] == "replicating", 20, "the link")
    st = status(site.control)
    assert st["bandwidth_limit"] is None and st["blackout"] == [], st
    connects = st["link"]["connects"]

    # Refused with the key named, nothing changed.
    for bad, key in (({"bandwidth_limit": 0}, "bandwidth_limit"),
                     ({"bandwidth_limit": "fast"}, "bandwidth_limit"),
                     ({"blackout": ["8-18"]}, "blackout"), ({"bandwith_limit": 5}, "unknown")):
        with pytest.raises(ControlError, match=key) as err:
            tx_call(site, "set", **bad)
        assert "nothing changed" in str(err.value)
    assert status(site.control)["bandwidth_limit"] is None

    # A low limit, set live: the backlog takes at least its bytes / rate to cross.
    rate = 100_000
    tx_call(site, "pause")
    assert tx_call(site, "set", bandwidth_limit=rate) == {"bandwidth_limit": float(rate),
                                                          "blackout": []}
    w = pair.writer(site, 90).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    wait_for(lambda: status(site.control)["lag_records"] >= 80, 10, "the 80 records")
    before = status(site.control)["wire_bytes_sent"]
    started = time.monotonic()
    tx_call(site, "resume")
    wait_for(lambda: status(site.control)["lag_records"] == 0, 60, "the backlog to ship")
    elapsed = time.monotonic() - started
    shipped = status(site.control)["wire_bytes_sent"] - before
    burst = 64 * 1024         # the token bucket's initial burst
    floor = (shipped - burst) / rate
    print(f"{shipped} wire bytes at {rate} B/s took {elapsed:.2f} s (floor {floor:.2f} s)")
    assert shipped > 3 * burst, shipped
    assert elapsed >= 0.9 * floor, (elapsed, floor, shipped)
    converge(pair, site)
    assert status(site.control)["link"]["connects"] == connects, "set must not reconnect"

    # A blackout window set live holds shipping; clearing it ships.
    assert tx_call(site, "set", bandwidth_limit=None, blackout=[window_around_now()]) == {
        "bandwidth_limit": None, "blackout": [window_around_now()]}
    wait_for(lambda: status(site.control)["link"]["state"] == "paused:blackout-window", 10,
             "the blackout pause")
    w = pair.writer(site, 120).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    wait_for(lambda: status(site.control)["lag_records"] >= 30, 10, "the 30 new records")
    held = rx_volume(pair, site)["durable_seq"]
    time.sleep(1.0)
    assert rx_volume(pair, site)["durable_seq"] == held, "shipped during the blackout"
    assert status(site.control)["in_sync"] is False
    tx_call(site, "set", blackout=[])
    converge(pair, site)
    assert status(site.control)["link"]["connects"] == connects
    assert tx.running()


def test_resync_reships_the_whole_volume(pair):
    site = pair.site("site-a", blocks=2048)
    pair.serve(site)
    w = pair.writer(site, 100, linger=True).start()
    pair.transmitter(site).start()
    converge(pair, site)
    wait_for(lambda: both_in_sync(pair, site), 20, "the first sync")

    # Damage the DR's mirror behind the receiver's back: only a full resync repairs it.
    remote = pair.replica_dir(site.uuid) / "mirror"
    with open(remote, "r+b") as f:
        for block in (0, 700, 2047):
            f.seek(block * 512)
            f.write(b"\xee" * 512)
    assert read(remote) != read(site.mirror)
    before = status(site.control)["resync"]
    # Asked for while paused: marked at once, shipped only after resume.
    tx_call(site, "pause")
    result = tx_call(site, "resync")
    assert result["dirty_bytes"] == 2048 * 512, result
    assert result["shipped"] == "once connected and not paused", result
    st = wait_for(lambda: (s := status(site.control))["dirty_bytes"] == 2048 * 512 and s, 10,
                  "the transmitter to see every chunk dirty")
    assert "paused by the admin" in st["resync_blocked"], st
    assert "paused by the admin" in st["behind_reason"] and not st["in_sync"], st
    time.sleep(1.0)
    assert status(site.control)["resync"]["total_bytes"] == before["total_bytes"]
    assert rx_volume(pair, site)["state"] == "consistent", "a paused resync began"
    tx_call(site, "resume")
    wait_for(lambda: (r := status(site.control)["resync"])["completed"] > before["completed"]
             and r["state"] == "idle", 30, "the full resync to complete")
    converge(pair, site)
    after = status(site.control)["resync"]
    assert after["total_bytes"] >= 2048 * 512, after
    wait_for(lambda: writer_state(w) == "journaling", 20, "the writer to journal again")
    wait_for(lambda: both_in_sync(pair, site), 20, "in sync after the resync")


def test_discard_is_refused_unless_paused_frees_the_journal_and_never_loses_a_write(pair):
    site = pair.site("site-a", extra='name = "vol-a"\n')
    pair.serve(site)
    w = pair.writer(site, 50, linger=True).start()
    # The writer's 50 ops first: two zero-filled mirrors would "converge" at once.
    wait_for(lambda: len(read_log(site.log)) >= 50 and writer_state(w) == "journaling", 20,
             "the writer")
    pair.transmitter(site).start()
    converge(pair, site)
    w.stop()
    before = status(site.control)
    with pytest.raises(ControlError, match="pause first") as err:
        tx_call(site, "discard")
    assert "nothing changed" in str(err.value)
    after = status(site.control)
    assert (after["paused"], after["needs_resync"], after["acked_seq"]) == \
        (False, False, before["acked_seq"]), after

    # Queue records the peer does not get.
    tx_call(site, "pause")
    w = pair.writer(site, 400, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= 400 and writer_state(w), 60, "the writer")
    st = wait_for(lambda: (s := status(site.control))["lag_records"] >= 350 and s, 10,
                  "the queued records")
    acked = status(site.control)["acked_seq"]
    assert acked < st["head_seq"], st

    result = tx_call(site, "discard")
    assert result["discarded_records"] == st["head_seq"] - acked, (result, st)
    assert result["needs_resync"] is True and result["dirty_bytes"] > 0, result
    # Their journal space is free: the acknowledged seq passed them, nothing is backlog.
    with JournalReader(site.journal, volume_uuid=site.uuid) as reader:
        assert reader.acked_seq == result["acked_seq"] >= st["head_seq"]
        assert reader.backlog_bytes(reader.acked_seq + 1) == 0
    st = wait_for(lambda: (s := status(site.control))["needs_resync"]
                  and s["volume_state"] == "logging-to-bitmap" and s, 10, "needs resync")
    assert st["in_sync"] is False and st["dirty_bytes"] > 0 and st["lag_records"] == 0, st
    assert "discarded by the admin" in st["behind_reason"], st
    assert st["discarded"]["records"] == result["discarded_records"], st
    wait_for(lambda: not rx_volume(pair, site)["in_sync"], 10, "the DR to say behind")

    # Resume: the resync ships the regions; the DR equals the primary byte for byte.
    assert tx_call(site, "resume") == {"paused": False, "needs_resync": True}
    converge(pair, site)
    wait_for(lambda: writer_state(w) == "journaling", 30, "the writer to journal again")
    wait_for(lambda: both_in_sync(pair, site) and not status(site.control)["needs_resync"],
             30, "in sync, no resync needed")
    assert rx_volume(pair, site)["state"] == "consistent"

    # Records flow again after the discarded seqs.
    w.stop()
    w = pair.writer(site, 450).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    converge(pair, site)
    wait_for(lambda: both_in_sync(pair, site), 20, "in sync after new writes")


def test_a_discard_survives_a_transmitter_crash(pair):
    """kill -9 right after a discard, restarted unpaused: the next session still gives the
    DR the discarded seqs (placeholders) and the regions, and it converges."""
    site = pair.site("site-a")
    pair.serve(site)
    w = pair.writer(site, 30, linger=True).start()
    tx = pair.transmitter(site).start()
    converge(pair, site)
    wait_for(lambda: writer_state(w) == "journaling", 20, "the writer")
    w.stop()
    tx_call(site, "pause")
    w = pair.writer(site, 200, linger=True).start()
    wait_for(lambda: len(read_log(site.log)) >= 200 and writer_state(w), 60, "the writer")
    wait_for(lambda: status(site.control)["lag_records"] >= 150, 10, "the queued records")
    assert tx_call(site, "discard")["discarded_records"] >= 150
    tx.kill9()
    tx.start()
    converge(pair, site)
    wait_for(lambda: both_in_sync(pair, site) and not status(site.control)["needs_resync"],
             30, "in sync after the crash")
