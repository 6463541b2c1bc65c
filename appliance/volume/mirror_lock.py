"""One writer per mirror: the handler serving it as a LUN, or the DR receiver replicating into
it, never both (docs/volume.md "One writer per mirror").

Without this, a backstore created over a replica's files (after a failback the old site's
mirror is the receiver's; a demote makes a promoted LUN's mirror a replica again) would have
two daemons writing one image: host writes interleaved with the primary's records, a DR
copy that is no one's and that every status still calls in sync.

The lock is an exclusive ``flock`` on every file behind the mirror path (a group layout's
live members, else the file or device itself), held on descriptors of its own for as long as
the writer runs and dropped by the kernel when it dies, even by SIGKILL. ``flock`` belongs to
the open file description, so a second writer in the same process is refused as well, and a
writer's own data descriptors can be closed and reopened (a group growing) without
releasing it. Readers (the transmitter's resync, verify, a recovery's copy) take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from appliance.block_io import StorageLocked
from appliance.volume import group_layout


class MirrorInUse(StorageLocked):
    """Another writer holds the mirror (the message names the file and what to do)."""

    def __str__(self) -> str:
        return str(self.strerror)      # the admin reads it: no "[Errno 16]" in front


def mirror_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The files a writer of ``path`` writes: a group layout's live members, else ``path``."""
    if not group_layout.is_layout_path(path):
        return [Path(path)]
    return [Path(m.mirror) for m in group_layout.load(path).members if not m.retired]


class MirrorLock:
    """The exclusive locks of one writer on its mirror's files."""

    def __init__(self, holder: str) -> None:
        self.holder = holder            # who writes, for the refusal's message
        self._fds: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> locked descriptor

    @classmethod
    def take(cls, path: str | os.PathLike[str], holder: str) -> MirrorLock:
        """Lock every file behind ``path`` that exists; raise ``MirrorInUse`` (holding
        nothing) if another writer has one of them."""
        lock = cls(holder)
        try:
            lock.cover(path)
        except BaseException:
            lock.close()
            raise
        return lock

    def cover(self, path: str | os.PathLike[str]) -> None:
        """Lock the files behind ``path`` not held yet (created since, or a member that
        joined)."""
        for file in mirror_paths(path):
            self._lock_file(file)

    def _lock_file(self, file: Path) -> None:
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return      # no writer has it yet: the one who creates it covers it after
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self._fds:
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MirrorInUse(
                errno.EBUSY,
                f"mirror {file} is written by another process (a handler serving it as a LUN, "
                f"or the DR receiver replicating into it), so the {self.holder} may not write "
                f"it: one writer per mirror; stop the other one (delete its backstore, or "
                f"remove the volume from the receiver) first") from None
        self._fds[key] = fd

    @property
    def held(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


def check_free(path: str | os.PathLike[str], holder: str) -> None:
    """Raise ``MirrorInUse`` if a writer holds the mirror now (taken and released at once)."""
    MirrorLock.take(path, holder).close()
