"""Large writes that bypass the page cache (O_DIRECT), straight from the caller's buffers.

Why: a buffered write copies every byte into the page cache and writes it back later, both
on the CPU. A direct write hands the caller's pages to the device. For the handler that means
the TCMU ring's data area goes to the disk without a copy; measured in the appliance VM
(2 vCPUs under TCG, docs/volume.md "Direct I/O"), journal + mirror writes of 1 MiB cost
about 1 ms of guest CPU per MiB in batches of 8 MiB instead of 40-58 ms buffered.

Direct I/O asks for alignment of the file offset, each buffer's length and each buffer's
address. We require 4096 for all three (the strictest a Linux block device asks) and write
buffered otherwise. Small unaligned buffers (a journal metadata block, padding) are copied
into an aligned bounce buffer; a large unaligned one makes the whole write buffered, since
copying it would cost what direct I/O saves.

Durability is unchanged: a direct write is not durable until fdatasync (which flushes the
device cache), exactly like a buffered one, and the kernel keeps page cache and direct
writes coherent for readers of the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
from collections.abc import Sequence

log = logging.getLogger("appliance.storage")

ALIGN = 4096
# Unaligned buffers up to this much are copied to the bounce buffer; more: write buffered.
BOUNCE_MAX = 64 * 1024
# Refusals that mean "this file (system) cannot do direct I/O": write buffered from then on.
_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def address_of(view: memoryview) -> int | None:
    """The address of a writable buffer's first byte; None for a read-only one (bytes),
    whose address Python does not expose."""
    if view.readonly or not view.nbytes:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class DirectWriter:
    """A second, O_DIRECT open of one file, used for writes of at least `min_bytes`."""

    def __init__(self, fd: int, path: str, min_bytes: int) -> None:
        self.path = path
        self.min_bytes = min_bytes
        self._fd = fd
        self._bounce = mmap.mmap(-1, BOUNCE_MAX)     # anonymous mmap: page-aligned

    @classmethod
    def open(cls, fd: int, path: str, min_bytes: int) -> DirectWriter | None:
        """Open `fd`'s file again with O_DIRECT; None where the file system refuses."""
        try:
            direct_fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as err:
            if err.errno in _UNSUPPORTED + (errno.ENOENT, errno.EACCES):
                log.info("%s: no direct I/O (%s); large writes go through the page cache",
                         path, err.strerror)
                return None
            raise
        return cls(direct_fd, path, min_bytes)

    @property
    def usable(self) -> bool:
        return self._fd >= 0

    def try_write(self, offset: int, views: Sequence[memoryview], total: int) -> int:
        """Write `views` (`total` bytes) at `offset` directly if they qualify. Returns the
        bytes written: all, part (the caller writes the rest buffered), or 0 when the
        write does not qualify or the file refuses direct I/O."""
        if self._fd < 0 or total < self.min_bytes or (offset | total) % ALIGN:
            return 0
        iov = self._aligned_iovecs(views)
        if iov is None:
            return 0
        try:
            return os.pwritev(self._fd, iov, offset)
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
            log.warning("%s refused a direct write (%s); writing through the page cache "
                        "from now on", self.path, err.strerror)
            self.close()
            return 0

    def _aligned_iovecs(self, views: Sequence[memoryview]) -> list[memoryview] | None:
        """The iovecs to write: aligned buffers as they are, small unaligned ones copied into
        the bounce buffer; None if a buffer is misaligned in length or too much is unaligned."""
        iov: list[memoryview] = []
        bounced = 0
        bounce = memoryview(self._bounce)
        for view in views:
            nbytes = view.nbytes
            if nbytes % ALIGN:
                return None
            address = address_of(view)
            if address is not None and address % ALIGN == 0:
                iov.append(view)
                continue
            if bounced + nbytes > BOUNCE_MAX:
                return None
            bounce[bounced:bounced + nbytes] = view
            iov.append(bounce[bounced:bounced + nbytes])
            bounced += nbytes
        return iov

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        with contextlib.suppress(BufferError):   # a view of it lives (a write in another thread)
            self._bounce.close()
