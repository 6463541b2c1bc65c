"""Retention log of a DR replica: before-images kept so that any point of a window can be
recovered (docs/failover.md, "Point in time").

Before the replica writes a run of records to its mirror, the old contents of every range a
record overwrites are appended here with the record's seq and the primary's timestamp, and
the log is made durable (one fdatasync per run); only then is the mirror written: the rule
of the undo log (``undo.py``), so a crash never leaves a mirror write whose before-image is
lost. Writing the before-images of seqs ``> p``, newest first, over a copy of the mirror
gives exactly the primary's image after seq ``p``: each block gets back what it held before
the first record after ``p`` that touched it, and a block no such record touched already
holds it.

A record's before-image is what the mirror holds after every earlier record: records of one
run are read from the mirror before any of them is applied, so where a record overlaps an
earlier record of the same run, the earlier record's bytes are laid over what was read.

Files: ``<dir>/<first seq, 20 digits>.seg``, one per segment, so that pruning the oldest
points is an unlink. A segment starts with a header naming its base point (the seq and
primary timestamp of the image just before its first entry: for a later segment, the last
record of the previous one), then entries:

    header  magic "DRRS" | u32 version | u64 base_seq | u64 base_ts_ns | u32 crc32c | u32 0
    entry   magic "DRRE" | u32 flags | u64 seq | u64 ts_ns | u64 offset | u32 length |
            u32 crc32c(the entry's fields before it, then the data) | data

A record may take several entries (large ones are cut in pieces); flag 1 marks its last. At
open, a segment's torn tail (a crash while saving: its mirror write never started) is cut
back to the last whole record. ``base_ts_ns`` 0 means unknown (a window started just after a
restart, before any record was applied).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.checksum import crc32c
from appliance.replication.wire import KIND_UNMAP, KIND_WRITE, KIND_WRITE_SAME, WireRecord
from appliance.storage import sync_dir

log = logging.getLogger(__name__)

VERSION = 1
_HEADER = struct.Struct("<4sIQQII")
_ENTRY = struct.Struct("<4sIQQQII")
_SEG_MAGIC = b"DRRS"
_ENTRY_MAGIC = b"DRRE"
LAST_PIECE = 1
PIECE_BYTES = 8 << 20           # a record's before-image is read and saved in pieces of this
SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 1 << 20
SEGMENTS_PER_WINDOW = 16        # the window is pruned in steps of about 1/16 of it


class Mirror(Protocol):
    def pread_into(self, offset: int, buf: memoryview) -> None: ...


class Image(Protocol):
    def pwritev(self, offset: int, bufs: list[bytes | memoryview]) -> None: ...


class RetentionError(ValueError):
    """A point that cannot be recovered; the message says what can."""


@dataclass(frozen=True, slots=True)
class Point:
    """An image of the primary: after the write of ``seq``, stamped ``ts_ns`` (0: unknown)."""

    seq: int
    ts_ns: int

    def as_dict(self) -> dict:
        return {"seq": self.seq, "time": self.ts_ns / 1e9 if self.ts_ns else None,
                "time_utc": iso_time(self.ts_ns) if self.ts_ns else None}


@dataclass(slots=True)
class _Segment:
    path: Path
    base: Point
    size: int
    started: float          # time.monotonic() when it was created (or opened)


@dataclass(frozen=True, slots=True)
class _EntryRef:
    seq: int
    ts_ns: int
    offset: int
    length: int
    pos: int                # of the data in its segment file
    flags: int
    crc: int

    def matches(self, data: bytes) -> bool:
        fields = _ENTRY.pack(_ENTRY_MAGIC, self.flags, self.seq, self.ts_ns, self.offset,
                             self.length, 0)[:-4]
        return len(data) == self.length and crc32c(fields + data) == self.crc


def segment_bytes_for(retain_bytes: int) -> int:
    """Segments small enough that pruning one keeps the window within ~1/16 of its cap."""
    if not retain_bytes:
        return DEFAULT_SEGMENT_BYTES
    return max(MIN_SEGMENT_BYTES, min(DEFAULT_SEGMENT_BYTES,
                                      retain_bytes // SEGMENTS_PER_WINDOW))


class RetentionLog:
    """The before-images of one replica's mirror (one writer thread: the applier; readers
    take a snapshot of the files under the lock and read without it)."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 roll_after_s: float = 0.0) -> None:
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.roll_after_s = roll_after_s        # 0: roll by size only
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._newest: Point | None = None
        self._fd = -1                            # the newest segment, open for appending
        self._pending = False
        self._pins: list[int] = []
        self.epoch = 0                           # raised whenever the log starts anew
        self._open()

    # --- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        if not self.dir.is_dir():
            return
        paths = sorted(p for p in self.dir.iterdir() if p.name.endswith(SUFFIX))
        for path in paths:
            base = _read_header(path)
            if base is None:          # a segment whose header never became durable
                log.warning("retention log %s: dropping %s (no valid header)", self.dir, path)
                path.unlink()
                continue
            self._segments.append(_Segment(path, base, path.stat().st_size, time.monotonic()))
        if not self._segments:
            return
        last = self._segments[-1]
        newest, end = last.base, _HEADER.size
        for ref, is_last, entry_end in _scan(last.path, last.path.stat().st_size,
                                              verify=True):
            if is_last:
                newest, end = Point(ref.seq, ref.ts_ns), entry_end
        if end != last.size:          # a torn record: its mirror write never started
            log.warning("retention log %s: cutting a torn record off %s (%d -> %d bytes)",
                        self.dir, last.path, last.size, end)
            os.truncate(last.path, end)
            last.size = end
        self._newest = newest
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # --- the window -------------------------------------------------------------------

    @property
    def oldest(self) -> Point | None:
        with self._lock:
            return self._segments[0].base if self._segments else None

    @property
    def newest(self) -> Point | None:
        with self._lock:
            return self._newest

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def summary(self) -> dict:
        with self._lock:
            return {"bytes": sum(s.size for s in self._segments),
                    "segments": len(self._segments),
                    "oldest": self._segments[0].base.as_dict() if self._segments else None,
                    "newest": None if self._newest is None else self._newest.as_dict()}

    def follow(self, applied: Point) -> None:
        """Make the log continue the mirror at ``applied``: start it anew there unless it
        already covers that point (after a crash it may hold a little more: the redo)."""
        with self._lock:
            newest = self._newest
            if (newest is not None and self._segments and
                    self._segments[0].base.seq <= applied.seq <= newest.seq):
                return
        if newest is not None:
            log.warning("retention log %s: it ended at seq %d, the mirror is at seq %d: the "
                        "window starts anew there", self.dir, newest.seq, applied.seq)
        self.start(applied)

    def start(self, base: Point) -> None:
        """Forget every retained point and start a window at ``base``."""
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._new_segment(base)

    def clear(self) -> None:
        """Forget every retained point (a resync, a resize: the mirror changes outside the
        records), and remove the files."""
        with self._lock:
            self._close_fd()
            for seg in self._segments:
                seg.path.unlink(missing_ok=True)
            had = bool(self._segments)
            self._segments, self._newest = [], None
            self.epoch += 1
        if had and self.dir.is_dir():
            sync_dir(self.dir)

    def _new_segment(self, base: Point) -> None:
        """(Locked.) A new newest segment, durable with its header before any entry."""
        path = self.dir / f"{base.seq + 1:020d}{SUFFIX}"
        header = _pack_header(base)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, header)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        sync_dir(self.dir)
        self._close_fd()
        self._fd = fd
        self._segments.append(_Segment(path, base, len(header), time.monotonic()))
        self._newest = base

    # --- saving (the applier) ----------------------------------------------------------

    def save(self, mirror: Mirror, run: list[WireRecord], block_size: int) -> int:
        """Append the before-images of the run's records not saved yet (not synced: call
        ``sync`` before the mirror is written). Returns the bytes of data saved. The old
        contents are read without the lock (readers such as ``status`` never wait for the
        disk); each entry is appended under it."""
        with self._lock:
            if self._newest is None:
                raise RetentionError(f"retention log {self.dir} has no window (follow first)")
            newest = self._newest
        saved = 0
        for rec, offset, data, is_last in _before_images(mirror, run, block_size, newest.seq):
            first = offset == rec.lba * block_size
            if first and rec.seq != newest.seq + 1:
                raise RetentionError(f"retention log {self.dir}: record {rec.seq} does not "
                                     f"follow seq {newest.seq}")
            fields = _ENTRY.pack(_ENTRY_MAGIC, LAST_PIECE if is_last else 0, rec.seq,
                                 rec.timestamp_ns, offset, len(data), 0)[:-4]
            crc = struct.pack("<I", crc32c(fields + data))
            with self._lock:
                self._maybe_roll(first)
                wrote = os.writev(self._fd, [fields, crc, data])
                if wrote != _ENTRY.size + len(data):   # (a full disk): never half an entry
                    os.ftruncate(self._fd, self._segments[-1].size)
                    raise OSError(errno.ENOSPC, f"retention log {self._segments[-1].path}: "
                                                f"short write ({wrote} bytes)")
                self._segments[-1].size += _ENTRY.size + len(data)
                self._pending = True
                if is_last:
                    newest = self._newest = Point(rec.seq, rec.timestamp_ns)
            saved += len(data)
        return saved

    def _maybe_roll(self, record_start: bool) -> None:
        """(Locked.) A new segment at a record's start once this one is full or old."""
        seg = self._segments[-1]
        if not record_start or seg.size <= _HEADER.size:
            return
        old = self.roll_after_s and time.monotonic() - seg.started >= self.roll_after_s
        if seg.size >= self.segment_bytes or old:
            if self._pending:
                os.fdatasync(self._fd)
                self._pending = False
            assert self._newest is not None
            self._new_segment(self._newest)

    def sync(self) -> None:
        with self._lock:
            if self._pending and self._fd >= 0:
                os.fdatasync(self._fd)
                self._pending = False

    # --- pruning ------------------------------------------------------------------------

    def prune(self, *, retain_s: float, retain_bytes: int, now_ns: int | None = None) -> int:
        """Drop the oldest segments while the log is larger than ``retain_bytes`` or the
        next segment's base is still at or before the start of the ``retain_s`` window (so
        every point of the window stays recoverable); never the newest segment, never one a
        recovery under way needs. Returns the segments removed."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        removed = 0
        with self._lock:
            while len(self._segments) > 1:
                nxt = self._segments[1]
                if self._pins and nxt.base.seq > min(self._pins):
                    break
                too_big = retain_bytes > 0 and sum(s.size for s in self._segments) > retain_bytes
                too_old = (retain_s > 0 and 0 < nxt.base.ts_ns
                           <= now_ns - int(retain_s * 1e9))
                if not (too_big or too_old):
                    break
                self._segments.pop(0).path.unlink(missing_ok=True)
                removed += 1
        if removed:
            sync_dir(self.dir)
        return removed

    @contextlib.contextmanager
    def pinned(self, seq: int) -> Iterator[None]:
        """Keep every before-image of seqs above ``seq`` while the body runs."""
        with self._lock:
            self._pins.append(seq)
        try:
            yield
        finally:
            with self._lock:
                self._pins.remove(seq)

    # --- reading (recovery) --------------------------------------------------------------

    def _snapshot(self) -> list[tuple[Path, Point, int]]:
        with self._lock:
            return [(s.path, s.base, s.size) for s in self._segments]

    def point_at(self, *, seq: int | None = None, ts_ns: int | None = None,
                 newest: Point) -> Point:
        """The point to recover: ``seq``, or the image after the last record stamped at or
        before ``ts_ns`` (the one before the first record stamped after it), within the
        window up to ``newest`` (the mirror's applied point). RetentionError with the
        recoverable range otherwise."""
        segs = self._snapshot()
        if not segs:
            raise RetentionError("no point is recoverable: the retention window is empty "
                                 "(retention is off, or it restarted after a resync)")
        oldest = segs[0][1]
        where = f"recoverable: {describe_range(oldest, newest)}"
        if seq is not None:
            if not oldest.seq <= seq <= newest.seq:
                raise RetentionError(f"seq {seq} is outside the retention window; {where}")
            if seq == oldest.seq:
                return oldest
            if seq == newest.seq and newest.ts_ns:
                return newest
            for ref in self._refs(segs, after=seq - 1, upto=seq):
                return Point(ref.seq, ref.ts_ns)
            raise RetentionError(f"seq {seq} is not in the retention log; {where}")
        assert ts_ns is not None
        if oldest.ts_ns and ts_ns < oldest.ts_ns:
            raise RetentionError(f"{iso_time(ts_ns)} is before the retention window; {where}")
        found = oldest
        for i, (path, _, size) in enumerate(segs):
            nxt = segs[i + 1][1] if i + 1 < len(segs) else None
            if nxt is not None and nxt.ts_ns and nxt.ts_ns <= ts_ns:
                found = nxt     # (timestamps follow the seqs: the whole segment is before)
                continue
            for ref, _, _ in _scan(path, size):
                if ref.seq <= found.seq:
                    continue    # a further piece of the record just seen
                if ref.seq > newest.seq or ref.ts_ns > ts_ns:
                    break
                found = Point(ref.seq, ref.ts_ns)
            break
        if found.seq > newest.seq:
            found = newest
        if found.seq == oldest.seq and not oldest.ts_ns:
            raise RetentionError(f"the time of the oldest point (seq {oldest.seq}) is unknown "
                                 f"and no record of the window is stamped at or before "
                                 f"{iso_time(ts_ns)}; {where}")
        return found

    def _refs(self, segs: list[tuple[Path, Point, int]], *, after: int,
              upto: int) -> Iterator[_EntryRef]:
        """Whole records' first entries with after < seq <= upto, oldest first."""
        seen = after
        for i, (path, base, size) in enumerate(segs):
            nxt = segs[i + 1][1] if i + 1 < len(segs) else None
            if nxt is not None and nxt.seq <= after:
                continue
            if base.seq >= upto:
                return
            for ref, _, _ in _scan(path, size):
                if ref.seq > upto:
                    return
                if ref.seq > seen:
                    seen = ref.seq
                    yield ref

    def roll_back(self, image: Image, *, to_seq: int, from_seq: int) -> int:
        """Write the before-images of seqs in (to_seq, from_seq] over ``image`` (a copy of
        the mirror taken while it was at or below ``from_seq``), newest first. Returns the
        bytes written. The caller pins ``to_seq`` for as long as this runs."""
        segs = self._snapshot()
        if not segs or segs[0][1].seq > to_seq:
            raise RetentionError(f"seq {to_seq} is no longer in the retention window")
        written = 0
        for i in range(len(segs) - 1, -1, -1):
            path, base, size = segs[i]
            if base.seq >= from_seq:
                continue
            refs = [ref for ref, _, _ in _scan(path, size) if to_seq < ref.seq <= from_seq]
            if refs:
                with open(path, "rb") as f:
                    for ref in reversed(refs):
                        data = os.pread(f.fileno(), ref.length, ref.pos)
                        if not ref.matches(data):
                            raise RetentionError(f"{path}: the before-image of seq {ref.seq} "
                                                 f"at offset {ref.offset} is damaged")
                        image.pwritev(ref.offset, [data])
                        written += ref.length
            if base.seq <= to_seq:
                break
        return written

    # --- closing ------------------------------------------------------------------------

    def _close_fd(self) -> None:
        if self._fd >= 0:
            if self._pending:
                os.fdatasync(self._fd)
                self._pending = False
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def remove(self) -> None:
        """Retention turned off: no window, no files."""
        self.clear()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def describe_range(oldest: Point, newest: Point) -> str:
    return (f"seq {oldest.seq} ({iso_time(oldest.ts_ns)}) to seq {newest.seq} "
            f"({iso_time(newest.ts_ns)})")


def iso_time(ts_ns: int | None) -> str:
    """A primary timestamp as UTC ISO 8601, rounded up to the microsecond: recovering at the
    time shown for a point gives that point (unless the next write is within the same
    microsecond)."""
    if not ts_ns:
        return "time unknown"
    whole, frac = divmod(-(-ts_ns // 1000) * 1000, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac // 1000:06d}Z"


def read_summary(directory: Path) -> dict | None:
    """The window as the files say, for a replica that is not open (``appliance-dr state``):
    None when there are none."""
    if not Path(directory).is_dir():
        return None
    paths = sorted(p for p in Path(directory).iterdir() if p.name.endswith(SUFFIX))
    segs = [(p, b) for p in paths if (b := _read_header(p)) is not None]
    if not segs:
        return None
    newest = segs[-1][1]
    for ref, is_last, _ in _scan(segs[-1][0], segs[-1][0].stat().st_size, verify=True):
        if is_last:
            newest = Point(ref.seq, ref.ts_ns)
    return {"bytes": sum(p.stat().st_size for p, _ in segs), "segments": len(segs),
            "oldest": segs[0][1].as_dict(), "newest": newest.as_dict()}


# --- the format -----------------------------------------------------------------------------

def _pack_header(base: Point) -> bytes:
    fields = _HEADER.pack(_SEG_MAGIC, VERSION, base.seq, base.ts_ns, 0, 0)[:-8]
    return fields + struct.pack("<II", crc32c(fields), 0)


def _read_header(path: Path) -> Point | None:
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
    if len(raw) != _HEADER.size:
        return None
    magic, version, base_seq, base_ts, crc, _ = _HEADER.unpack(raw)
    if magic != _SEG_MAGIC or crc32c(raw[:-8]) != crc:
        return None
    if version != VERSION:
        raise RetentionError(f"{path}: retention segment version {version}; this release "
                             f"reads {VERSION}")
    return Point(base_seq, base_ts)


def _scan(path: Path, size: int, *, verify: bool = False
          ) -> Iterator[tuple[_EntryRef, bool, int]]:
    """Entries of a segment up to ``size`` bytes, in order: (ref, last piece of its record,
    end of the entry). Stops at the first torn or damaged one; with ``verify`` the data is
    read and checked too (else only the entry headers are read)."""
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = _HEADER.size
        while pos + _ENTRY.size <= size:
            raw = os.pread(fd, _ENTRY.size, pos)
            if len(raw) != _ENTRY.size:
                return
            magic, flags, seq, ts, offset, length, crc = _ENTRY.unpack(raw)
            end = pos + _ENTRY.size + length
            if magic != _ENTRY_MAGIC or end > size:
                return
            ref = _EntryRef(seq, ts, offset, length, pos + _ENTRY.size, flags, crc)
            if verify and not ref.matches(os.pread(fd, length, ref.pos)):
                return
            yield ref, bool(flags & LAST_PIECE), end
            pos = end


def entries(directory: Path) -> Iterator[tuple[int, int, int, bytes, bool]]:
    """Every valid entry of every segment, oldest first: (seq, ts_ns, offset, data, last
    piece) (for tests and tools)."""
    for path in sorted(p for p in Path(directory).iterdir() if p.name.endswith(SUFFIX)):
        if _read_header(path) is None:
            continue
        with open(path, "rb") as f:
            for ref, last, _ in _scan(path, path.stat().st_size, verify=True):
                yield ref.seq, ref.ts_ns, ref.offset, os.pread(f.fileno(), ref.length,
                                                                 ref.pos), last


# --- before-images ---------------------------------------------------------------------------

def _before_images(mirror: Mirror, run: list[WireRecord], block_size: int,
                   skip_to: int) -> Iterator[tuple[WireRecord, int, bytes, bool]]:
    """(record, offset, old contents, last piece) for the run's records above ``skip_to``:
    the mirror's contents, with the bytes of earlier records of the run laid over them
    (the mirror does not hold those yet)."""
    _read_ahead(mirror, [rec for rec in run if rec.seq > skip_to], block_size)
    touched: set[int] = set()
    earlier: list[WireRecord] = []
    for rec in run:
        blocks = range(rec.lba, rec.lba + rec.nblocks)
        overlaps = not touched.isdisjoint(blocks)
        if rec.seq > skip_to:
            start, length = rec.lba * block_size, rec.nblocks * block_size
            for rel in range(0, length, PIECE_BYTES):
                n = min(PIECE_BYTES, length - rel)
                buf = bytearray(n)
                mirror.pread_into(start + rel, memoryview(buf))
                if overlaps:
                    _lay_over(buf, start + rel, earlier, block_size)
                yield rec, start + rel, bytes(buf), rel + n == length
        touched.update(blocks)
        earlier.append(rec)


def _read_ahead(mirror: Mirror, records: list[WireRecord], block_size: int) -> None:
    """Ask the kernel for every range the batch overwrites at once, so that the disk reads
    them in parallel rather than one random read after another (bench/retention: 2 to 4
    times the apply rate of 4 KiB random writes whose old contents are not cached)."""
    fileno = getattr(mirror, "fileno", None)
    if fileno is None or len(records) < 2:
        return
    fd = fileno()
    for rec in records:
        os.posix_fadvise(fd, rec.lba * block_size, rec.nblocks * block_size,
                         os.POSIX_FADV_WILLNEED)


def _lay_over(buf: bytearray, at: int, records: list[WireRecord], block_size: int) -> None:
    end = at + len(buf)
    for rec in records:
        r_start = rec.lba * block_size
        r_end = r_start + rec.nblocks * block_size
        lo, hi = max(at, r_start), min(end, r_end)
        if lo < hi:
            buf[lo - at:hi - at] = record_bytes(rec, block_size, lo - r_start, hi - lo)


def record_bytes(rec: WireRecord, block_size: int, rel: int, n: int) -> bytes:
    """The ``n`` bytes a record leaves on the volume from ``rel`` bytes into its extent."""
    if rec.kind == KIND_WRITE:
        return bytes(rec.data[rel:rel + n])
    if rec.kind == KIND_WRITE_SAME:
        skew = rel % block_size
        reps = -(-(skew + n) // block_size)
        return (bytes(rec.data) * reps)[skew:skew + n]
    if rec.kind == KIND_UNMAP:
        return bytes(n)
    raise ValueError(f"record {rec.seq}: unknown kind {rec.kind}")
