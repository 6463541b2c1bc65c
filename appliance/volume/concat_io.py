"""A consistency group's mirror: its members' mirrors end to end (``group_layout``), as one
``BlockIO``. Reads and writes are cut at member boundaries; the gaps between members (the
alignment padding) read as zeros and take no writes, which never happen there since no LBA
of a member falls in them.

A retired member (it left the group, ``group_layout.GroupLayout.retire``) keeps its range:
it reads as zeros and a write there is dropped, not refused, since a redo after a crash may
still replay the journal records it was written with. A member that joins a running group is
added with ``add_member`` (the group's volume then grows over it, ``Volume.resize``).

``open_mirror`` is the one place a mirror path is opened: a ``.group.json`` layout gives this
concatenation, anything else the file or device itself.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from appliance import storage
from appliance.storage import BlockIO, StorageError
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout


class RetiredRange:
    """A retired member's range: zeros to read, writes dropped."""

    def __init__(self, nbytes: int) -> None:
        self._size = nbytes

    def pread_into(self, offset: int, buf: memoryview) -> None:
        buf[:] = bytes(len(buf))

    def pwritev(self, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
        pass

    def sync(self) -> None:
        pass

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        pass


class ConcatBlockIO:
    """The members of ``layout`` opened in order (``ios[i]`` is member i's mirror, a
    ``RetiredRange`` for a retired member).

    The group sizes this mirror itself (``sized_by_layout``): ``Volume.resize`` must not
    write zeros over a member that joins, which may bring data."""

    sized_by_layout = True

    def __init__(self, layout: GroupLayout, ios: Sequence[BlockIO], path: str = "") -> None:
        self.path = path
        self._set(layout, list(ios))

    def _set(self, layout: GroupLayout, ios: list[BlockIO]) -> None:
        bs = layout.block_size
        # (start, end, io) in bytes, in address order; replaced whole, never changed in place.
        self._spans = [(m.offset_blocks * bs, m.end_blocks * bs, io)
                       for m, io in zip(layout.members, ios, strict=True)]
        self._ios = ios
        self.layout = layout
        self._size = layout.num_blocks * bs

    def add_member(self, layout: GroupLayout, io: BlockIO) -> None:
        """``layout`` is this one with one member appended, whose mirror ``io`` is."""
        def places(members):
            return [(m.name, m.offset_blocks, m.num_blocks) for m in members]
        if not layout.members or places(layout.members[:-1]) != places(self.layout.members):
            raise ValueError(f"{self.path}: the new layout does not extend the open one")
        self._set(layout, [*self._ios, io])

    def retire(self, layout: GroupLayout) -> None:
        """``layout`` is this one with members retired: their files are closed, their ranges
        read zeros."""
        ios, gone = list(self._ios), []
        for i, (old, new) in enumerate(zip(self.layout.members, layout.members, strict=True)):
            if new.retired and not old.retired:
                gone.append(ios[i])
                ios[i] = RetiredRange(new.num_blocks * layout.block_size)
        self._set(layout, ios)
        for io in gone:             # after: nothing new reaches them through the spans
            io.close()

    def _pieces(self, offset: int, length: int):
        """(io or None for a gap, offset in it, start in the request, length) pieces."""
        if offset < 0 or offset + length > self._size:
            raise StorageError(errno.EINVAL, f"{self.path}: {length} bytes at {offset} are "
                                             f"outside the group's {self._size} bytes")
        pos, end = offset, offset + length
        for start, stop, io in self._spans:
            if pos >= end:
                break
            if stop <= pos:
                continue
            if pos < start:                      # alignment gap before this member
                take = min(start, end) - pos
                yield None, 0, pos - offset, take
                pos += take
                if pos >= end:
                    break
            take = min(stop, end) - pos
            yield io, pos - start, pos - offset, take
            pos += take
        if pos < end:
            yield None, 0, pos - offset, end - pos

    def pread_into(self, offset: int, buf: memoryview) -> None:
        view = memoryview(buf).cast("B")
        for io, at, start, length in self._pieces(offset, len(view)):
            part = view[start:start + length]
            if io is None:
                part[:] = bytes(length)
            else:
                io.pread_into(at, part)

    def pwritev(self, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
        data = [memoryview(b).cast("B") for b in bufs]
        total = sum(len(d) for d in data)
        if len(self._spans) == 1 or self._within_one(offset, total):
            io, at = self._locate(offset)
            io.pwritev(at, bufs)
            return
        flat = memoryview(b"".join(data))
        pieces = list(self._pieces(offset, total))
        # Zeros in a gap are a resync region's padding past a member's end; data there would
        # be lost, so the whole write is refused before any of it lands.
        for io, _, start, length in pieces:
            if io is None and any(flat[start:start + length]):
                raise StorageError(errno.EINVAL, f"{self.path}: a write at {offset + start} "
                                                 f"falls between members")
        for io, at, start, length in pieces:
            if io is not None:
                io.pwritev(at, [flat[start:start + length]])

    def _within_one(self, offset: int, length: int) -> bool:
        return any(start <= offset and offset + length <= stop
                   for start, stop, _ in self._spans)

    def _locate(self, offset: int) -> tuple[BlockIO, int]:
        for start, stop, io in self._spans:
            if start <= offset < stop:
                return io, offset - start
        raise StorageError(errno.EINVAL, f"{self.path}: offset {offset} is in no member")

    def sync(self) -> None:
        for io in self._ios:
            io.sync()

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        ios, self._ios = self._ios, []
        for io in ios:
            io.close()

    def __enter__(self) -> ConcatBlockIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_mirror(path: str | os.PathLike[str], *, create_size: int | None = None) -> BlockIO:
    """The mirror at ``path``: a group layout's members concatenated, else the file or
    device (``storage.open_file``; ``create_size`` as there, per member for a group)."""
    if not group_layout.is_layout_path(path):
        return storage.open_file(path, create_size=create_size)
    layout = group_layout.load(path)
    opened: list[BlockIO] = []
    try:
        for m in layout.members:
            if m.retired:
                opened.append(RetiredRange(m.num_blocks * layout.block_size))
                continue
            opened.append(storage.open_file(
                m.mirror, create_size=None if create_size is None
                else m.num_blocks * layout.block_size))
            have = opened[-1].size()
            if have < m.num_blocks * layout.block_size:
                raise StorageError(errno.ENOSPC, f"member {m.name!r} of group {layout.name!r}: "
                                                 f"{m.mirror} holds {have} bytes, the group "
                                                 f"has {m.num_blocks * layout.block_size}")
    except BaseException:
        for io in opened:
            io.close()
        raise
    return ConcatBlockIO(layout, opened, os.fspath(path))


def mirror_files(path: str | os.PathLike[str], size: int) -> list[tuple[Path, int]]:
    """The files behind a mirror path and the bytes each holds: a group's members, else the
    path itself with ``size``."""
    if not group_layout.is_layout_path(path):
        return [(Path(path), size)]
    layout = group_layout.load(path)
    return [(Path(m.mirror), m.num_blocks * layout.block_size) for m in layout.members]
