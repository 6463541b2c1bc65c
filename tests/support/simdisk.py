"""A simulated machine whose disks lose what was not flushed when the power goes.

`SimMachine` holds named files that share one power supply. Writes land in a volatile
cache (visible to reads at once, like the page cache); `sync()` on a file makes its
cached writes durable. `crash()` cuts the power for every file at once: each unsynced
write is dropped, or (with `tear=True`) may also survive whole or in part, chosen per
512-byte sector, in any order — a disk cache may flush in any order it likes.
After a crash every open handle is dead; `open()` again sees only what survived.

Storage is sparse (a dict of 4 KiB pages) so journals of 2^16 blocks cost only the pages
actually written. `reads[name]` counts read calls, `read_bytes[name]` the bytes read.
"""

from __future__ import annotations

import errno
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

SECTOR = 512
PAGE = 4096
_ZEROS = bytes(PAGE)


class MachineCrashed(OSError):
    """The handle belongs to a power cycle that has ended; open the file again."""


@dataclass
class _Disk:
    size: int
    durable: dict[int, bytearray] = field(default_factory=dict)
    visible: dict[int, bytearray] = field(default_factory=dict)
    pending: list[tuple[int, bytes]] = field(default_factory=list)


def _read_pages(pages: dict[int, bytearray], offset: int, out: memoryview) -> None:
    done = 0
    while done < len(out):
        pos = offset + done
        index, skip = divmod(pos, PAGE)
        take = min(PAGE - skip, len(out) - done)
        page = pages.get(index)
        if page is None:
            out[done : done + take] = bytes(take)
        else:
            out[done : done + take] = page[skip : skip + take]
        done += take


def _write_pages(pages: dict[int, bytearray], offset: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        pos = offset + done
        index, skip = divmod(pos, PAGE)
        take = min(PAGE - skip, len(data) - done)
        page = pages.get(index)
        chunk = data[done : done + take]
        if page is None:
            if chunk.tobytes() == (_ZEROS if take == PAGE else bytes(take)):
                done += take
                continue  # stays sparse: big journals cost only what is not zero
            page = pages[index] = bytearray(PAGE)
        page[skip : skip + take] = chunk
        done += take


class SimMachine:
    """Named simulated files sharing one power supply."""

    def __init__(self) -> None:
        self._disks: dict[str, _Disk] = {}
        self._power_cycle = 0
        self._faults: dict[tuple[str, str], int] = {}
        self.reads: Counter[str] = Counter()
        self.read_bytes: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.crashes = 0

    def open(self, name: str, size: int | None = None) -> SimFile:
        """Open `name`; with `size`, create it (zero-filled) if it does not exist yet."""
        disk = self._disks.get(name)
        if disk is None:
            if size is None:
                raise FileNotFoundError(errno.ENOENT, f"simulated file {name!r} does not exist")
            disk = self._disks[name] = _Disk(size=size)
        return SimFile(self, name, disk, self._power_cycle)

    def exists(self, name: str) -> bool:
        return name in self._disks

    def unsynced_bytes(self, name: str) -> int:
        return sum(len(data) for _, data in self._disks[name].pending)

    def inject_fault(self, name: str, op: str, count: int = 1) -> None:
        """Make the next `count` calls of `op` ("read", "write", "sync") on `name` fail with EIO."""
        if op not in ("read", "write", "sync"):
            raise ValueError(f"op must be read, write or sync, not {op!r}")
        self._faults[(name, op)] = self._faults.get((name, op), 0) + count

    def _take_fault(self, name: str, op: str) -> None:
        left = self._faults.get((name, op), 0)
        if left:
            self._faults[(name, op)] = left - 1
            raise OSError(errno.EIO, f"injected {op} error on simulated file {name!r}")

    def crash(self, rng: random.Random, tear: bool = True) -> None:
        """Cut the power: unsynced writes are lost, or with `tear` survive per sector at random."""
        for disk in self._disks.values():
            touched: set[int] = set()
            for offset, data in disk.pending:
                first = offset // PAGE
                last = (offset + len(data) - 1) // PAGE
                touched.update(range(first, last + 1))
                if not tear:
                    continue
                fate = rng.random()
                if fate < 1 / 3:
                    continue  # dropped whole
                view = memoryview(data)
                if fate < 2 / 3:
                    _write_pages(disk.durable, offset, view)  # survived whole
                    continue
                # Torn: each sector independently made it or not.
                pos = 0
                while pos < len(view):
                    end = min(len(view), pos + SECTOR - (offset + pos) % SECTOR)
                    if rng.random() < 0.5:
                        _write_pages(disk.durable, offset + pos, view[pos:end])
                    pos = end
            disk.pending.clear()
            for index in touched:
                page = disk.durable.get(index)
                if page is None:
                    disk.visible.pop(index, None)
                else:
                    disk.visible[index] = bytearray(page)
        self._power_cycle += 1
        self.crashes += 1


class SimFile:
    """A `BlockIO` handle on one simulated file."""

    def __init__(self, machine: SimMachine, name: str, disk: _Disk, cycle: int) -> None:
        self._machine = machine
        self.name = name
        self._disk = disk
        self._cycle = cycle
        self._closed = False

    def _check(self, offset: int, length: int) -> None:
        if self._closed:
            raise ValueError(f"simulated file {self.name!r} is closed")
        if self._cycle != self._machine._power_cycle:
            raise MachineCrashed(errno.EIO, f"the machine crashed; reopen {self.name!r}")
        if offset < 0 or offset + length > self._disk.size:
            raise OSError(
                errno.EINVAL,
                f"I/O of {length} bytes at {offset} is outside simulated file {self.name!r} "
                f"of {self._disk.size} bytes",
            )

    def pread_into(self, offset: int, buf: memoryview) -> None:
        view = memoryview(buf).cast("B")
        self._check(offset, len(view))
        self._machine._take_fault(self.name, "read")
        self._machine.reads[self.name] += 1
        self._machine.read_bytes[self.name] += len(view)
        _read_pages(self._disk.visible, offset, view)

    def pwritev(self, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
        data = b"".join(bufs)
        self._check(offset, len(data))
        self._machine._take_fault(self.name, "write")
        self._machine.writes[self.name] += 1
        if data:
            _write_pages(self._disk.visible, offset, memoryview(data))
            self._disk.pending.append((offset, data))

    def sync(self) -> None:
        self._check(0, 0)
        self._machine._take_fault(self.name, "sync")
        self._machine.syncs[self.name] += 1
        for offset, data in self._disk.pending:
            _write_pages(self._disk.durable, offset, memoryview(data))
        self._disk.pending.clear()

    def size(self) -> int:
        self._check(0, 0)
        return self._disk.size

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> SimFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
