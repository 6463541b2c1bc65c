"""Small files the shell writes (site.json, the daemons' TOML files, pinned certificates,
replication.json): replaced atomically and private.

A new file beside the old one (0600 from its creation), fsync'd, renamed over it, then the
directory fsync'd: a crash leaves the old file or the new one, never a torn one, and the file is
never readable by others, not even for a moment. ``appliance/statefile.py`` does the same for
JSON state only (fixed temporary name, no text); this one takes any text and a unique temporary
name, so two shells never share one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from appliance.storage import sync_dir


def write_text_atomic(path: Path, text: str, *, mode: int = 0o600) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)             # whatever the umask took away or left
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_dir(path.parent)


def remove_durably(path: Path) -> bool:
    """Remove ``path`` (and make that durable); False when it was not there."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    sync_dir(path.parent)
    return True
