"""The primary volume's size as the transmitter sees it, through an online resize.

The primary's size is the one its journal records: the write fork rewrites the journal
superblock when the LUN is resized (``appliance.journal.resize``), so the transmitter reads it
afresh for every HELLO rather than trusting its configuration. The replica follows in
``Replica.resize`` (admission: ``handshake._check_geometry``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from appliance.journal.header import load_superblock, open_target, read_header


class VolumeResized(Exception):
    """The primary volume was resized while a session ran: reconnect so the HELLO tells the
    peer (which grows or shrinks its replica, or refuses with a message saying why)."""


def journal_volume_bytes(journal: Path, volume_uuid: uuid.UUID) -> int:
    """The volume size the journal records now (another process writes it)."""
    io = open_target(journal, lock=False)
    try:
        sb = load_superblock(io, read_header(io), volume_uuid)
        return sb.volume_blocks * sb.volume_block_size
    finally:
        io.close()
