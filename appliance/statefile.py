"""Small state files (JSON) replaced atomically: a crash leaves the old or the new file,
never a torn one. Used by the DR replica's state, the transmitter's pending repair and the
shell's replication settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.storage import sync_dir


def write_json_atomic(path: Path, obj: dict, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``obj`` as JSON (fsync'd file, then directory)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)
