"""Online verify: compare the primary and DR mirrors region by region by hash, while
replication runs.

For a window of regions the transmitter reads the primary's image as the host sees it at a
journal head ``H`` (the mirror file with the journal's records above the mirror checkpoint
applied over it: with the write cache on, the file lacks writes the handler still caches and
the peer already holds; ``host_view.py``), waits until the peer has acknowledged everything up
to ``H`` (so those records were sent before the HASHES frame and the peer applies them before
comparing), then sends the hashes. Writes that race with the check can make a region look different for a moment, so a
differing region is checked again (up to ``rechecks`` times); only regions that differ every
time are reported. With ``repair`` they are then shipped through the resync path (the DR says
``inconsistent`` and keeps undo data until the repair has been applied).
"""

from __future__ import annotations

import asyncio
import logging
import time

from appliance.replication.digest import region_digest
from appliance.replication.link import run_blocking
from appliance.replication.primary.progress import VerifyReport
from appliance.replication.primary.resync import WINDOW, ResyncDriver

log = logging.getLogger("appliance.transmitter")


async def verify(driver: ResyncDriver, report: VerifyReport, *, region_bytes: int,
                 repair: bool, rechecks: int = 3) -> None:
    """Run one verify pass over the whole volume inside a connected session: the resync
    driver reads the primary mirror, compares hashes with the peer and ships repairs."""
    size = driver.shared.volume_bytes
    regions = [(offset, min(region_bytes, size - offset))
               for offset in range(0, size, region_bytes)]
    report.state, report.started, report.finished = "running", time.time(), None
    report.region_bytes, report.regions_total = region_bytes, len(regions)
    report.regions_checked = 0
    report.differing, report.repaired, report.error = [], False, None
    suspects = regions
    for attempt in range(rechecks):
        still = []
        for i in range(0, len(suspects), WINDOW):
            window = suspects[i : i + WINDOW]
            still += await _check_window(driver, window)
            if attempt == 0:
                report.regions_checked += len(window)
        suspects = still
        if not suspects:
            break
        await asyncio.sleep(0.2 * (attempt + 1))   # let racing writes reach the peer
    report.differing = [o for o, _ in suspects]
    if suspects:
        log.warning("volume %s: verify found %d differing region(s) of %d bytes: %s",
                    driver.cfg.volume_uuid, len(suspects), region_bytes, report.differing[:20])
        if repair:
            await driver.repair(suspects)
            report.repaired = True
    else:
        log.info("volume %s: verify found the DR mirror identical", driver.cfg.volume_uuid)
    report.state, report.finished = "done", time.time()


async def _check_window(driver: ResyncDriver, window: list[tuple[int, int]]
                        ) -> list[tuple[int, int]]:
    # The image the host reads at head H, cached writes included (host_view.py): the mirror
    # file alone lacks those the handler holds in its overlay, which the peer has applied.
    datas, head = await run_blocking(lambda: driver.read_regions(window))
    # Records <= head are ahead of the hashes once the peer has them durable. The peer's ACK
    # as it arrives, not the journal's acknowledged seq, which is saved at most every 50 ms:
    # every wait lets more records above head reach the peer before the hashes, each one a
    # chance for a region to look different (a clean pair reported one differing region
    # three checks in a row under CI load).
    session = driver.control
    while session.peer_durable < head:
        await asyncio.sleep(0.01)
    hashes = [(offset, length, region_digest(data))
              for (offset, length), data in zip(window, datas, strict=True)]
    differing = await driver.compare(hashes)
    return [window[j] for j in differing]
