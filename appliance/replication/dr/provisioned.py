"""Replicas the receiver provisions itself, for volumes its paired primaries offer.

With ``provision = true`` a HELLO for a volume the receiver has no ``[[volume]]`` table for
(from a primary whose certificate verified: the pinned certificates are the pairing) creates
the replica under ``<state_dir>/<uuid>/`` with the HELLO's size and block size, bound to that
primary. What it was created for is recorded in ``<state_dir>/<uuid>/provisioned.json``
(written atomically, ``appliance/statefile.py``) *before* any other file of the replica, so
the receiver (and ``appliance-dr``) find every provisioned replica again at start, beside the
``[[volume]]`` tables; this module is the only reader and writer of that file.

Before anything is created the free space of state_dir's file system must hold the mirror and
the journal (and ``MARGIN`` for the small files): otherwise the offer is refused with code
``no-space`` and a reason that gives the numbers and the directory; nothing is created.

A directory that holds files of a replica but no ``provisioned.json`` (a replica forgotten
with its data kept, or someone else's files) is never adopted: the offer is refused and the
reason says which files are in the way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr import group_replica
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.handshake import Hello, Refused, VolumeSpec
from appliance.statefile import write_json_atomic
from appliance.storage import sync_dir

SPEC_FILE = "provisioned.json"
FORMAT_VERSION = 1
MARGIN = 1 << 20            # state.json, undo.log's first entries, directory blocks


def human(n: int) -> str:
    """``1 GiB``, ``1.2 GiB``, ``256 MiB``, ``900 KiB``, ``12 bytes``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            text = f"{n / size:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True, slots=True)
class ProvisionedSpec:
    """What a provisioned replica was created for."""

    volume_uuid: uuid.UUID
    size_bytes: int             # at creation; an online resize of the primary is followed
    block_size: int
    primary: str                # the only primary it admits
    name: str                   # the volume's name on the primary ("" if it sent none)
    journal_size: int
    created: float
    group: str = ""             # a consistency group's name: its mirror is a group layout

    def replica_config(self, state_dir: Path) -> ReplicaConfig:
        paths = replica_paths(state_dir, self.volume_uuid)
        if self.group:
            paths = dataclasses.replace(paths, mirror=group_replica.layout_path(
                paths.mirror.parent, self.group))
        return ReplicaConfig(VolumeSpec(self.volume_uuid, self.size_bytes, self.block_size,
                                        frozenset({self.primary})), paths, self.journal_size)

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "volume_uuid": str(self.volume_uuid),
                "size_bytes": self.size_bytes, "block_size": self.block_size,
                "primary": self.primary, "name": self.name,
                "journal_size": self.journal_size, "created": self.created,
                **({"group": self.group} if self.group else {})}

    @classmethod
    def from_json(cls, d: object) -> ProvisionedSpec:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {d.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}")

        def typed(key: str, typ: type):
            value = d.get(key)
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                raise ValueError(f"{key} is {value!r}")
            return value
        created = d.get("created")
        if isinstance(created, bool) or not isinstance(created, int | float):
            raise ValueError(f"created is {created!r}")
        spec = cls(uuid.UUID(typed("volume_uuid", str)), typed("size_bytes", int),
                   typed("block_size", int), typed("primary", str), typed("name", str),
                   typed("journal_size", int), float(created),
                   typed("group", str) if "group" in d else "")
        if spec.size_bytes <= 0 or spec.block_size <= 0 or spec.journal_size <= 0:
            raise ValueError("a size is not positive")
        return spec


def spec_path(state_dir: Path, volume: uuid.UUID) -> Path:
    return Path(state_dir) / str(volume) / SPEC_FILE


def load(path: Path) -> ProvisionedSpec:
    try:
        spec = ProvisionedSpec.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        raise ReplicaError(f"provisioned replica spec {path} is unusable ({err}): restore it, "
                           f"or remove that directory to let its primary provision it anew "
                           f"(a full copy)") from err
    if path.parent.name != str(spec.volume_uuid):
        raise ReplicaError(f"provisioned replica spec {path} is for volume {spec.volume_uuid}, "
                           f"not for its directory's; move it back to {spec.volume_uuid}/")
    return spec


