"""Recover a point of a replica's retention window as a separate image file, while the
replica goes on applying records (docs/failover.md, "Point in time").

1. Under the apply lock (a moment): the point is resolved in the window (by seq, or the
   last record stamped at or before a time), and pinned, so pruning keeps every
   before-image above it.
2. Without the lock: the mirror is copied to ``recovered-<seq>.img.partial`` by the kernel
   (sendfile) while records keep landing on it, so a block may be copied before or after
   some record wrote it.
3. Under the apply lock (a moment): ``upto`` = the seq the mirror has applied. Every record
   that could have changed the copy is at or below it, and its before-image was durable
   before its mirror write.
4. The before-images of seqs in (point, upto] are written over the copy, newest first.
   Each block a record in that range touched ends with what it held before the first of
   them: the image after the point, whichever version the copy caught. A block none of
   them touched did not change during the copy, so the copy holds it already.

The window starting anew meanwhile (a resync or a resize: the mirror changed outside the
records) is seen by the log's epoch, and the recovery fails rather than produce a wrong
image. The file is fsync'd and renamed to ``recovered-<seq>.img`` only when complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.dr.retention import Point, RetentionError, RetentionLog, iso_time
from appliance.storage import sync_dir
from appliance.volume import group_layout
from appliance.volume.concat_io import open_mirror


class Replica(Protocol):
    """What this module uses of ``replica.Replica`` (which imports this module)."""

    spec: Any
    cfg: Any
    promoted: dict | None
    inconsistent_since: float | None
    journal: Any
    _apply_lock: Any
    _retention: RetentionLog | None

    @property
    def applied_seq(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    def applied_point(self) -> Point: ...

_ISO = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)?",
                  re.IGNORECASE)
AT_HELP = ("give at=seq:<n> (a sequence number) or at=<UTC time> such as "
           "2026-12-07T05:10:00Z (ISO 8601, fractions of a second allowed)")
_COPY_CHUNK = 64 << 20


class _Image:
    """The image file being made (what ``RetentionLog.roll_back`` writes to)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pwritev(self, offset: int, bufs: list[bytes | memoryview]) -> None:
        for buf in bufs:
            view = memoryview(buf)
            while len(view):
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done


