"""Status never says the DR is in sync while the primary holds writes it lacks (issue 13;
docs/protocol.md, "What status derives from").

The main test overflows the journal with the transmitter configured the way the demo does it
(no 'mirror'/'bitmap' keys): the transmitter must find them from the volume and resync, and
every status poll until the DR equals the primary byte for byte must report the lag. The
others take each path where the primary holds data the DR lacks: no transmitter running,
shipping paused, a refused peer, and a configuration naming other files."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time

import pytest
from repl_harness import PY, REPO, read, read_log, status, wait_for

from appliance.control.client import ControlError

pytestmark = pytest.mark.integration


def admin_status(sock) -> str:
    """`appliancectl --socket SOCK status`: the human form."""
    proc = subprocess.run([PY, "-m", "appliance.control.cli", "--socket", str(sock), "status"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def tx_poll(site) -> dict | None:
    try:
        return status(site.control)
    except ControlError:
        return None     # not up (yet)


def assert_behind(tx: dict | None, rx: dict, when: str) -> None:
    """What both sides must say while the DR lacks writes the primary holds."""
    assert rx["in_sync"] is False, f"{when}: the DR claims to be in sync: {rx}"
    assert rx["behind_reason"], f"{when}: the DR gives no reason for being behind: {rx}"
    if tx is not None:
        assert tx["in_sync"] is False, f"{when}: the transmitter claims in sync: {tx}"
        assert tx["lag_bytes"] > 0 or tx["lag_records"] > 0, \
            f"{when}: the transmitter reports no lag: {tx}"
        assert tx["behind_reason"], f"{when}: the transmitter gives no reason: {tx}"


def test_an_overflow_with_the_demo_configuration_converges_and_status_never_lies(pair):
    site = pair.site("site-a")          # as the demo writes it: no mirror/bitmap keys
    assert "mirror" not in site.tx_config.read_text()
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    vid = str(site.uuid)

    # 1. The link is down (no receiver) while the host writes: a 1 MiB journal overflows to
    #    the bitmap. The transmitter says so, and why it cannot resync yet.
    w = pair.writer(site, 900, journal_size=1 << 20, linger=True).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) >= 900 and "writer: status " in w.output(), 60,
             "the writer to finish its ops")
    assert "logging-to-bitmap" in w.output(), w.output()[-2000:]
    down = wait_for(lambda: (st := status(site.control))["volume_state"] == "logging-to-bitmap"
                    and st, 10, "the transmitter to report the bitmap")
    assert_behind(down, {"in_sync": False, "behind_reason": "(no receiver)"}, "link down")
    assert down["dirty_bytes"] > 0 and down["logging_since"] and down["lag_bytes"] > 0, down
    assert "waiting for the link" in down["resync_blocked"], down
    assert down["recovery_point_age_s"] > 0, down
    # ... and in the words an admin reads (appliancectl status, from the live daemon).
    text = admin_status(site.control)
    assert "replication:logging-to-bitmap since" in text and " behind" in text, text
    assert "blocked: waiting for the link" in text and "why:" in text, text

    # 2. The link comes up; poll both sides until the DR equals the primary.
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    polls: list[tuple[dict | None, dict]] = []
    remote = pair.replica_dir(site.uuid) / "mirror"
    returned = time.monotonic()
    deadline = returned + 90
    while True:
        got_tx, got_rx = tx_poll(site), pair.rx_status()["volumes"][vid]
        if remote.exists() and read(remote) == read(site.mirror):
            break
        polls.append((got_tx, got_rx))
        assert_behind(got_tx, got_rx, f"poll {len(polls)}, the DR differs from the primary")
        assert tx.running(), tx.output()[-3000:]
        assert time.monotonic() < deadline, \
            f"the DR did not converge in 90 s; last statuses {got_tx} {got_rx}\n{pair.logs()}"
        time.sleep(0.1)
    print(f"converged {time.monotonic() - returned:.1f} s after the link returned; "
          f"{len(polls)} polls in between, every one saying behind")

    # 3. Converged: both sides say so, with zero lag.
    def both_in_sync():
        t, r = status(site.control), pair.rx_status()["volumes"][vid]
        return t["in_sync"] and r["in_sync"] and t["lag_bytes"] == 0 and r["lag_records"] == 0
    wait_for(both_in_sync, 30, "both sides to report in sync after convergence")
    for sock in (site.control, pair.rx_control):
        text = admin_status(sock)
        assert "in-sync" in text and "behind" not in text, text
    assert "dirty-region bitmap" in tx.output() and "journaling again" in tx.output(), \
        tx.output()[-3000:]


def replicate_in_sync(pair, ops: int):
    """A site whose writer wrote ``ops`` writes, replicated until both sides say in sync:
    (site, transmitter process, volume uuid as the receiver's status keys it)."""
    site = pair.site("site-a")
    pair.serve(site)
    w = pair.writer(site, ops).start()
    tx = pair.transmitter(site).start()
    vid = str(site.uuid)
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    wait_for(lambda: status(site.control)["in_sync"] and
             pair.rx_status()["volumes"][vid]["in_sync"], 30, "the first sync")
    return site, tx, vid


def test_a_transmitter_that_is_not_running_leaves_the_dr_saying_behind(pair):
    _, tx, vid = replicate_in_sync(pair, 50)
    tx.stop()
    st = pair.rx_status()["volumes"][vid]
    assert st["in_sync"] is False and "no primary connected" in st["behind_reason"], st
    assert st["lag_bytes"] is None, st          # unknown, never zero


def _window_around_now() -> str:
    now = dt.datetime.now()
    start, end = now - dt.timedelta(minutes=30), now + dt.timedelta(minutes=30)
    return f'blackout = ["{start:%H:%M}-{end:%H:%M}"]\n'


def test_paused_shipping_shows_as_lag_on_both_sides(pair):
    site = pair.site("site-a", extra=_window_around_now())
    pair.serve(site)
    w = pair.writer(site, 40).start()
    pair.transmitter(site).start()
    vid = str(site.uuid)
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    wait_for(lambda: status(site.control)["link"]["state"] == "paused:blackout-window", 20,
             "the blackout pause")
    wait_for(lambda: status(site.control)["lag_records"] >= 40, 20,
             "the transmitter to see the 40 unshipped records (published head)")
    wait_for(lambda: (pair.rx_status()["volumes"][vid]["primary_report"] or {})
             .get("head_seq", 0) >= 40, 20, "the primary's report to reach the DR")
    tx_st, rx_st = status(site.control), pair.rx_status()["volumes"][vid]
    assert_behind(tx_st, rx_st, "paused")
    assert rx_st["lag_records"] >= 40 and "not applied here" in rx_st["behind_reason"], rx_st


def test_a_refused_transmitter_shows_its_lag_and_the_dr_says_behind(pair):
    site = pair.site("site-a")
    pair.serve(site, allowed={site.uuid: ["site-z"]})
    w = pair.writer(site, 30, journal_size=1 << 20).start()
    pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    wait_for(lambda: status(site.control)["link"]["state"].startswith("refused")
             and status(site.control)["lag_records"] >= 30, 20,
             "the refusal and the lag of the 30 records")
    assert_behind(status(site.control), pair.rx_status()["volumes"][str(site.uuid)], "refused")


def test_a_transmitter_configured_with_other_files_than_the_volume_is_refused(pair, tmp_path):
    site = pair.site("site-a", extra=f'mirror = "{tmp_path / "elsewhere"}"\n'
                                     f'bitmap = "{tmp_path / "site-a" / "bitmap"}"\n')
    w = pair.writer(site, 5).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    tx = pair.transmitter(site).start()
    wait_for(lambda: not tx.running(), 20, "the transmitter to refuse its configuration")
    assert tx.popen.returncode == 2
    out = tx.output()
    assert "'mirror'" in out and str(site.mirror) in out and "remove 'mirror'" in out, out


def test_a_silent_link_stops_the_dr_claiming_in_sync_before_it_is_declared_dead(pair):
    """A cut link is declared dead only after dead_after_s (3 s here); reports come every
    heartbeat (0.5 s): after 2.5 heartbeats without one the DR no longer claims in sync,
    though its link still says connected."""
    _, tx, vid = replicate_in_sync(pair, 30)
    tx.popen.send_signal(signal.SIGSTOP)          # silent, the TCP connection stays open
    try:
        got = wait_for(lambda: not (st := pair.rx_status()["volumes"][vid])["in_sync"] and st,
                       2.5, "the DR to stop claiming in sync on a silent link")
        assert got["link"]["state"] == "connected", got["link"]
        assert "state report is" in got["behind_reason"] and got["lag_bytes"] is None, got
    finally:
        tx.popen.send_signal(signal.SIGCONT)
