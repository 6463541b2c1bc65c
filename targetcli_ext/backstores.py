"""The ``user:mirror`` backstores of LIO as replication needs them: name, config string,
size, and what follows from them (journal, mirror, bitmap, volume uuid, block size).

Read through rtslib's storage objects (``/backstores/user:mirror/<name>`` in targetcli), never
typed in again by the admin: the config string is parsed by the handler's own parser
(``appliance.tcmu.cfgstring.parse_config``) and the uuid is the one the handler derives
(``mirror_volume_uuid``), so the transmitter's file cannot disagree with the handler.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.tcmu.cfgstring import SUBTYPE, ConfigStringError, MirrorConfig, parse_config
from appliance.volume.identity import mirror_volume_uuid
from targetcli_ext.model import ModelError

StorageObjects = Callable[[], Iterable[object]]


@dataclass(frozen=True)
class MirrorBackstore:
    name: str
    config: MirrorConfig
    size_bytes: int

    @property
    def uuid(self) -> uuid.UUID:
        return mirror_volume_uuid(self.config.mirror)

    @property
    def block_size(self) -> int:
        return self.config.block_size


def rtslib_storage_objects() -> Iterable[object]:
    from rtslib_fb import RTSRoot
    return RTSRoot().storage_objects


def _kind(so: object) -> str:
    plugin = getattr(so, "plugin", "?")
    if plugin == "user":
        config = getattr(so, "config", None) or ""
        return f"user:{config.partition('/')[0] or '?'}"
    return str(plugin)


def mirror_backstores(objects: Iterable[object]) -> dict[str, MirrorBackstore | str]:
    """Every ``user:mirror`` backstore by name: the backstore, or why it cannot be
    replicated (its config string does not parse)."""
    found: dict[str, MirrorBackstore | str] = {}
    for so in objects:
        if _kind(so) != f"user:{SUBTYPE}":
            continue
        name = so.name
        try:
            found[name] = MirrorBackstore(name, parse_config(so.config), int(so.size))
        except (ConfigStringError, TypeError, ValueError) as err:
            found[name] = f"its config string {so.config!r} does not parse: {err}"
    return found


def find_mirror_backstore(objects: Iterable[object], name: str) -> MirrorBackstore:
    """The ``user:mirror`` backstore ``name``, or ModelError saying what is wrong."""
    objects = list(objects)
    mirrors = mirror_backstores(objects)
    found = mirrors.get(name)
    if isinstance(found, MirrorBackstore):
        return found
    if isinstance(found, str):
        raise ModelError(f"backstore user:mirror/{name} cannot be replicated: {found}")
    others = sorted(f"{_kind(so)}/{so.name}" for so in objects if so.name == name)
    usable = ", ".join(sorted(n for n, b in mirrors.items()
                              if isinstance(b, MirrorBackstore))) or "none"
    if others:
        raise ModelError(f"backstore {name!r} is {', '.join(others)}, not user:mirror: only a "
                         f"user:mirror backstore has the journal replication ships (create "
                         f"one under /backstores/user:mirror; user:mirror backstores: "
                         f"{usable})")
    raise ModelError(f"backstore {name!r} does not exist: give the name of a backstore under "
                     f"/backstores/user:mirror (there: {usable})")


def config_keys(config: str | None) -> dict[str, str]:
    """The keys of a ``mirror/...`` config string as written, without the handler's checks:
    what a backstore says it is (its ``group``, its ``mirror``) also while the handler's
    parser refuses a key (``appliance/tcmu/cfgstring.py``)."""
    subtype, sep, body = (config or "").partition("/")
    if not sep or subtype != SUBTYPE:
        return {}
    keys = {}
    for item in body.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            keys.setdefault(key.strip(), value)
    return keys


def group_members(objects: Iterable[object]) -> dict[str, tuple[str, str | None]]:
    """The ``user:mirror`` backstores that name a consistency group (``group=`` in their
    config string): backstore name -> (group, mirror)."""
    found = {}
    for so in objects:
        if _kind(so) != f"user:{SUBTYPE}":
            continue
        keys = config_keys(getattr(so, "config", None))
        if keys.get("group"):
            found[so.name] = (keys["group"], keys.get("mirror"))
    return found


def backstores_using(objects: Iterable[object], *paths: str) -> list[str]:
    """The ``user:mirror`` backstores whose journal or mirror is one of ``paths`` (the same
    file, also through another name): a handler serves them, so no receiver may write them."""
    found = []
    for name, b in sorted(mirror_backstores(objects).items()):
        if isinstance(b, MirrorBackstore) and any(
                _same_file(mine, other) for mine in (b.config.journal, b.config.mirror)
                if mine is not None         # a group member's journal is its group's
                for other in paths):
            found.append(name)
    return found


def _same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
