"""Changing the volume size a journal records (a LUN grown or shrunk in place).

The superblock is otherwise static, so this is the only rewrite of it. It is crash-safe the
same way creation is: two copies, and readers take the first intact one. Copy 0 is written
and made durable before copy 1 is touched, so a power cut leaves copy 0 old (copy 1 still
old), copy 0 torn (copy 1 old wins), or copy 0 new: the journal records the old size or
the new one, never neither.
"""

from __future__ import annotations

import dataclasses

from appliance.journal.errors import InvalidRequest
from appliance.journal.format import JBLOCK, SUPERBLOCK_BLOCKS, encode_superblock
from appliance.journal.writer import Journal


def set_volume_blocks(journal: Journal, volume_blocks: int) -> None:
    """Record `volume_blocks` as the volume's size, durably; appends are then checked
    against it. The caller makes sure no record it still needs lies beyond a new end."""
    if type(volume_blocks) is not int or volume_blocks < 1:
        raise InvalidRequest(f"volume_blocks must be a positive integer, not {volume_blocks!r}")
    journal._check_open()
    if volume_blocks == journal.sb.volume_blocks:
        return
    new = dataclasses.replace(journal.sb, volume_blocks=volume_blocks)
    block = encode_superblock(new)
    io = journal._io                    # the writer's own handle (same package)
    for index in SUPERBLOCK_BLOCKS:
        io.pwritev(index * JBLOCK, [block])
        io.sync()
    journal.sb = new
