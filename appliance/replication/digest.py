"""The region digest of the wire protocol (HASHES frames): both ends must compute it alike."""

from __future__ import annotations

import hashlib


def region_digest(data: bytes | memoryview) -> bytes:
    """BLAKE2b, 16 bytes, of a region of the mirror (docs/protocol.md, "Online verify")."""
    return hashlib.blake2b(data, digest_size=16).digest()
