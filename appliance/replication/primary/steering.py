"""The admin's steering of a running transmitter (its control socket; the targetcli shell calls
these): pause/resume of shipping, live pacing settings, a full resync, and the discard of the
records queued for the peer. The pieces here are what they need beside the session: the live
pacing values, the validation of ``set``, the one writer of the bitmap's request slot, and the
persisted record of a discard.

Discard (docs/protocol.md, "Steering the transmitter"): the records the peer has not
acknowledged are dropped without losing a write. Their chunks are first marked dirty in the
bitmap, durably (a mark request, as for a full copy: the writer then logs to the bitmap from
its ``overflow_seq`` S on, journaling nothing more), then the journal's acknowledged seq is
moved to S, which lets the writer reclaim their space. The peer still needs a gapless seq
stream (it refuses a jump outside a full copy, and a first seq beyond its journal), so
``DiscardState`` (``<bitmap>.discard.json``, written before the acknowledgement) remembers the
discarded seqs: the next HELLO offers them, and inside the resync that ships the dirty chunks
(the peer inconsistent, its undo log on) each discarded seq travels as a one-block UNMAP
*placeholder* inside a chunk that is dirty, so the region shipped after it overwrites it. The
file goes once that resync has ended with the peer holding S.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance import storage
from appliance.config_file import ConfigError, Where
from appliance.control.server import CommandError
from appliance.replication.config import _window, in_window
from appliance.replication.link import TokenBucket
from appliance.statefile import write_json_atomic
from appliance.volume import bitmap_format as fmt
from appliance.volume.resync import ResyncSnapshot, ResyncSource

SETTINGS = ("bandwidth_limit", "blackout")


# --- pacing, applied live ------------------------------------------------------------------


class LiveLimiter:
    """The link's bandwidth limit (``FrameLink``'s limiter), changeable while the link is up:
    ``None`` ships unthrottled."""

    def __init__(self, rate: float | None) -> None:
        self.set_rate(rate)

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        self._bucket = TokenBucket(rate) if rate else None

    async def take(self, nbytes: int) -> None:
        if self._bucket is not None:
            await self._bucket.take(nbytes)


class Pacing:
    """Bandwidth limit and blackout windows in effect (from the config, then ``set``)."""

    def __init__(self, bandwidth_limit: float | None,
                 blackout: list[tuple[dt.time, dt.time]]) -> None:
        self.limiter = LiveLimiter(bandwidth_limit)
        self.blackout = list(blackout)

    @property
    def bandwidth_limit(self) -> float | None:
        return self.limiter.rate

    def in_blackout(self, now: dt.time | None = None) -> bool:
        return bool(self.blackout) and in_window(now or dt.datetime.now().time(), self.blackout)

    def batch_bytes(self, configured: int) -> int:
        """On a thin link smaller batches keep the flow (and the token bucket) smooth."""
        limit = self.bandwidth_limit
        return configured if limit is None else min(configured, max(64 * 1024, int(limit / 8)))

    def apply(self, settings: dict) -> None:
        """``settings`` as ``parse_settings`` returns them."""
        if "bandwidth_limit" in settings:
            self.limiter.set_rate(settings["bandwidth_limit"])
        if "blackout" in settings:
            self.blackout = settings["blackout"]

    def as_dict(self) -> dict:
        return {"bandwidth_limit": self.bandwidth_limit,
                "blackout": [window_text(w) for w in self.blackout]}


def window_text(window: tuple[dt.time, dt.time]) -> str:
    return "{}-{}".format(*(t.strftime("%H:%M:%S" if t.second else "%H:%M") for t in window))


def parse_settings(args: dict) -> dict:
    """The ``set`` command's arguments, checked with the configuration file's own rules:
    {"bandwidth_limit": positive number (bytes/s) or null, "blackout": ["08:00-18:00", ...]}.
    Raises CommandError naming the key and saying nothing changed."""
    unknown = sorted(set(args) - set(SETTINGS))
    if unknown:
        raise CommandError(f"set takes {' and '.join(SETTINGS)}; unknown: {', '.join(unknown)} "
                           f"(nothing changed)")
    if not args:
        raise CommandError(f"set needs at least one of {', '.join(SETTINGS)} (nothing changed)")
    where = Where("set")
    out: dict = {}
    try:
        if "bandwidth_limit" in args:
            limit = args["bandwidth_limit"]
            if limit is not None and (isinstance(limit, bool)
                                      or not isinstance(limit, int | float)):
                raise where.error("bandwidth_limit", f"must be a number of bytes/s or null (no "
                                                     f"limit), got {limit!r}")
            if limit is not None and not limit > 0:
                raise where.error("bandwidth_limit", f"must be positive bytes/s, got {limit}")
            out["bandwidth_limit"] = float(limit) if limit is not None else None
        if "blackout" in args:
            windows = args["blackout"]
            if not isinstance(windows, list) or not all(isinstance(w, str) for w in windows):
                raise where.error("blackout", f"must be a list of windows like "
                                              f"['08:00-18:00'], got {windows!r}")
            out["blackout"] = [_window(w, where) for w in windows]
    except ConfigError as err:
        raise CommandError(f"{err} (nothing changed)") from err
    return out


# --- the bitmap's request slot -------------------------------------------------------------


class BitmapRequests(ResyncSource):
    """The transmitter's only writer of the bitmap's request slot (clear requests of the
    resync, mark requests of a full copy, ``resync`` and ``discard``), shared by its sessions
    and control commands. The slot holds one request: a newer one replaces one the writer
    has not handled. So a mark request holds the lock until the writer has handled it (a
    mark must never be lost); a clear replaced by a mark only leaves chunks dirty, to be
    shipped again."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._io = storage.open_file(self.path)
        try:
            super().__init__(self._io)
        except BaseException:
            self._io.close()
            raise
        self._lock = threading.Lock()

    def request_clear(self, snap: ResyncSnapshot, runs: Sequence[tuple[int, int]]) -> int:
        with self._lock:
            return super().request_clear(snap, runs)

    def request_mark_all(self) -> int:
        with self._lock:
            return super().request_mark_all()

    def mark_all(self, *, timeout: float) -> None:
        """Every chunk dirty, durably, when this returns (TimeoutError if the writer did not
        handle the request in time)."""
        with self._lock:
            self.wait_processed(super().request_mark_all(), timeout=timeout)

    def mark(self, runs: Sequence[tuple[int, int]], *, timeout: float) -> None:
        """These chunk runs dirty, durably, when this returns (the writer enters
        logging-to-bitmap if it journals). Several requests when the runs do not fit one."""
        step = fmt.MAX_REQUEST_RANGES
        with self._lock:
            for i in range(0, len(runs), step):
                self._last_id += 1
                req = fmt.BitmapRequest(self._last_id, self.header().incarnation, self._last_id,
                                        0, tuple(runs[i:i + step]), mark=True)
                self._write_request(req)
                self.wait_processed(self._last_id, timeout=timeout)


