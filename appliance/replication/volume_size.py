"""The replicated volume's size on each side, and how it follows an online resize.

The primary's size is the one its journal records: the write fork rewrites the journal
superblock when the LUN is resized (``appliance.journal.resize``), so the transmitter reads it
afresh for every HELLO rather than trusting its configuration. A replica grows with its
primary (mirror first, then its own journal's recorded size, which is the replica's truth);
a shrink is refused, since records from before it may still address the blocks it removes.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from appliance.journal.header import load_superblock, open_target, read_header


class VolumeResized(Exception):
    """The primary volume was resized while a session ran: reconnect so the HELLO tells the
    peer (which grows, or refuses a shrink with a message saying so)."""


def journal_volume_bytes(journal: Path, volume_uuid: uuid.UUID) -> int:
    """The volume size the journal records now (another process writes it)."""
    io = open_target(journal, lock=False)
    try:
        sb = load_superblock(io, read_header(io), volume_uuid)
        return sb.volume_blocks * sb.volume_block_size
    finally:
        io.close()


def extend_file(fd: int, size: int) -> None:
    """Grow a file to ``size`` bytes with its new blocks allocated where the file system can,
    durably (a no-op if it is already that large)."""
    old = os.fstat(fd).st_size
    if size <= old:
        return
    try:
        os.posix_fallocate(fd, old, size - old)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)
    os.fsync(fd)
