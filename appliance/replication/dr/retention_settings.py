"""A replica's retention settings: how long and how much of its before-images the DR keeps
(``retention.py``; docs/failover.md, "Point in time").

``retain_s`` (seconds, a duration such as ``24h``) and ``retain_bytes`` (a size such as
``200G``, powers of 1024): either, both (the window is whichever is shorter) or neither (0:
retention off, the default, which is how a replica behaved before retention existed). The
parsers here take what the admin types (the shell, ``appliance-dr``) and what a control
command carries (numbers); a refusal names the key and says what is accepted.

(targetcli_ext/model.py's ``parse_duration`` refuses 0 and knows no days, so these are their
own.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_OFF = ("0", "none", "off", "")


class RetentionSettingsError(ValueError):
    """A value refused; the message names the key."""


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    retain_s: float = 0.0       # 0: no limit by age
    retain_bytes: int = 0       # 0: no limit by size

    @property
    def enabled(self) -> bool:
        return self.retain_s > 0 or self.retain_bytes > 0

    def as_dict(self) -> dict:
        return {"retain_s": self.retain_s, "retain_bytes": self.retain_bytes}

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        parts = []
        if self.retain_s:
            parts.append(f"retain={format_duration(self.retain_s)}")
        if self.retain_bytes:
            parts.append(f"max={format_size(self.retain_bytes)}")
        return " ".join(parts)

    @classmethod
    def from_args(cls, args: dict, current: RetentionSettings | None = None
                  ) -> RetentionSettings:
        """From a control command's arguments (``retain_s``, ``retain_bytes``: numbers, or
        text as the admin types it); a key not given keeps ``current``'s value."""
        current = current or cls()
        retain_s = current.retain_s
        retain_bytes = current.retain_bytes
        if "retain_s" in args:
            retain_s = parse_retain(args["retain_s"], "retain_s")
        if "retain_bytes" in args:
            retain_bytes = parse_size(args["retain_bytes"], "retain_bytes")
        return cls(retain_s, retain_bytes)


def parse_retain(value: object, key: str = "retain") -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``24h``, ``7d``; 0, none or off for no limit."""
    how = (f"give a duration with s, m, h or d (e.g. {key}=24h), or 0 / none for no limit "
           f"by age")
    if isinstance(value, bool):
        raise RetentionSettingsError(f"{key}={value!r} is not a duration: {how}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif value is None or str(value).strip().lower() in _OFF:
        return 0.0
    else:
        m = _DURATION.fullmatch(str(value).strip())
        if not m:
            raise RetentionSettingsError(f"{key}={value!r} does not parse: {how}")
        seconds = float(m.group(1)) * _SECONDS[(m.group(2) or "").lower()]
    if seconds < 0 or seconds != seconds:
        raise RetentionSettingsError(f"{key}={value!r} must not be negative: {how}")
    return seconds


def parse_size(value: object, key: str = "max") -> int:
    """Bytes from ``1073741824``, ``512M``, ``200G``, ``1T`` (powers of 1024); 0, none or off
    for no limit."""
    how = (f"give a size with K, M, G or T (powers of 1024, e.g. {key}=200G), or 0 / none "
           f"for no limit by size")
    if isinstance(value, bool):
        raise RetentionSettingsError(f"{key}={value!r} is not a size: {how}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        size = int(value)
    elif value is None or str(value).strip().lower() in _OFF:
        return 0
    else:
        m = _SIZE.fullmatch(str(value).strip())
        if not m:
            raise RetentionSettingsError(f"{key}={value!r} does not parse: {how}")
        size = int(float(m.group(1)) * _BYTES[m.group(2).lower()])
    if size < 0:
        raise RetentionSettingsError(f"{key}={value!r} must not be negative: {how}")
    if 0 < size < 1 << 20:
        raise RetentionSettingsError(f"{key}={value!r} is less than 1M: too small to hold "
                                     f"a useful window; {how}")
    return size


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
