"""Copy into a caller's scatter list (the Data-In buffers of one read) at a byte offset."""

from __future__ import annotations

from collections.abc import Sequence


def total_length(bufs: Sequence[memoryview]) -> int:
    return sum(buf.nbytes for buf in bufs)


def _spans(bufs: Sequence[memoryview], offset: int, length: int):
    """Yield (buffer view, start in the logical range) covering [offset, offset+length)."""
    pos = 0
    end = offset + length
    for buf in bufs:
        view = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
        lo, hi = max(offset, pos), min(end, pos + view.nbytes)
        if lo < hi:
            yield view[lo - pos:hi - pos], lo - offset
        pos += view.nbytes
        if pos >= end:
            return


def copy_in(bufs: Sequence[memoryview], offset: int, data: bytes | memoryview) -> None:
    """bufs[offset : offset+len(data)] = data, across buffer boundaries."""
    src = memoryview(data).cast("B")
    for dst, start in _spans(bufs, offset, len(src)):
        dst[:] = src[start:start + len(dst)]


def fill_pattern(bufs: Sequence[memoryview], offset: int, length: int,
                 pattern: bytes | memoryview, phase: int = 0) -> None:
    """Fill with `pattern` repeated, where byte 0 of the range is pattern[phase]."""
    pat = bytes(pattern)
    period = len(pat)
    for dst, start in _spans(bufs, offset, length):
        first = (phase + start) % period
        reps = (first + len(dst)) // period + 1
        dst[:] = (pat * reps)[first:first + len(dst)]


def mirror_segments(bufs: Sequence[memoryview], offset: int, length: int):
    """(view, logical start) pieces of the scatter list, for preads."""
    return _spans(bufs, offset, length)
