"""Undo log of the DR mirror: old contents saved before a resync overwrites them.

While a resync runs, the DR mirror is not write-order consistent. Before any byte of it is
overwritten (by a resync region or by a journal record applied during that window), the old
contents of that range are appended here and made durable. Replaying the log backwards
restores the last consistent image exactly, so a failover during a resync can still start from
the image the DR had before the resync began.

Format: a sequence of entries ``magic "DRUN" | u64 offset | u32 length | u32 crc32c(data) |
data``. A torn last entry (crash while saving) is ignored: its mirror write never started,
because the mirror is written only after the entry is synced.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from appliance.checksum import crc32c

_ENTRY = struct.Struct("<4sQII")
MAGIC = b"DRUN"


class Mirror(Protocol):
    def pread_into(self, offset: int, buf: memoryview) -> None: ...
    def pwritev(self, offset: int, bufs: list[bytes | memoryview]) -> None: ...
    def sync(self) -> None: ...


class UndoLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.saved_bytes = 0
        self._pending = False

    def save(self, mirror: Mirror, offset: int, length: int) -> None:
        """Append the current contents of [offset, offset+length) (not yet synced)."""
        old = bytearray(length)
        mirror.pread_into(offset, memoryview(old))
        os.write(self._fd, _ENTRY.pack(MAGIC, offset, length, crc32c(old)) + old)
        self.saved_bytes += length
        self._pending = True

    def sync(self) -> None:
        if self._pending:
            os.fdatasync(self._fd)
            self._pending = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def entries(path: Path) -> Iterator[tuple[int, bytes]]:
    """Valid entries in order; stops at the first torn or damaged one."""
    data = Path(path).read_bytes()
    pos = 0
    while pos + _ENTRY.size <= len(data):
        magic, offset, length, crc = _ENTRY.unpack_from(data, pos)
        body = data[pos + _ENTRY.size : pos + _ENTRY.size + length]
        if magic != MAGIC or len(body) != length or crc32c(body) != crc:
            return
        yield offset, body
        pos += _ENTRY.size + length


def roll_back(path: Path, mirror: Mirror) -> int:
    """Restore the image from before the first saved write. Returns bytes restored."""
    saved = list(entries(path))
    for offset, body in reversed(saved):
        mirror.pwritev(offset, [body])
    mirror.sync()
    return sum(len(b) for _, b in saved)
