"""Helpers over a command's data buffers (Sequence[memoryview], the ring's iovecs).

Data stays where the kernel put it: slices of the buffers are handed on, and bytes are only
joined when a small piece straddles two buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from appliance.scsi import sense


def total_len(bufs: Sequence[memoryview]) -> int:
    return sum(len(buf) for buf in bufs)


def byte_views(bufs: Sequence[memoryview]) -> list[memoryview]:
    """The buffers as flat unsigned-byte views (the ring hands out 'B' views already)."""
    return [buf if buf.format == "B" and buf.ndim == 1 else buf.cast("B") for buf in bufs]


def take(bufs: Sequence[memoryview], nbytes: int) -> list[memoryview]:
    """Slices covering the first `nbytes` bytes of the buffers (fewer if they are short)."""
    out: list[memoryview] = []
    for buf in bufs:
        if nbytes <= 0:
            break
        if len(buf) == 0:
            continue
        piece = buf[:nbytes]
        out.append(piece)
        nbytes -= len(piece)
    return out


def region(bufs: Sequence[memoryview], start: int, length: int) -> memoryview:
    """Bytes [start, start+length) of the buffers: a view if one buffer holds them all,
    otherwise a joined copy (only for small pieces: a block, a parameter list)."""
    pieces: list[memoryview] = []
    pos = 0
    end = start + length
    for buf in bufs:
        lo, hi = pos, pos + len(buf)
        pos = hi
        if hi <= start or length == 0:
            continue
        if lo >= end:
            break
        pieces.append(buf[max(start - lo, 0): min(end, hi) - lo])
    got = sum(len(piece) for piece in pieces)
    if got != length:
        raise sense.invalid_field_in_command_iu(start + length, pos)
    if len(pieces) == 1:
        return pieces[0]
    return memoryview(b"".join(pieces))


def block_pieces(bufs: Sequence[memoryview], nbytes: int,
                 block_size: int) -> Iterator[tuple[int, memoryview]]:
    """Split the first `nbytes` (a whole number of blocks) into block-aligned pieces:
    (block index, view). One piece per buffer when buffers are block-multiples (they are on
    the ring: the data area is allocated in pages); a block straddling two buffers is joined.
    """
    block = 0
    carry = bytearray()
    for buf in take(bufs, nbytes):
        if carry:
            need = block_size - len(carry)
            carry += buf[:need]
            buf = buf[need:]
            if len(carry) < block_size:
                continue
            yield block, memoryview(bytes(carry))
            block += 1
            carry = bytearray()
        whole = len(buf) - len(buf) % block_size
        if whole:
            yield block, buf[:whole]
            block += whole // block_size
        carry += buf[whole:]
    if carry:
        raise ValueError(f"{nbytes} bytes is not a whole number of {block_size}-byte blocks "
                         "held by the buffers")


def copy_in(data: bytes | memoryview, bufs: Sequence[memoryview]) -> int:
    """Copy `data` into the Data-In buffers, as much as fits; zero the rest of them so no
    stale ring bytes reach the initiator (the kernel zeroes a data page only when it first
    allocates it: docs/scsi.md, "Decisions"). Returns the bytes copied."""
    src = memoryview(data)
    done = 0
    for buf in bufs:
        count = min(len(buf), len(src) - done)
        if count > 0:
            buf[:count] = src[done:done + count]
            done += count
        if count < len(buf):
            buf[max(count, 0):] = bytes(len(buf) - max(count, 0))
    return done


def zero_after(bufs: Sequence[memoryview], offset: int) -> None:
    """Zero every buffer byte from `offset` on (tail of a Data-In area we did not fill)."""
    pos = 0
    for buf in bufs:
        lo = max(offset - pos, 0)
        if lo < len(buf):
            buf[lo:] = bytes(len(buf) - lo)
        pos += len(buf)
