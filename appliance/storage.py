"""The file layer: every byte the journal, mirror and bitmap move goes through `BlockIO`.

Keeping the interface this small lets the crash tests swap in a simulated disk
(`tests/support/simdisk.py`) that loses unflushed writes, while production uses plain
file descriptors with `os.preadv` / `os.pwritev` (no intermediate copies).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Sequence
from typing import Any, Final

from appliance.block_io import BlockIO, StorageError, StorageLocked
from appliance.direct_io import DirectWriter

__all__ = ["BlockIO", "FileBlockIO", "StorageError", "StorageLocked", "allocate", "copy_range",
           "open_file", "sync_dir"]


# Linux caps one preadv/pwritev at IOV_MAX buffers.
_IOV_MAX: Final = os.sysconf("SC_IOV_MAX")


class FileBlockIO:
    """`BlockIO` over a file descriptor (regular file or block device)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path
        self._copy_fd = -1      # a second open of the file, whose position only copies move
        self._direct: DirectWriter | None = None

    def enable_direct(self, min_bytes: int) -> bool:
        """From now on, write calls of at least `min_bytes` whose offset and buffers are
        aligned bypass the page cache (appliance/direct_io.py). False where the file
        system refuses direct I/O: everything stays buffered."""
        if self._direct is None:
            self._direct = DirectWriter.open(self._fd, self.path, min_bytes)
        return self._direct is not None

    @property
    def writes_direct(self) -> bool:
        """Do large aligned writes bypass the page cache (enabled, and not refused since)?"""
        return self._direct is not None and self._direct.usable

    def copy_from(self, src: FileBlockIO, src_offset: int, offset: int, length: int) -> None:
        """Write `length` bytes of `src` (from `src_offset`) here at `offset`, copied by the
        kernel from page cache to page cache (sendfile), never through Python.

        Not copy_file_range: on a reflink file system (XFS, btrfs) that shares the extents,
        and the journal's next pass over them would then be copy-on-write, allocating
        space the preallocated journal counted on having. sendfile writes at the file
        position, so it uses its own open of the file, which nothing else positions."""
        if self._copy_fd < 0:
            self._copy_fd = os.open(f"/proc/self/fd/{self._fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.lseek(self._copy_fd, offset, os.SEEK_SET)
        done = 0
        while done < length:
            sent = os.sendfile(self._copy_fd, src.fileno(), src_offset + done, length - done)
            if sent == 0:
                raise StorageError(errno.EIO, f"copy from {src.path} at {src_offset + done} "
                                              f"to {self.path} made no progress")
            done += sent

    def fileno(self) -> int:
        return self._fd

    def pread_into(self, offset: int, buf: Any) -> None:
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise StorageError(
                    errno.EIO,
                    f"short read from {self.path}: wanted {len(view)} bytes at offset "
                    f"{offset}, the file ends after {done}",
                )
            done += got

    def pwritev(self, offset: int, bufs: Sequence[Any]) -> None:
        # Any buffer (bytes, bytearray, memoryview, mmap): typed Any, since compiled code checks
        # a declared type on every element it reads (docs/compiled.md).
        if len(bufs) <= _IOV_MAX:  # the common case: one call, no copies, no views
            want = sum(buf.nbytes if isinstance(buf, memoryview) else len(buf) for buf in bufs)
            if self._direct is not None and want >= self._direct.min_bytes:
                views = [memoryview(buf).cast("B") for buf in bufs]
                wrote = self._direct.try_write(offset, views, want)
                if wrote == want:
                    return
                bufs, offset, want = _skip(views, wrote), offset + wrote, want - wrote
            wrote = os.pwritev(self._fd, bufs, offset)
            if wrote == want:
                return
            bufs = _skip(bufs, wrote)
            offset += wrote
        views = [memoryview(buf).cast("B") for buf in bufs]
        while views:
            wrote = os.pwritev(self._fd, views[:_IOV_MAX], offset)
            if wrote == 0:
                raise StorageError(errno.EIO, f"write to {self.path} at {offset} made no progress")
            offset += wrote
            views = _skip(views, wrote)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def size(self) -> int:
        # lseek works for block devices, where fstat reports st_size == 0.
        return os.lseek(self._fd, 0, os.SEEK_END)

    def lock_exclusive(self) -> None:
        """Take an advisory exclusive flock; raise `StorageLocked` if someone holds it."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise StorageLocked(
                errno.EWOULDBLOCK, f"{self.path} is locked by another process"
            ) from err

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        if self._copy_fd >= 0:
            fd, self._copy_fd = self._copy_fd, -1
            os.close(fd)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> FileBlockIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _skip(bufs: Sequence[Any], done: int) -> list[memoryview]:
    """The bytes of `bufs` after the first `done` (what a partial write left over)."""
    views = [memoryview(buf).cast("B") for buf in bufs]
    while views and done >= len(views[0]):
        done -= len(views.pop(0))
    if done:
        views[0] = views[0][done:]
    return [view for view in views if len(view)]


def open_file(path: str | os.PathLike[str], *, create_size: int | None = None) -> FileBlockIO:
    """Open `path` read-write.

    With `create_size`, a missing file is created (sparse) with that size, and an existing
    regular file shorter than that is extended (a smaller block device is an error); nothing
    is ever shrunk. Without it the file must exist.
    """
    name = os.fspath(path)
    flags = os.O_RDWR | os.O_CLOEXEC
    created = False
    if create_size is not None:
        if create_size < 0:
            raise ValueError(f"create_size must be >= 0, got {create_size}")
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(name, flags)
    else:
        fd = os.open(name, flags)
    try:
        io = FileBlockIO(fd, name)
        if create_size is not None and io.size() < create_size:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(errno.ENOSPC, f"{name} holds {io.size()} bytes, fewer than "
                                                 f"the {create_size} needed")
            os.ftruncate(fd, create_size)
        if created:
            sync_dir(os.path.dirname(os.path.abspath(name)))
        return io
    except BaseException:
        os.close(fd)
        raise


def allocate(fd: int, offset: int, length: int) -> bool:
    """Allocate a regular file's blocks over [offset, offset+length) now (posix_fallocate,
    extending the file if need be), so that writing them later never fails for want of
    space and costs no block allocation. False where the file system cannot (the range
    stays sparse); ENOSPC is raised."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return False
    return True


_COPY_CHUNK: Final = 1 << 20
# sendfile refuses some pairs (e.g. a file system without splice support), and the second
# open needs /proc (ENOENT without it, EACCES if the file's mode changed): copy by buffer.
_NO_SENDFILE: Final = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV,
                       errno.ENOENT, errno.EACCES)


def copy_range(src: BlockIO, src_offset: int, dst: BlockIO, dst_offset: int,
               length: int) -> None:
    """dst[dst_offset:+length] = src[src_offset:+length]: in the kernel between two files,
    otherwise (the crash tests' simulated disk, a refusing kernel) through a buffer."""
    if isinstance(src, FileBlockIO) and isinstance(dst, FileBlockIO):
        try:
            dst.copy_from(src, src_offset, dst_offset, length)
            return
        except OSError as err:
            if err.errno not in _NO_SENDFILE:
                raise
    buf = bytearray(min(length, _COPY_CHUNK))
    done = 0
    while done < length:
        view = memoryview(buf)[:min(len(buf), length - done)]
        src.pread_into(src_offset + done, view)
        dst.pwritev(dst_offset + done, [view])
        done += len(view)


def sync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory: makes entries created, renamed or removed in it durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
