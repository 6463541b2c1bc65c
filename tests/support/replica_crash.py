"""A DR replica dropped as kill -9 would leave it: its files closed without a sync or a flush,
and the writer's lock on its mirror released by the kernel (volume/mirror_lock.py)."""

from __future__ import annotations

from appliance.replication.dr.replica import Replica


def crash(r: Replica) -> None:
    if r.journal is not None:
        r.journal._io.close()
        r._acker.close()
    r._mirror.close()
    if r._mirror_lock is not None:
        r._mirror_lock.close()