def parse_at(text: object) -> tuple[int | None, int | None]:
    """(seq, None) from ``seq:1234``; (None, ns since the epoch) from an ISO 8601 time (no
    zone: UTC). ValueError naming ``at`` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"at={text!r}: {AT_HELP}")
    value = text.strip()
    if value.lower().startswith("seq:"):
        digits = value[4:].strip()
        if not digits.isdigit():
            raise ValueError(f"at={text!r}: the sequence number does not parse; {AT_HELP}")
        return int(digits), None
    m = _ISO.fullmatch(value)
    if not m:
        raise ValueError(f"at={text!r} does not parse; {AT_HELP}")
    zone = m.group(3) or "Z"
    zone = "+00:00" if zone.upper() == "Z" else zone
    try:
        whole = datetime.fromisoformat(m.group(1).replace(" ", "T") + zone)
    except ValueError as err:
        raise ValueError(f"at={text!r}: {err}; {AT_HELP}") from err
    frac = (m.group(2) or "").ljust(9, "0")
    return None, int(whole.timestamp()) * 1_000_000_000 + int(frac or 0)


def recover_image(replica: Replica, at: str, out_dir: Path) -> dict:
    """Write the primary's image at point ``at`` to ``out_dir/recovered-<seq>.img``;
    returns its path, seq and time (and ``next_steps``). ReplicaError when refused."""
    try:
        seq, ts_ns = parse_at(at)
    except ValueError as err:
        raise ReplicaError(str(err)) from err
    vol = replica.spec.uuid
    with replica._apply_lock:
        ret = replica._retention
        if replica.promoted is not None:
            raise ReplicaError(f"volume {vol} is promoted (served as a primary here): its "
                               f"retention window ended at the promotion")
        if ret is None:
            raise ReplicaError(f"volume {vol} keeps no retention window (retention is off): "
                               f"set one first (set-retention; 'set retention retain=24h' in "
                               f"/replication/replicas/<name>)")
        if replica.inconsistent_since is not None or replica.journal is None:
            raise ReplicaError(f"volume {vol} is not a consistent replica now (a resync or "
                               f"full copy is under way, or it was never paired): its window "
                               f"starts anew once it is consistent")
        newest = replica.applied_point()
        if ret.newest is None or ret.newest.seq < newest.seq:
            raise ReplicaError(f"volume {vol}: the retention window starts at the next record "
                               f"applied (seq {newest.seq + 1}); nothing is recoverable yet "
                               f"but the current image")
        try:
            point = ret.point_at(seq=seq, ts_ns=ts_ns, newest=newest)
        except RetentionError as err:
            raise ReplicaError(f"volume {vol}: {err}") from err
        epoch, size = ret.epoch, replica.size_bytes
        pin = ret.pinned(point.seq)
        pin.__enter__()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / f"recovered-{point.seq}.img"
        if final.exists():
            raise ReplicaError(f"{final} exists already (the image after seq {point.seq}, "
                               f"recovered before?): use it, or remove it to recover again")
        partial = final.with_name(final.name + ".partial")
        started = time.monotonic()
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _copy(replica.cfg.paths.mirror, fd, size)
            with replica._apply_lock:
                upto = replica.applied_seq
                _check_window(replica, ret, epoch)
            rolled = ret.roll_back(_Image(fd), to_seq=point.seq, from_seq=upto)
            with replica._apply_lock:
                _check_window(replica, ret, epoch)
            os.ftruncate(fd, size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.chmod(partial, 0o400)        # an image to look at, not to write
        partial.rename(final)
        sync_dir(out_dir)
    except RetentionError as err:
        raise ReplicaError(f"volume {vol}: {err}") from err
    finally:
        pin.__exit__(None, None, None)
    return {"volume": str(vol), "path": str(final), "seq": point.seq,
            "time": point.ts_ns / 1e9 if point.ts_ns else None, "time_utc": iso_time(point.ts_ns),
            "size_bytes": size, "mirror_seq_at_copy": upto, "rolled_back_bytes": rolled,
            "seconds": round(time.monotonic() - started, 3),
            "next_steps": next_steps(final, point.seq)}


def _check_window(replica: Replica, ret, epoch: int) -> None:
    if replica._retention is not ret or ret.epoch != epoch:
        raise ReplicaError(f"volume {replica.spec.uuid}: the retention window started anew "
                           f"during the recovery (a resync, a resize, or retention turned "
                           f"off): recover again")


def _copy(mirror: Path, fd: int, size: int) -> None:
    """The mirror's first ``size`` bytes to ``fd`` (at its start), copied by the kernel (a
    group's members through their concatenation: one image of the group's address space)."""
    if group_layout.is_layout_path(mirror):
        with open_mirror(mirror) as io:
            done = 0
            while done < size:
                chunk = bytearray(min(_COPY_CHUNK, size - done))
                io.pread_into(done, memoryview(chunk))
                os.pwrite(fd, chunk, done)
                done += len(chunk)
        return
    src = os.open(mirror, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            while done < size:
                sent = os.sendfile(fd, src, done, min(_COPY_CHUNK, size - done))
                if sent == 0:
                    raise OSError(errno.EIO, f"{mirror} ends at {done} bytes, before {size}")
                done += sent
        while done < size:       # sendfile refused (e.g. no splice on this file system)
            chunk = os.pread(src, min(_COPY_CHUNK, size - done), done)
            if not chunk:
                raise OSError(errno.EIO, f"{mirror} ends at {done} bytes, before {size}")
            os.pwrite(fd, chunk, done)
            done += len(chunk)
    finally:
        os.close(src)


def next_steps(path: Path, seq: int) -> str:
    """How an admin looks at the recovered image through LIO, and removes it afterwards."""
    name = f"recovered-{seq}"
    return (f"recovered: {path} holds the primary's image after seq {seq} (read-only file).\n"
            f"to look at it through LIO, read-only:\n"
            f"  losetup --find --show --read-only {path}      (prints /dev/loopN)\n"
            f"  /backstores/block create name={name} dev=/dev/loopN readonly=true\n"
            f"  then map it as a LUN of an iSCSI target for a host to mount read-only (or on "
            f"this host: mount -o ro,noload /dev/loopN /mnt)\n"
            f"  (targetcli-fb's fileio backstore takes no readonly: "
            f"'/backstores/fileio create name={name} file_or_dev={path}' serves it writable "
            f"unless the mapped LUN has write_protect=1)\n"
            f"to remove it afterwards:\n"
            f"  /backstores/block delete {name}; losetup -d /dev/loopN; rm {path}\n")
