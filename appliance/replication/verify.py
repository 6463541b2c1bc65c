"""Online verify: compare the primary and DR mirrors region by region by hash, while
replication runs.

For a window of regions the transmitter reads the primary mirror, notes the journal head ``H``
afterwards, waits until the peer has acknowledged everything up to ``H`` (so those records were
sent before the HASHES frame and the peer applies them before comparing), then sends the
hashes. Writes that race with the check can make a region look different for a moment, so a
differing region is checked again (up to ``rechecks`` times); only regions that differ every
time are reported. With ``repair`` they are then shipped through the resync path (the DR says
``inconsistent`` and keeps undo data until the repair has been applied).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.replication.link import run_blocking
from appliance.replication.resync import WINDOW, digest

if TYPE_CHECKING:
    from appliance.replication.tx_session import TxSession

log = logging.getLogger("appliance.transmitter")


@dataclass
class VerifyReport:
    state: str = "never-run"         # never-run | running | done | failed
    started: float | None = None
    finished: float | None = None
    region_bytes: int = 0
    regions_total: int = 0
    regions_checked: int = 0
    differing: list[int] = field(default_factory=list)   # byte offsets
    repaired: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return {**self.__dict__, "differing": list(self.differing)}


async def verify(session: TxSession, report: VerifyReport, *, region_bytes: int,
                 repair: bool, rechecks: int = 3) -> None:
    """Run one verify pass over the whole volume inside a connected session."""
    s = session
    driver = s.resync
    if driver is None:
        raise RuntimeError("verify needs the primary mirror: set 'mirror' and 'bitmap'")
    size = s.tx.volume_bytes
    regions = [(o, min(region_bytes, size - o)) for o in range(0, size, region_bytes)]
    report.state, report.started, report.finished = "running", time.time(), None
    report.region_bytes, report.regions_total, report.regions_checked = region_bytes, \
        len(regions), 0
    report.differing, report.repaired, report.error = [], False, None
    suspects = regions
    for attempt in range(rechecks):
        still = []
        for i in range(0, len(suspects), WINDOW):
            window = suspects[i : i + WINDOW]
            still += await _check_window(s, driver, window)
            if attempt == 0:
                report.regions_checked += len(window)
        suspects = still
        if not suspects:
            break
        await asyncio.sleep(0.2 * (attempt + 1))   # let racing writes reach the peer
    report.differing = [o for o, _ in suspects]
    if suspects:
        log.warning("volume %s: verify found %d differing region(s) of %d bytes: %s",
                    s.cfg.volume_uuid, len(suspects), region_bytes, report.differing[:20])
        if repair:
            await driver.repair(suspects)
            report.repaired = True
    else:
        log.info("volume %s: verify found the DR mirror identical", s.cfg.volume_uuid)
    report.state, report.finished = "done", time.time()


async def _check_window(s: TxSession, driver, window: list[tuple[int, int]]
                        ) -> list[tuple[int, int]]:
    datas = await run_blocking(lambda: [driver.read(o, n) for o, n in window])
    head = await run_blocking(lambda: s.reader.durable_seq - 1)
    while s.reader.acked_seq < head:      # records <= head are ahead of the hashes
        await asyncio.sleep(0.01)
    hashes = [(o, n, digest(d)) for (o, n), d in zip(window, datas, strict=True)]
    differing = await driver.compare(hashes)
    return [window[j] for j in differing]
