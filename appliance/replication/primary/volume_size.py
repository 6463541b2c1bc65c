"""The primary volume's size as the transmitter sees it, through an online resize.

The primary's size is the one its journal records: the write fork rewrites the journal
superblock when the LUN is resized (``appliance.journal.resize``), so the transmitter reads it
afresh for every HELLO rather than trusting its configuration
(``appliance.journal.header.journal_volume_bytes``). The replica follows in
``Replica.resize`` (admission: ``handshake._check_geometry``).
"""

from __future__ import annotations


class VolumeResized(Exception):
    """The primary volume was resized while a session ran: reconnect so the HELLO tells the
    peer (which grows or shrinks its replica, or refuses with a message saying why)."""


