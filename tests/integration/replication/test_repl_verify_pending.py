"""Online verify with the write cache on (flush policy ``on-flush``): small writes the host
has not flushed are journaled and shipped (the DR applies them) but wait in the volume's
overlay, not on the primary's mirror file. Verify must compare the image the host reads,
and a repair must ship that image, never the older mirror bytes (docs/protocol.md,
"Online verify").

The primary volume runs in this process (the real ``Volume``, write cache on, no background
commit of the overlay), with the real transmitter and receiver processes."""

from __future__ import annotations

import os

import pytest
from repl_harness import run_verify, status, wait_for

from appliance.journal import OpKind, WriteOp
from appliance.volume import FlushPolicy, Volume, VolumeConfig

pytestmark = pytest.mark.integration
REGION = 64 * 1024
BS = 512


def open_cached_volume(site) -> Volume:
    """The primary volume with the write cache on; the overlay is committed only by a
    flush, a FUA write or the bound (its periodic commit is an hour away)."""
    return Volume.open(VolumeConfig(
        uuid=site.uuid, num_blocks=site.blocks, block_size=BS, journal_size=8 << 20,
        max_transfer_bytes=64 * 1024, flush_policy=FlushPolicy.ON_FLUSH,
        mirror_sync_interval=3600.0, mirror_path=site.mirror, journal_path=site.journal,
        bitmap_path=site.dir / "bitmap"))


def host_image(vol: Volume) -> bytes:
    """What the host reads: the mirror with the overlay applied."""
    out = bytearray(vol.num_blocks * BS)
    step = 64 * 1024 // BS
    for lba in range(0, vol.num_blocks, step):
        n = min(step, vol.num_blocks - lba)
        vol.read_into(lba, n, [memoryview(out)[lba * BS:(lba + n) * BS]])
    return bytes(out)


def pattern(tag: int, nblocks: int) -> bytes:
    return b"".join(bytes([tag, b % 251]) * (BS // 2) for b in range(nblocks))


TOUCHED = {0, 5, 20, 21, 40, 63}


def cached_writes(vol: Volume) -> None:
    """Small writes without FUA or flush (they stay in the overlay) in the regions TOUCHED:
    WRITEs, one rewriting another, a WRITE SAME and an UNMAP over the baseline."""
    t = 0
    ops = [WriteOp(OpKind.WRITE, 8, 8, pattern(t + 1, 8)),                  # region 0
           WriteOp(OpKind.WRITE, 5 * 128 + 3, 4, pattern(t + 2, 4)),        # region 5
           WriteOp(OpKind.WRITE, 5 * 128 + 5, 4, pattern(t + 3, 4)),        # ... over it
           WriteOp(OpKind.WRITE_SAME, 20 * 128 + 64, 96, bytes([t + 4]) * BS),   # 20-21
           WriteOp(OpKind.UNMAP, 40 * 128 + 8, 8),                         # region 40
           WriteOp(OpKind.WRITE, 63 * 128 + 120, 8, pattern(t + 5, 8))]     # the last one
    for op in ops:
        vol.submit([op])


def dr_applied_everything(pair, site, vol: Volume) -> None:
    head = vol.status()["journal"]["next_seq"] - 1
    wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["applied_seq"] >= head, 20,
             f"the DR to apply every journaled write (seq {head}), flushed or not")


def start_with_cached_writes(pair, site) -> Volume:
    """Receiver, volume, transmitter; a flushed baseline in every region, then the cached
    writes, which the DR has applied and the primary's mirror file lacks."""
    remote = pair.replica_dir(site.uuid) / "mirror"
    pair.serve(site)
    vol = open_cached_volume(site)
    try:
        for region in range(site.blocks * BS // REGION):
            vol.submit([WriteOp(OpKind.WRITE, region * 128, 16, pattern(200, 16))])
        vol.flush()
        pair.transmitter(site).start()
        wait_for(lambda: status(site.control)["link"]["state"] == "replicating", 20, "link up")
        cached_writes(vol)
        dr_applied_everything(pair, site, vol)
        # The point of these tests: the DR holds the cached writes, the mirror file does not.
        assert site.mirror.read_bytes() != host_image(vol), "the writes were not cached"
        assert remote.read_bytes() == host_image(vol)
    except BaseException:
        vol.close()
        raise
    return vol


def test_verify_finds_no_difference_in_writes_the_host_has_not_flushed(pair):
    site = pair.site("site-a", resync=True)
    vol = start_with_cached_writes(pair, site)
    try:
        report = run_verify(site, region_bytes=REGION, repair=False)
        assert report["state"] == "done", report
        assert report["differing"] == [], (
            f"verify reported regions of writes the host has not flushed (regions "
            f"{sorted(TOUCHED)}) as differing: {report}")
        assert (pair.replica_dir(site.uuid) / "mirror").read_bytes() == host_image(vol)
    finally:
        vol.close()


def test_a_repair_ships_what_the_host_reads_not_the_older_mirror_bytes(pair):
    site = pair.site("site-a", resync=True)
    remote = pair.replica_dir(site.uuid) / "mirror"
    vol = start_with_cached_writes(pair, site)
    try:
        # Real damage behind the receiver's back: a region with cached writes and one
        # without. The repair must ship what the host reads there, cached writes included.
        damaged = [5 * REGION, 33 * REGION]
        fd = os.open(remote, os.O_WRONLY)
        try:
            for off in damaged:
                os.pwrite(fd, b"\xde\xad" * 256, off + 1024)
        finally:
            os.close(fd)
        report = run_verify(site, region_bytes=REGION, repair=True)
        assert report["state"] == "done" and report["repaired"], report
        wait_for(lambda: pair.rx_status()["volumes"][str(site.uuid)]["state"] == "consistent",
                 20, "the DR to be consistent after the repair")

        # After a flush (the overlay reaches the mirror file) the DR must equal what the
        # host reads: a repair that shipped the older mirror bytes left the DR without
        # writes whose records it had already acknowledged, and nothing sends them again.
        # (No new write over those regions: it would hide what the repair shipped.)
        vol.flush()
        dr_applied_everything(pair, site, vol)
        image = host_image(vol)
        assert site.mirror.read_bytes() == image
        try:
            wait_for(lambda: remote.read_bytes() == image, 10,
                     "the DR mirror to equal what the host reads")
        except AssertionError:
            dr = remote.read_bytes()
            bad = sorted({o // REGION for o in range(0, len(image), BS)
                          if dr[o:o + BS] != image[o:o + BS]})
            raise AssertionError(f"after the repair the DR differs from the host in regions "
                                 f"{bad} (verify reported {report['differing']})") from None
        assert report["differing"] == damaged, report
        assert run_verify(site, region_bytes=REGION, repair=False)["differing"] == []
    finally:
        vol.close()
