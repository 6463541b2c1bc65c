"""The `mirror` handler's config string: `mirror/<key>=<value>;<key>=<value>;...`.

This is what targetcli's `create ... cfgstring=...` passes (prefixed with `mirror/`), what the
kernel stores in `dev_config` and what ends up in the UIO device name. Example:

    mirror/mirror=/var/lib/appliance/vol1.img;journal=/var/lib/appliance/vol1.jnl;journal_size=1G

Keys:
  mirror        absolute path of the local mirror file or block device (required)
  journal       absolute path of the write-ahead journal file or device (required)
  journal_size  journal size, bytes or with K/M/G/T (binary); needed when the journal is created
  block_size    volume block size the host sees: 512 (default) or 4096
  bitmap        absolute path of the dirty-region bitmap (default: `<journal>.bitmap`)
  wce           write cache enabled at start: 1 (default) or 0
  group         the consistency group this volume is a member of (docs/groups.md): its
                journal and bitmap are the group's (`<groups dir>/<group>.jnl`, `.bitmap`), so
                `journal` and `bitmap` are refused with it; the group's layout
                `<groups dir>/<group>.group.json` must exist (the shell's
                `/replication/groups create`). The member is named by the backstore.

    mirror/mirror=/var/lib/appliance/log.img;group=db

Kernel and rtslib limits (target_core_user.c `tcmu_set_configfs_dev_params`; rtslib
`UserBackedStorageObject`): at most 255 bytes including `mirror/`, no `,` (the control tokenizer
splits on it), no `:` (rtslib refuses it), no newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from appliance.volume import group_layout

SUBTYPE = "mirror"
MAX_CONFIG_BYTES = 255
MIN_JOURNAL_SIZE = 1 << 20
_FORBIDDEN = {",": "a comma", ":": "a colon", "\n": "a newline", "\r": "a carriage return",
              "\0": "a NUL byte"}
_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
KNOWN_KEYS = ("mirror", "journal", "journal_size", "block_size", "bitmap", "wce", "group")
# Keys documented once and not implemented: refused with their own reason.
UNSUPPORTED_KEYS: dict[str, str] = {}

CONFIG_DESC = (
    "mirror=<abs path>;journal=<abs path>;journal_size=<size, e.g. 1G>"
    "[;block_size=512|4096][;bitmap=<abs path>][;wce=1|0]  or  "
    "mirror=<abs path>;group=<group name>[;block_size=512|4096][;wce=1|0]  "
    "(no ',' ':' or newline; at most 255 bytes with 'mirror/')"
)


class ConfigStringError(ValueError):
    """The config string is wrong; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    mirror: str
    journal: str | None           # None for a group member: the group's journal
    journal_size: int | None = None
    block_size: int = 512
    bitmap: str | None = None
    wce: bool = True
    group: str | None = None

    @property
    def bitmap_path(self) -> str | None:
        if self.journal is None:
            return None
        return self.bitmap or self.journal + ".bitmap"

    def to_cfgstring(self) -> str:
        """The handler part (after `mirror/`), in the canonical key order."""
        parts = [f"mirror={self.mirror}"]
        if self.journal is not None:
            parts.append(f"journal={self.journal}")
        if self.group is not None:
            parts.append(f"group={self.group}")
        if self.journal_size is not None:
            parts.append(f"journal_size={self.journal_size}")
        if self.block_size != 512:
            parts.append(f"block_size={self.block_size}")
        if self.bitmap:
            parts.append(f"bitmap={self.bitmap}")
        if not self.wce:
            parts.append("wce=0")
        return ";".join(parts)


def strip_subtype(config: str) -> str:
    """`mirror/<cfg>` → `<cfg>`; other subtypes are refused."""
    subtype, sep, rest = config.partition("/")
    if not sep or "=" in subtype:
        raise ConfigStringError(f"config string must start with '{SUBTYPE}/', got {config!r}")
    if subtype != SUBTYPE:
        raise ConfigStringError(f"handler subtype is '{subtype}', this daemon serves '{SUBTYPE}'")
    return rest


