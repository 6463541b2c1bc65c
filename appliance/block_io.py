"""The file layer's interface and errors, in a module of their own: storage.py (the files
behind them) is compiled by mypyc (appliance/compiled.py), which compiles neither a
runtime-checkable Protocol nor a subclass of OSError. Import them from appliance.storage,
which re-exports them with the rest of the file layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class StorageError(OSError):
    """An I/O request could not be completed in full (short read past the end, ...)."""


class StorageLocked(StorageError):
    """Another process holds the exclusive lock on this file."""


@runtime_checkable
class BlockIO(Protocol):
    """Positional I/O on one file or block device."""

    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill `buf` from `offset`: exactly len(buf) bytes, else raise."""

    def pwritev(self, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
        """Write the buffers back to back from `offset`: all of them, else raise."""

    def sync(self) -> None:
        """fdatasync: everything written before this call survives a power cut."""

    def size(self) -> int:
        """Size in bytes (of the file, or of the block device)."""

    def close(self) -> None: ...