def load_all(state_dir: Path) -> list[ProvisionedSpec]:
    """Every provisioned replica under ``state_dir`` (sorted by uuid); ReplicaError for a
    spec file that cannot be trusted."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    return [load(p) for p in sorted(state_dir.glob(f"*/{SPEC_FILE}"))]


def replica_configs(state_dir: Path, configured: list[ReplicaConfig]
                    ) -> list[tuple[ReplicaConfig, ProvisionedSpec | None]]:
    """The receiver's replicas: its ``[[volume]]`` tables, then each provisioned one that no
    table names (a table for the same uuid takes it over)."""
    seen = {c.spec.uuid for c in configured}
    out: list[tuple[ReplicaConfig, ProvisionedSpec | None]] = [(c, None) for c in configured]
    out += [(s.replica_config(state_dir), s) for s in load_all(state_dir)
            if s.volume_uuid not in seen]
    return out


def free_bytes(directory: Path) -> tuple[int, Path]:
    """Free bytes (for unprivileged use, conservative) of the file system that holds
    ``directory``, or of its nearest existing parent; and that directory."""
    at = Path(directory)
    while not at.exists() and at != at.parent:
        at = at.parent
    st = os.statvfs(at)
    return st.f_bavail * st.f_frsize, at


def check_space(state_dir: Path, size_bytes: int, journal_size: int) -> None:
    """Refused (``no-space``) unless state_dir's file system holds mirror + journal."""
    need = size_bytes + journal_size + MARGIN
    free, _ = free_bytes(state_dir)
    if free < need:
        raise Refused("no-space", f"needs {human(need)} (mirror {human(size_bytes)} + journal "
                                  f"{human(journal_size)} + {human(MARGIN)} for its state), "
                                  f"{human(free)} free in {state_dir}: free space or provision "
                                  f"a replica on a block device")


def leftovers(state_dir: Path, volume: uuid.UUID) -> list[Path]:
    d = Path(state_dir) / str(volume)
    return sorted(d.iterdir()) if d.is_dir() else []


def create(state_dir: Path, hello: Hello, journal_size: int) -> ProvisionedSpec:
    """Record a new provisioned replica for ``hello``'s volume (its spec file only: the
    replica's files follow when it is opened). Refused (``Refused``) when files are in the way
    or the space is short; nothing is created then."""
    in_the_way = leftovers(state_dir, hello.volume_uuid)
    if in_the_way:
        names = ", ".join(p.name for p in in_the_way)
        raise Refused("unknown-volume", f"volume {hello.volume_uuid} has no replica here but "
                                        f"{in_the_way[0].parent} holds files ({names}), e.g. of "
                                        f"a replica forgotten with its data kept: remove that "
                                        f"directory to let the primary provision it anew, or add "
                                        f"a [[volume]] for it to keep using them")
    check_space(state_dir, hello.size_bytes, journal_size)
    group = group_replica.members_of(hello)[0] if hello.group is not None else ""
    spec = ProvisionedSpec(hello.volume_uuid, hello.size_bytes, hello.block_size,
                           hello.identity, hello.name, journal_size, time.time(), group)
    path = spec_path(state_dir, hello.volume_uuid)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if group:       # one mirror per member, laid out as the primary's (before the spec)
            group_replica.provision(path.parent, hello)
        write_json_atomic(path, spec.to_json())
    except BaseException:
        discard_new(state_dir, hello.volume_uuid)      # it held nothing before (checked)
        raise
    return spec


def discard_new(state_dir: Path, volume: uuid.UUID) -> None:
    """Undo ``create`` when opening the new replica failed (e.g. ENOSPC preallocating it)."""
    shutil.rmtree(Path(state_dir) / str(volume), ignore_errors=True)


def forget(state_dir: Path, cfg: ReplicaConfig, *, remove_data: bool
           ) -> tuple[list[str], list[str]]:
    """Drop a provisioned replica (closed: the receiver no longer serves it). Its spec file
    always goes (it is not reopened at the next start); with ``remove_data`` every file of the
    replica and its directory go too. Returns (removed paths, kept paths)."""
    removed: list[str] = []
    spec = spec_path(state_dir, cfg.spec.uuid)
    directory = spec.parent
    if spec.exists():
        spec.unlink()
        sync_dir(directory)     # durably gone: the next start does not reopen the replica
        removed.append(str(spec))
    if remove_data:
        for p in sorted(directory.iterdir()) if directory.is_dir() else []:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(str(p))
        if directory.is_dir():
            directory.rmdir()
            removed.append(str(directory))
    kept = [str(p) for p in sorted(directory.iterdir())] if directory.is_dir() else []
    if kept:
        kept.append(str(directory))
    return removed, kept
