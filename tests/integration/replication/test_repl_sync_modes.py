"""Synchronous modes end to end on loopback: a real writer (Volume + the handler's AckListener),
a real transmitter and receiver (TLS), kill -9 of the primary (docs/volume.md, "Synchronous
modes"; invariant 7)."""

from __future__ import annotations

import threading
import time

import pytest
from repl_harness import BLOCK, match_prefix, read, read_log, wait_for

from appliance.control.client import call
from appliance.journal import OpKind, WriteOp
from appliance.tcmu.backend import AckListener
from appliance.volume import Volume, VolumeConfig
from appliance.volume.sync_mode import SyncSettings

pytestmark = pytest.mark.timeout(240)


def read_done(path) -> list[tuple[int, str]]:
    """(op index, what completed): W/S/U an ordinary write, FUA, F a flush after that op."""
    if not path.exists():
        return []
    done = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            done.append((int(parts[0]), parts[1]))
    return done


def dr_prefix_after_primary_dies(pair, site) -> int:
    """The number of ops the DR's mirror holds (a prefix of the log) once it has applied
    everything it holds durably: what survives a power cut of the primary."""
    def settled():
        st = pair.rx_status()["volumes"].get(str(site.uuid))
        return st is not None and st["applied_seq"] == st["durable_seq"]
    wait_for(settled, 30, "the DR to apply everything it holds")
    remote = read(pair.replica_dir(site.uuid) / "mirror")
    return match_prefix(remote, read_log(site.log)).ops_in_prefix


def run_until_killed(pair, site, mode: str | None, *, completed: int, extra=(),
                     transmitter: bool = True) -> list[tuple[int, str]]:
    """Serve, write in ``mode`` until ``completed`` ops completed, then kill -9 the writer and
    the transmitter at once (the primary's power cut, as far as the DR can tell)."""
    pair.serve(site)
    tx = pair.transmitter(site).start() if transmitter else None
    done_log = pair.root / f"done-{site.name}"
    args = ["--done-log", str(done_log), "--fallback", "30", *extra]
    if mode:
        args += ["--sync-mode", mode]
    writer = pair.writer(site, 100_000, extra=tuple(args)).start()
    wait_for(lambda: len(read_done(done_log)) >= completed or not writer.running(), 120,
             f"{completed} completed writes")
    assert writer.running(), writer.output()[-3000:]
    writer.kill9()
    if tx is not None:
        tx.kill9()
    return read_done(done_log)


def test_sync_every_completed_write_is_at_the_dr_after_a_primary_power_cut(pair):
    site = pair.site("site-a", blocks=2048)
    done = run_until_killed(pair, site, "sync", completed=150, extra=("--fua-share", "0"))
    held = dr_prefix_after_primary_dies(pair, site)
    last_done = max(index for index, _ in done)
    assert held >= last_done, (f"the DR holds ops 1..{held}, but op {last_done} had completed "
                               f"to the host in sync mode")


def test_async_can_complete_writes_the_dr_lacks(pair):
    """The check above can fail: in async mode with no transmitter shipping, completed writes
    are not at the DR."""
    site = pair.site("site-a", blocks=2048)
    pair.serve(site)
    tx = pair.transmitter(site).start()
    wait_for(lambda: str(site.uuid) in pair.rx_status()["volumes"], 30, "the replica")
    tx.kill9()
    done = run_until_killed(pair, site, None, completed=50, transmitter=False)
    held = dr_prefix_after_primary_dies(pair, site)
    assert held < max(index for index, _ in done)


def test_sync_on_flush_commit_points_are_at_the_dr_after_a_primary_power_cut(pair):
    site = pair.site("site-a", blocks=2048)
    done = run_until_killed(pair, site, "sync-on-flush", completed=300,
                            extra=("--flush-every", "10", "--fua-share", "0.03"))
    held = dr_prefix_after_primary_dies(pair, site)
    commits = [index for index, what in done if what in ("F", "FUA")]
    assert commits, done[-20:]
    assert held >= commits[-1], (f"the DR holds ops 1..{held}, but op {commits[-1]} was a "
                                 f"completed commit point (flush or FUA) in sync-on-flush")


