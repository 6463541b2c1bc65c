"""The steps of `Volume.resize` that touch the files (docs/volume.md, "Resizing").

The journal's superblock is the commit point: before it is rewritten everything is prepared
so the volume opens at either size (a grown mirror and bitmap file are fine for the old
size); after it, the bitmap header follows (and `Volume.open` makes it follow if the power
went first), and a shrunk mirror file is cut last.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from appliance.volume import bitmap_format
from appliance.volume.errors import VolumeError

if TYPE_CHECKING:
    from appliance.journal import Journal
    from appliance.storage import BlockIO
    from appliance.volume.bitmap import DirtyBitmap
    from appliance.volume.mirror import Mirror


class ResizeRefused(VolumeError, ValueError):
    """The resize cannot be done as asked; nothing was changed. The message says why.
    A ValueError, so the TCMU layer answers the reconfig with -EINVAL."""


def regular_file_fd(io: BlockIO) -> int | None:
    """The fd if `io` is a regular file (which can be truncated), else None (a block device,
    or a simulated disk: fixed size)."""
    fileno = getattr(io, "fileno", None)
    if fileno is None:
        return None
    fd = fileno()
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def check_grow(mirror: Mirror, bitmap_io: BlockIO, new_blocks: int, num_chunks: int) -> None:
    """Read-only: a fixed-size mirror or bitmap (a block device) must already be big enough."""
    new_bytes = new_blocks * mirror.block_size
    if regular_file_fd(mirror.io) is None and mirror.io.size() < new_bytes:
        raise ResizeRefused(f"the mirror device holds {mirror.io.size()} bytes, {new_blocks} "
                            f"blocks of {mirror.block_size} bytes need {new_bytes}; "
                            "enlarge the device first")
    need = bitmap_format.file_size(num_chunks)
    if regular_file_fd(bitmap_io) is None and bitmap_io.size() < need:
        raise ResizeRefused(f"the bitmap device holds {bitmap_io.size()} bytes, "
                            f"{num_chunks} chunks need {need}; enlarge it first")


def grow_mirror(mirror: Mirror, old_blocks: int, new_blocks: int) -> None:
    """Make [old end, new end) of the mirror exist and read as zeros, durably (after
    `check_grow`).

    A regular file is cut back to the old end (a shrink may have left stale bytes past it)
    and extended sparse. A block device must already be big enough; its new region is
    zeroed, which costs a write of the whole region."""
    bs = mirror.block_size
    old_bytes, new_bytes = old_blocks * bs, new_blocks * bs
    fd = regular_file_fd(mirror.io)
    if fd is not None:
        if os.fstat(fd).st_size > old_bytes:
            os.ftruncate(fd, old_bytes)
        os.ftruncate(fd, new_bytes)
    else:
        mirror.zero(old_bytes, new_bytes - old_bytes)
    mirror.sync()


def shrink_mirror_file(mirror: Mirror, new_blocks: int) -> None:
    """After the commit: cut a regular file to the new end (a block device keeps its size)."""
    fd = regular_file_fd(mirror.io)
    if fd is not None:
        os.ftruncate(fd, new_blocks * mirror.block_size)
        mirror.sync()


def grow_bitmap_file(bitmap_io: BlockIO, num_chunks: int) -> None:
    """The bitmap file must hold `num_chunks` bits; a regular file is extended."""
    need = bitmap_format.file_size(num_chunks)
    fd = regular_file_fd(bitmap_io)
    if bitmap_io.size() >= need or fd is None:      # a device: check_grow looked
        return
    os.ftruncate(fd, need)
    bitmap_io.sync()


def check_shrink(journal: Journal, acked_seq: int, bitmap: DirtyBitmap, block_size: int,
                 new_blocks: int) -> None:
    """Refuse a shrink that would discard data the peer does not hold yet: a journal record
    the peer has not acknowledged, or a dirty chunk, reaching past the new end."""
    new_bytes = new_blocks * block_size
    # From the chunk holding the new end (if the end falls inside it, it holds cut bytes too).
    first_cut_chunk = new_bytes // bitmap.chunk_size
    if any(bitmap.is_dirty(chunk) for chunk in range(first_cut_chunk, bitmap.num_chunks)):
        raise ResizeRefused(f"chunks past block {new_blocks} are dirty (not resynced to the "
                            f"peer yet); shrink after the resync has shipped them")
    for record in journal.records(acked_seq + 1):
        op = record.op
        if op.lba + op.nblocks > new_blocks:
            raise ResizeRefused(
                f"journal record seq {record.seq} (blocks {op.lba}..{op.lba + op.nblocks - 1}) "
                f"reaches past block {new_blocks} and the peer has not acknowledged it yet; "
                "shrink after the peer has caught up")
