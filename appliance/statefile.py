"""Small files replaced atomically and kept private: a crash leaves the old file or the new one,
never a torn one, and the file is never readable by others, not even for a moment. Used by the
DR replica's state, the transmitter's pending repair, and the shell's site.json, the daemons'
generated TOML files, pinned certificates and replication.json.

A new file beside the old one (``mode`` from its creation, under a name unique to the process,
so two writers never share one), fsync'd, renamed over it, then the directory fsync'd.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from appliance.storage import sync_dir


def write_text_atomic(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text``."""
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


def write_json_atomic(path: Path, obj: dict, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``obj`` as JSON."""
    write_text_atomic(path, json.dumps(obj, sort_keys=True), mode=mode)


def remove_durably(path: Path) -> bool:
    """Remove ``path`` (and make that durable); False when it was not there."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    sync_dir(path.parent)
    return True