# --- falling back when the DR does not answer, and coming back ----------------------------


@pytest.fixture
def local_volume(pair):
    """A volume in this process with the handler's ack listener (status read directly)."""
    site = pair.site("site-a", blocks=1024)
    site.dir.mkdir(parents=True, exist_ok=True)
    vol = Volume.open(VolumeConfig(
        uuid=site.uuid, num_blocks=site.blocks, block_size=BLOCK, journal_size=8 << 20,
        max_transfer_bytes=64 * 1024, mirror_path=site.mirror, journal_path=site.journal,
        bitmap_path=site.dir / "bitmap", service_interval=0.05))
    acks = AckListener.start(vol)
    assert acks is not None
    try:
        yield site, vol
    finally:
        acks.stop()
        vol.close()


def link_state(site) -> str | None:
    try:
        return call(site.control, "status", {}, timeout=5)["link"]["state"]
    except OSError:
        return None


def write(vol: Volume, lba: int, fill: int) -> float:
    started = time.monotonic()
    vol.submit([WriteOp(OpKind.WRITE, lba, 1, bytes([fill]) * BLOCK)])
    return time.monotonic() - started


def test_sync_falls_back_when_the_link_is_cut_and_returns_once_caught_up(pair, local_volume):
    site, vol = local_volume
    vol.set_sync(SyncSettings.parse("sync", 1.0))
    pair.serve(site)
    tx = pair.transmitter(site).start()
    wait_for(lambda: link_state(site) == "replicating", 30, "the link up")
    write(vol, 0, 1)
    assert vol.status()["sync"]["effective"] == "sync", vol.status()["sync"]
    quick = write(vol, 1, 2)
    assert quick < 1.0 and vol.status()["sync"]["acked_seq"] >= 2

    tx.kill9()                                     # the link is gone
    stalled = write(vol, 2, 3)
    assert 1.0 <= stalled < 5.0, stalled           # bounded by the fall-back time
    sync = vol.status()["sync"]
    assert sync["effective"] == "sync-degraded" and sync["fallbacks"] == 1, sync
    assert "did not acknowledge" in sync["degraded_reason"]
    assert write(vol, 3, 4) < 0.5                  # degraded: no more waiting

    pair.transmitter(site).start()                 # the link is back
    wait_for(lambda: vol.status()["sync"]["effective"] == "sync", 30,
             "sync again once the DR caught up")
    assert write(vol, 4, 5) < 1.0
    assert vol.status()["sync"]["acked_seq"] >= vol.status()["journal"]["next_seq"] - 1


def test_hold_waits_for_the_dr_instead_of_falling_back(pair, local_volume):
    site, vol = local_volume
    vol.set_sync(SyncSettings.parse("sync", 0.2, hold=True))
    pair.serve(site)
    started = time.monotonic()

    def start_late():
        time.sleep(1.5)
        pair.transmitter(site).start()
    threading.Thread(target=start_late, daemon=True).start()
    write(vol, 0, 7)                               # waits until the transmitter came up
    assert time.monotonic() - started >= 1.5
    sync = vol.status()["sync"]
    assert sync["effective"] == "sync" and sync["fallbacks"] == 0, sync


def test_the_mode_survives_a_restart_of_the_volume(pair, local_volume):
    site, vol = local_volume
    assert vol.set_sync(SyncSettings.parse("sync-on-flush", 2.5))
    assert not vol.set_sync(SyncSettings.parse("sync-on-flush", 2.5))
    vol.close()
    again = Volume.open(vol.config)
    try:
        assert again.sync.settings == SyncSettings.parse("sync-on-flush", 2.5)
    finally:
        again.close()
