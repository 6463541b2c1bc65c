"""Errors of the journal. Messages say what is wrong and what to do about it."""

from __future__ import annotations


class JournalError(Exception):
    """Base class of every journal error."""


class JournalFull(JournalError):
    """Appending would overwrite records that are not reclaimable yet; nothing was written."""


class JournalCorrupt(JournalError):
    """A record that must be intact is not. `position` is the byte offset in the file."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(f"{message} (at byte offset {position})")
        self.position = position


class JournalMismatch(JournalError):
    """Not our journal: another volume's, an unknown format version, or wrong geometry."""


class RecordsGone(JournalError):
    """The requested records were already reclaimed (acknowledged and on the mirror)."""


class InvalidRequest(JournalError, ValueError):
    """A malformed request (misaligned, out of range, oversize); nothing was written."""
