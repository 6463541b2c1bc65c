"""The promotion base: which image a promoted DR mirror holds, so the site that later serves it
can record only what it changes from then on (docs/failover.md, section 3; issue 18).

``promote`` (``appliance/replication/dr/promotion.py``) leaves a *marker* file beside the mirror
naming that image: the primary volume whose image it is (the lineage), the seq it holds it
after, and the epoch the promotion raised. The handler that first opens the mirror with a new
journal takes the marker over into its bitmap header (``journal_link.adopt_promoted_mirror``)
instead of marking every chunk, and removes it. A marker it cannot trust (torn, for a volume of
another size, or older than the mirror's last write) is ignored with a WARNING: the handler
then marks every chunk, which costs a full compare by hash and never loses data.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.statefile import remove_durably, write_json_atomic
from appliance.volume import group_layout

__all__ = ["PromotionBase", "marker_path", "read_marker", "remove_marker", "write_marker"]

log = logging.getLogger("appliance.volume")

_U64 = 1 << 64
_KEYS = ("lineage", "seq", "generation", "promoted_ns")


@dataclass(frozen=True, slots=True)
class PromotionBase:
    """The image a promoted mirror held when it was promoted."""

    lineage: uuid.UUID   # volume uuid of the primary whose image the mirror holds
    seq: int             # the mirror holds that lineage's image after this seq
    generation: int      # the epoch the promotion raised
    promoted_ns: int     # the promoting site's wall clock at promotion, ns since the epoch

    def __post_init__(self) -> None:
        if not isinstance(self.lineage, uuid.UUID) or self.lineage.int == 0:
            raise ValueError(f"lineage must be a volume uuid other than the nil one, "
                             f"not {self.lineage!r}")
        for key in _KEYS[1:]:
            value = getattr(self, key)
            if type(value) is not int or not 0 <= value < _U64:
                raise ValueError(f"{key} must be an integer from 0 to 2**64-1, not {value!r}")

    def to_dict(self) -> dict:
        return {"lineage": str(self.lineage), "seq": self.seq, "generation": self.generation,
                "promoted_ns": self.promoted_ns}

    @classmethod
    def from_dict(cls, d: dict) -> PromotionBase:
        """ValueError naming the key that is missing or wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"a promotion base must be an object, not {d!r}")
        for key in _KEYS:
            if key not in d:
                raise ValueError(f"promotion base lacks {key!r}")
        try:
            lineage = uuid.UUID(d["lineage"])
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"promotion base key 'lineage' is not a uuid: "
                             f"{d['lineage']!r}") from err
        for key in _KEYS[1:]:
            if type(d[key]) is not int:
                raise ValueError(f"promotion base key {key!r} must be an integer, "
                                 f"not {d[key]!r}")
        try:
            return cls(lineage, d["seq"], d["generation"], d["promoted_ns"])
        except ValueError as err:
            raise ValueError(f"promotion base: {err}") from err


def marker_path(mirror: str | os.PathLike) -> Path:
    """The marker beside ``mirror``, links followed: the cfgstring that serves a promoted
    mirror may name it through a link, and the marker belongs to the file, not the name."""
    return Path(f"{os.path.realpath(mirror)}.promotion-base.json")


def write_marker(mirror: str | os.PathLike, base: PromotionBase, size_bytes: int) -> None:
    """Leave the marker beside ``mirror`` durably (temporary file, fsync, rename, fsync of the
    directory). ``size_bytes``: the volume's size, checked again by ``read_marker``."""
    write_json_atomic(marker_path(mirror), {**base.to_dict(), "size_bytes": size_bytes})


def read_marker(mirror: str | os.PathLike, size_bytes: int) -> PromotionBase | None:
    """The base the marker beside ``mirror`` names; None when there is none, or (with a WARNING
    saying why) when it cannot be trusted: unreadable, for another size, or older than the
    mirror's last write (something wrote the image after the promotion)."""
    path = marker_path(mirror)
    try:
        text = path.read_text()
        marker_mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("promotion marker %s cannot be read (%s); ignored: the volume is "
                    "marked for a full resync", path, err)
        return None
    try:
        d = json.loads(text)
        base = PromotionBase.from_dict(d)
        if d.get("size_bytes") != size_bytes:
            raise ValueError(f"it was written for a volume of {d.get('size_bytes')!r} bytes, "
                             f"this one has {size_bytes}")
    except ValueError as err:          # json.JSONDecodeError is one
        log.warning("promotion marker %s is not usable (%s); ignored: the volume is marked "
                    "for a full resync", path, err)
        return None
    written = _mirror_mtime_ns(mirror)
    if written is not None and written > marker_mtime:
        log.warning("promotion marker %s is older than the last write to the mirror %s: the "
                    "mirror no longer holds the promoted image of volume %s at seq %d; ignored: "
                    "the volume is marked for a full resync", path, mirror, base.lineage,
                    base.seq)
        return None
    return base


def remove_marker(mirror: str | os.PathLike) -> None:
    """Remove the marker beside ``mirror`` durably; nothing to do when there is none."""
    remove_durably(marker_path(mirror))


def _mirror_mtime_ns(mirror: str | os.PathLike) -> int | None:
    """When a regular-file mirror was last written (a block device's node does not say); for
    a consistency group's layout, the newest of the layout and its members' files."""
    try:
        st = os.stat(mirror)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if not group_layout.is_layout_path(mirror):
        return st.st_mtime_ns
    try:
        members = group_layout.load(mirror).members
    except group_layout.GroupLayoutError:
        return st.st_mtime_ns
    return max([st.st_mtime_ns, *(t for m in members
                                  if (t := _mirror_mtime_ns(m.mirror)) is not None)])
