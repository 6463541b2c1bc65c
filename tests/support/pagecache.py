"""How much of a file range sits in the page cache (mincore(2)): the outcome that tells a
direct write (nothing cached) from a buffered one (every page cached until written back
and evicted)."""

from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))


def cached_pages(path: str | os.PathLike[str], offset: int, length: int) -> int:
    """Pages of `path[offset:offset+length]` (page-aligned) held in the page cache."""
    assert offset % mmap.PAGESIZE == 0 and length % mmap.PAGESIZE == 0
    pages = length // mmap.PAGESIZE
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, length, offset=offset) as mapping:   # mapping faults nothing in
            anchor = ctypes.c_char.from_buffer(mapping)
            vec = (ctypes.c_ubyte * pages)()
            rc = _libc.mincore(ctypes.addressof(anchor), length, vec)
            del anchor
            if rc:
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(v & 1 for v in vec)
    finally:
        os.close(fd)
