"""The admin's pause of journaling with the real transmitter and receiver: while paused the
writes reach the DR only through the bitmap resync, which never switches the volume back to
journaling; after resume the volume journals again and the DR converges byte for byte."""

from __future__ import annotations

import random

import pytest
from repl_harness import BLOCK, converge, random_op, status, wait_for
from repl_writer import to_write_op, volume_config

from appliance.volume import JOURNALING, LOGGING_TO_BITMAP, Volume

pytestmark = pytest.mark.integration


def test_paused_journal_is_resynced_but_stays_paused_until_resume_then_converges(pair):
    site = pair.site("site-a", resync=True)
    pair.serve(site)
    rng = random.Random(5)
    vol = Volume.open(volume_config(site.dir, site.uuid, site.blocks, 8 << 20))
    tx = pair.transmitter(site).start()
    index = 0

    def write(n: int) -> None:
        nonlocal index
        for _ in range(n):
            index += 1
            vol.submit([to_write_op(random_op(rng, index, site.blocks))], fua=True)

    def rx_volume() -> dict:
        return pair.rx_status()["volumes"][str(site.uuid)]

    try:
        write(50)
        converge(pair, site)
        head = vol.status()["journal"]["next_seq"]

        assert vol.pause_journal()
        write(50)
        st = vol.status()
        assert st["journal"]["next_seq"] == head, "a paused journal took records"
        assert st["state"] == LOGGING_TO_BITMAP and st["journal_paused"]

        # The transmitter resyncs the dirty regions and clears them; then it waits for the
        # writer, which must stay paused (the admin's pause wins over the clear protocol).
        wait_for(lambda: vol.status()["dirty_chunks"] == 0
                 and status(site.control)["resync"]["state"] == "waiting-for-writer",
                 60, "the resync to ship the paused writes and wait for the writer")
        vol.service()
        st = vol.status()
        assert st["state"] == LOGGING_TO_BITMAP and st["journal_paused"], st
        assert st["logging_reason"] == "paused by admin"
        assert rx_volume()["state"] == "inconsistent"      # a resync window, reported

        assert vol.resume_journal()
        wait_for(lambda: vol.state == JOURNALING, 30, "journaling again after resume")
        write(30)
        assert vol.status()["journal"]["next_seq"] == head + 30, "resumed journal took no records"

        def consistent_again() -> bool:
            # The host keeps writing, as hosts do: the receiver notices that the resync's
            # consistent point is applied only when it next syncs its mirror, which it does
            # not do on an idle link (a receiver limit, not the pause's).
            write(1)
            return (rx_volume()["state"] == "consistent"
                    and status(site.control)["resync"]["state"] == "idle")
        wait_for(consistent_again, 60, "the resync to end and the DR to be consistent",
                 interval=0.1)
        vol.flush()
        converge(pair, site)
        assert (pair.replica_dir(site.uuid) / "mirror").read_bytes()[:site.blocks * BLOCK] \
            == site.mirror.read_bytes()[:site.blocks * BLOCK]
    except AssertionError:
        print(pair.logs())
        print("volume:", vol.status())
        print("transmitter:", status(site.control))
        print("receiver:", pair.rx_status())
        raise
    finally:
        vol.close()
        tx.stop()
