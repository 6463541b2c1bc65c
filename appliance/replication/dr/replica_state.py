"""The replica's durable state file (``<state_dir>/<uuid>/state.json``): who owns the volume,
whether its image is consistent, whether it was promoted.

This module is the only reader and writer of the file. ``save`` replaces it atomically (write a
temporary file, fsync it, rename, fsync the directory), so a crash leaves the old or the new
state, never a mix. ``load`` refuses a file it cannot trust (not JSON, a field of the wrong type,
a format version it does not know) with ``ReplicaStateError`` naming the file and what to do.

Format versions: 3 added ``retain_s`` and ``retain_bytes`` (the retention window,
``retention_settings.py``; 0 = off, which is what older files mean); 2 added ``name`` (the volume's name on its primary, from its HELLO); 1
carries ``format_version`` (read as 2 with no name); a file without it (format 0) was written
before the field existed, holds the same fields and is read as it always was, ignoring keys no
longer used (the first releases wrote ``mirror_durable_seq``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.statefile import write_json_atomic

FORMAT_VERSION = 4
_VERSION_KEY = "format_version"
_PAIR_ANEW = ("remove the replica's files in that directory to pair it anew (its primary then "
              "sends a full copy)")


class ReplicaStateError(ValueError):
    """The state file cannot be trusted; the message names it and says what to do."""


@dataclass(frozen=True, slots=True)
class PromotionMark:
    """What a failover promotion recorded (``promotion.py``)."""

    at_seq: int                  # the mirror holds the primary's image after this seq
    generation: int              # the raised epoch
    time: float
    former_primary: str | None   # the primary fenced off by the promotion
    # The primary's clock when it wrote at_seq (the consistent point's time); None where the
    # replica did not know it (nothing applied since its last start and no retention window).
    at_time: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at_seq": self.at_seq, "at_time": self.at_time,
                "former_primary": self.former_primary,
                "generation": self.generation, "time": self.time}

    @classmethod
    def from_dict(cls, d: object) -> PromotionMark:
        if not isinstance(d, dict):
            raise TypeError(f"a promotion record must be an object, not {d!r}")
        return cls(at_seq=_int(d, "at_seq"), generation=_int(d, "generation"),
                   time=_float(d, "time"), former_primary=_opt_str(d, "former_primary"),
                   at_time=_opt_float(d, "at_time"))


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """The replica's binding and image state, as ``state.json`` holds it."""

    volume_uuid: uuid.UUID | None = None
    primary: str | None = None              # identity of the bound primary
    generation: int = 0                     # its epoch (raised by a promotion)
    inconsistent_since: float | None = None  # a resync or full copy under way since then
    consistent_seq: int | None = None       # seq of the last consistent image (undo log)
    consistent_at: int | None = None        # consistent again once this seq is applied
    full_copy_pending: bool = False         # first contact without the history, until RESYNC_BEGIN
    detached_image_seq: int | None = None   # the image kept with the journal set aside
    promoted: PromotionMark | None = None
    demoted_from: PromotionMark | None = None
    name: str = ""                          # the volume's name on its primary ("" unknown)
    retain_s: float = 0.0                   # retention window by age (0: no limit)
    retain_bytes: int = 0                   # retention window by size (0: no limit)
    # A failback onto this site's old mirror (dr/failback.py): the extents it holds beyond
    # the new primary's base, until RESYNC_BEGIN; and the admin's choice after a split brain
    # ("new-primary": copy over this site's writes, "this-site": never).
    failback_extents: list[tuple[int, int]] | None = None
    split_brain_keep: str | None = None

    @classmethod
    def load(cls, path: Path) -> ReplicaState | None:
        """The state in ``path``; None if there is no file (the replica was never paired)."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return cls.from_json(json.loads(text))
        except ReplicaStateError as err:
            raise ReplicaStateError(f"replica state {path} {err}") from err
        except (ValueError, TypeError) as err:
            raise ReplicaStateError(f"replica state {path} is damaged ({err}): restore it from "
                                    f"a backup, or {_PAIR_ANEW}") from err

    def save(self, path: Path) -> None:
        """Replace the file atomically and durably (the directory is fsync'd too)."""
        write_json_atomic(path, self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {_VERSION_KEY: FORMAT_VERSION,
                "volume_uuid": None if self.volume_uuid is None else str(self.volume_uuid),
                "primary": self.primary, "generation": self.generation,
                "inconsistent_since": self.inconsistent_since,
                "consistent_seq": self.consistent_seq, "consistent_at": self.consistent_at,
                "full_copy_pending": self.full_copy_pending,
                "detached_image_seq": self.detached_image_seq,
                "promoted": None if self.promoted is None else self.promoted.as_dict(),
                "demoted_from": None if self.demoted_from is None
                else self.demoted_from.as_dict(), "name": self.name,
                "retain_s": self.retain_s, "retain_bytes": self.retain_bytes,
                "failback_extents": None if self.failback_extents is None
                else [list(e) for e in self.failback_extents],
                "split_brain_keep": self.split_brain_keep}

    @classmethod
    def from_json(cls, d: object) -> ReplicaState:
        """Raises ReplicaStateError for an unknown format version, TypeError or ValueError
        for a damaged document."""
        if not isinstance(d, dict):
            raise TypeError(f"the file holds {type(d).__name__}, not an object")
        version = d.get(_VERSION_KEY, 0)
        if type(version) is not int or version < 0:
            raise ValueError(f"{_VERSION_KEY} must be a version number, not {version!r}")
        if version > FORMAT_VERSION:
            raise ReplicaStateError(f"has format version {version}, newer than this release "
                                    f"reads (up to {FORMAT_VERSION}): run the release that wrote "
                                    f"it, or {_PAIR_ANEW}")
        known = {f.name for f in dataclasses.fields(cls)} | {_VERSION_KEY}
        unknown = sorted(set(d) - known)
        if version >= 1 and unknown:
            raise ValueError(f"unknown keys {', '.join(unknown)}")
        # Both formats: "primary" and "generation" have always been written.
        _required(d, "primary")
        volume = _opt_str(d, "volume_uuid")
        promoted, demoted = d.get("promoted"), d.get("demoted_from")
        return cls(
            volume_uuid=None if volume is None else uuid.UUID(volume),
            primary=_opt_str(d, "primary"), generation=_int(d, "generation"),
            inconsistent_since=_opt_float(d, "inconsistent_since"),
            consistent_seq=_opt_int(d, "consistent_seq"),
            consistent_at=_opt_int(d, "consistent_at"),
            full_copy_pending=_bool(d, "full_copy_pending"),
            detached_image_seq=_opt_int(d, "detached_image_seq"),
            promoted=None if promoted is None else PromotionMark.from_dict(promoted),
            demoted_from=None if demoted is None else PromotionMark.from_dict(demoted),
            name=_opt_str(d, "name") or "",
            retain_s=_opt_float(d, "retain_s") or 0.0,
            retain_bytes=_opt_int(d, "retain_bytes") or 0,
            failback_extents=_extents(d.get("failback_extents")),
            split_brain_keep=_opt_str(d, "split_brain_keep"))


def _extents(value: object) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise TypeError(f"failback_extents must be a list, not {value!r}")
    return [(int(lba), int(n)) for lba, n in value]


def promotion_refusal(volume: uuid.UUID, *, inconsistent: bool, has_journal: bool,
                      image_seq: int | None) -> str | None:
    """Why a replica cannot be promoted, or None (the one place of these rules)."""
    if inconsistent:
        return (f"volume {volume} is inconsistent (a resync or full copy was under way): roll "
                f"it back first ('rollback' in /replication/replicas/<name> of targetcli, or "
                f"'appliance-dr rollback {volume}' with the receiver stopped) to restore its "
                f"last consistent image, then promote")
    if not has_journal and image_seq is None:
        return (f"volume {volume} has never held a replicated image (no journal, no image): "
                f"nothing to promote")
    return None



# Field readers: JSON has no int/float distinction a reader can trust, and bool is an int.

def _required(d: dict, key: str) -> object:
    if key not in d:
        raise ValueError(f"missing key {key!r}")
    return d[key]


def _int(d: dict, key: str) -> int:
    value = _required(d, key)
    if type(value) is not int:
        raise TypeError(f"{key} must be an integer, not {value!r}")
    return value


def _opt_int(d: dict, key: str) -> int | None:
    return None if d.get(key) is None else _int(d, key)


def _float(d: dict, key: str) -> float:
    value = _required(d, key)
    if type(value) not in (int, float):
        raise TypeError(f"{key} must be a number, not {value!r}")
    return float(value)


def _opt_float(d: dict, key: str) -> float | None:
    return None if d.get(key) is None else _float(d, key)


def _opt_str(d: dict, key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} must be a string, not {value!r}")
    return value


def _bool(d: dict, key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, not {value!r}")
    return value