def chunk_runs(extents: Iterable[tuple[int, int]], block_size: int, chunk_size: int,
               num_chunks: int) -> list[tuple[int, int]]:
    """(first chunk, count) runs, in order and merged, covering (lba, nblocks) extents."""
    spans = []
    for lba, nblocks in extents:
        first = lba * block_size // chunk_size
        last = min(((lba + max(nblocks, 1)) * block_size - 1) // chunk_size, num_chunks - 1)
        if first <= last:
            spans.append((first, last))
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][0] + out[-1][1]:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][1], last - start + 1))
        else:
            out.append((first, last - first + 1))
    return out


# --- a discard, persisted -----------------------------------------------------------------


@dataclass(frozen=True)
class DiscardState:
    """Seqs ``from_seq``..``to_seq`` were dropped from the journal (their chunks are dirty);
    the peer may still lack them, and gets placeholders inside the resync."""

    from_seq: int
    to_seq: int
    records: int            # records dropped (all discards since the last resync)
    bytes: int              # journal bytes they held
    at: float               # when (epoch seconds) the last discard happened

    @staticmethod
    def path_for(bitmap: str | Path) -> Path:
        bitmap = Path(bitmap)
        return bitmap.with_name(bitmap.name + ".discard.json")

    @classmethod
    def load(cls, bitmap: str | Path) -> DiscardState | None:
        path = cls.path_for(bitmap)
        try:
            doc = json.loads(path.read_text())
            return cls(int(doc["from_seq"]), int(doc["to_seq"]), int(doc["records"]),
                       int(doc["bytes"]), float(doc["at"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            # Written atomically by us: a damaged or hand-edited file.
            raise ValueError(f"{path} does not say which records were discarded ({err}); "
                             f"restore it or run 'appliance-dr invalidate' on the DR so the "
                             f"next contact is a full copy") from err

    def save(self, bitmap: str | Path) -> None:
        write_json_atomic(self.path_for(bitmap), asdict(self))

    @classmethod
    def remove(cls, bitmap: str | Path) -> None:
        cls.path_for(bitmap).unlink(missing_ok=True)

    def merged(self, later: DiscardState) -> DiscardState:
        """A second discard before the resync shipped the first."""
        return DiscardState(min(self.from_seq, later.from_seq), max(self.to_seq, later.to_seq),
                            self.records + later.records, self.bytes + later.bytes, later.at)

    def as_dict(self) -> dict:
        return asdict(self)
