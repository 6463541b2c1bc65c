"""A volume's identity: its uuid is derived from the path of its mirror.

The handler needs no state of its own to give a volume the same uuid on every start, and the
DR tools (and the lab) can say which uuid a ``user:mirror`` LUN over a given mirror will get
before any handler has opened it. The journal, the bitmap and the replication peer all check
this uuid, so the rule must never change.
"""

from __future__ import annotations

import os
import uuid

VOLUME_NAMESPACE = uuid.UUID("6c1b8f0e-3a52-4d1e-9a7e-5f0d6b2c9e41")


def mirror_volume_uuid(mirror: str | os.PathLike[str]) -> uuid.UUID:
    """The uuid of the volume served over ``mirror`` (the absolute path in its config string)."""
    return uuid.uuid5(VOLUME_NAMESPACE, os.fspath(mirror))