def parse_config(config: str) -> MirrorConfig:
    """Parse a full dev_config (`mirror/...`). Raises ConfigStringError saying what is wrong."""
    raw = config.encode("utf-8", errors="surrogateescape")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigStringError(f"config string is {len(raw)} bytes; the kernel keeps at most "
                                f"{MAX_CONFIG_BYTES} (including '{SUBTYPE}/'): use shorter paths")
    for char, name in _FORBIDDEN.items():
        if char in config:
            raise ConfigStringError(f"config string contains {name} at position "
                                    f"{config.index(char)}; LIO cannot store it")
    body = strip_subtype(config)
    if not body:
        raise ConfigStringError(f"empty config string; expected {CONFIG_DESC}")
    values: dict[str, str] = {}
    for item in body.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigStringError(f"'{item}' is not key=value; expected {CONFIG_DESC}")
        if key in UNSUPPORTED_KEYS:
            raise ConfigStringError(f"{key}={value}: {UNSUPPORTED_KEYS[key]}")
        if key not in KNOWN_KEYS:
            raise ConfigStringError(f"unknown key '{key}'; known keys: {', '.join(KNOWN_KEYS)}")
        if key in values:
            raise ConfigStringError(f"key '{key}' given twice")
        values[key] = value
    group = values.get("group")
    if group is not None:
        for key in ("journal", "bitmap"):
            if key in values:
                raise ConfigStringError(
                    f"{key}= and group= together: a member of group {group!r} uses the "
                    f"group's {key} (in the handler's groups directory); remove '{key}='")
        if not group_layout.valid_name(group):
            raise ConfigStringError(f"group={group}: a group name is letters, digits, '_', "
                                    "'.' and '-', starting with a letter or digit")
    for required in ("mirror",) if group is not None else ("mirror", "journal"):
        if required not in values:
            raise ConfigStringError(f"missing '{required}=<absolute path>'")
    mirror = _abs_path("mirror", values["mirror"])
    journal = _abs_path("journal", values["journal"]) if "journal" in values else None
    bitmap = _abs_path("bitmap", values["bitmap"]) if "bitmap" in values else None
    paths = [path for path in (mirror, journal, bitmap) if path]
    if len(set(paths)) != len(paths):
        raise ConfigStringError("mirror, journal and bitmap must be different files")
    journal_size = _size("journal_size", values["journal_size"]) if "journal_size" in values else None
    if journal_size is not None and (journal_size < MIN_JOURNAL_SIZE or journal_size % 4096):
        raise ConfigStringError(f"journal_size={values['journal_size']} must be at least 1M and a "
                                "multiple of 4K")
    block_size = 512
    if "block_size" in values:
        if values["block_size"] not in ("512", "4096"):
            raise ConfigStringError(f"block_size={values['block_size']}: use 512 or 4096")
        block_size = int(values["block_size"])
    wce = values.get("wce", "1")
    if wce not in ("0", "1"):
        raise ConfigStringError(f"wce={wce}: use 1 (write cache on) or 0")
    return MirrorConfig(mirror, journal, journal_size, block_size, bitmap, wce == "1", group)


def check_config(config: str) -> tuple[bool, str]:
    """The D-Bus CheckConfig answer: (True, "success") or (False, what to fix)."""
    try:
        parse_config(config)
    except ConfigStringError as err:
        return False, str(err)
    return True, "success"


def _abs_path(key: str, value: str) -> str:
    if not value:
        raise ConfigStringError(f"'{key}=' needs a path")
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ConfigStringError(f"{key}={value} must be an absolute path")
    if ".." in path.parts:
        raise ConfigStringError(f"{key}={value} must not contain '..'")
    return str(path)


def _size(key: str, value: str) -> int:
    match = _SIZE.match(value.strip())
    if not match:
        raise ConfigStringError(f"{key}={value}: expected a number with an optional K/M/G/T suffix")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]
