"""Errors of the write fork. Journal errors (``InvalidRequest``, ``JournalMismatch``, ...)
come from ``appliance.journal`` and pass through unchanged, so callers catch one class."""

from __future__ import annotations


class VolumeError(Exception):
    """Base of the errors raised by ``appliance.volume`` itself."""


class VolumeConfigError(VolumeError, ValueError):
    """The configuration cannot work; the message says which setting to fix."""


class NoSpaceError(VolumeConfigError):
    """The file system cannot hold the volume's files at their full size."""


class BitmapError(VolumeError):
    """The bitmap file is not this volume's (uuid, geometry or format version)."""


class MediumError(VolumeError):
    """Mirror, journal or bitmap I/O failed. ``kind`` is "read" or "write" (for sense data)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ("read", "write"):
            raise ValueError(f"MediumError kind must be 'read' or 'write', not {kind!r}")
        super().__init__(message)
        self.kind = kind


class SyncAborted(VolumeError):
    """A write waiting for the DR (a synchronous mode) was released because its device stops:
    it is local, not known durable at the DR, so it must not complete as GOOD; the host
    retries it (docs/volume.md, "Synchronous modes")."""
