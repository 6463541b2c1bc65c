"""An online resize of a replicated volume: the DR follows the primary.

The write fork records the new size in the journal's superblock; the transmitter notices
(a record beyond the size it announced, or its periodic look at an idle link), reconnects, and
its HELLO carries the new size; the receiver grows or shrinks the replica (after applying what
it holds) and the DR converges to the primary byte for byte, at the new size."""

from __future__ import annotations

import pytest
from repl_harness import converge, image_after, read, read_log, status, wait_for

pytestmark = pytest.mark.integration


def test_grow_while_replicating_then_shrink_on_an_idle_link(pair):
    site = pair.site("site-a")
    small, big, middle = site.blocks, 2 * site.blocks, 3 * site.blocks // 2
    pair.volumes = [(site.uuid, small)]
    pair.write_rx_config()
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 200).start()
    tx = pair.transmitter(site).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer's first ops")
    converge(pair, site)

    # Grow under a live session: writes beyond the old end follow at once.
    w = pair.writer(site, 500, resize_to=big, seed=2).start()
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer's ops after the grow")
    assert w.popen.returncode == 0, w.output()[-3000:]
    assert any(op.lba + op.nblocks > small for op in read_log(site.log)), "no op beyond the end"
    converge(pair, site)
    assert status(site.control)["size_bytes"] == big * 512
    assert pair.rx_status()["volumes"][str(site.uuid)]["size_bytes"] == big * 512

    # Shrink with nothing to ship: the idle link's periodic look notices it.
    w = pair.writer(site, 500, blocks=big, resize_to=middle).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the shrink")
    assert w.popen.returncode == 0, w.output()[-3000:]
    wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["size_bytes"] == middle * 512,
             30, "the replica to shrink with the primary")
    converge(pair, site)
    remote = read(pair.replica_dir(site.uuid) / "mirror")
    assert remote == bytes(image_after(read_log(site.log), big * 512)[:middle * 512])
    assert tx.running() and "resized from" in tx.output()
