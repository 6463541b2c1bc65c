"""The admin's pause of journaling with the real transmitter and receiver: while paused the
writes go to the mirror and the bitmap, no resync runs (the DR keeps its consistent image and
says it is behind); after resume the dirty regions are resynced, the volume journals again
and the DR converges byte for byte."""

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

        # No resync while paused: it would leave the DR inconsistent for the whole pause.
        # The DR keeps its consistent image and says it is behind; the transmitter says why.
        wait_for(lambda: (s := status(site.control))["dirty_bytes"] > 0
                 and "journaling is paused" in (s["resync_blocked"] or ""),
                 30, "the transmitter to say the paused writes wait for resume")
        vol.service()
        st = vol.status()
        assert st["state"] == LOGGING_TO_BITMAP and st["journal_paused"], st
        assert st["logging_reason"] == "paused by admin"
        assert st["dirty_chunks"] > 0, "a resync ran while journaling was paused"
        assert status(site.control)["resync"]["state"] == "idle"
        dr = wait_for(lambda: (v := rx_volume())["in_sync"] is False and v, 30,
                      "the DR to say it is behind")
        assert dr["state"] == "consistent"

        assert vol.resume_journal()

        def journaling_again() -> bool:
            vol.service()       # the writer answers the resync's clear request
            return vol.state == JOURNALING
        wait_for(journaling_again, 60, "the resync after resume, then journaling again",
                 interval=0.1)
        head = vol.status()["journal"]["next_seq"]
        write(30)
        assert vol.status()["journal"]["next_seq"] == head + 30, "resumed journal took no records"
        wait_for(lambda: rx_volume()["state"] == "consistent"
                 and status(site.control)["resync"]["state"] == "idle",
                 60, "the resync to end and the DR to be consistent", interval=0.1)
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
