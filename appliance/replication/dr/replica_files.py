"""Files of a DR replica, created preallocated."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.storage import allocate, sync_dir


def extend_file(fd: int, size: int) -> None:
    """Grow a file to ``size`` bytes with its new blocks allocated where the file system can
    (else sparse), durably; a no-op if it is already that large."""
    old = os.fstat(fd).st_size
    if size <= old:
        return
    if not allocate(fd, old, size - old):
        os.ftruncate(fd, size)
    os.fsync(fd)


def preallocate(path: Path, size: int) -> bool:
    """Create a missing regular file with its blocks allocated (not sparse).

    Writing a sparse file's holes costs the kernel block allocation on every first write
    (here about four times the CPU of overwriting allocated blocks), which the receiver pays
    on its journal and mirror while replicating; allocating up front also finds a full file
    system at pairing time rather than in the middle of replication. A file system that
    cannot preallocate leaves the file sparse. An existing file is left alone (False)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        extend_file(fd, size)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    sync_dir(path.parent)
    return True
