"""The crash-safe circular write-ahead journal (docs/journal-format.md, docs/internals.md)."""

from appliance.journal.errors import (
    InvalidRequest,
    JournalCorrupt,
    JournalError,
    JournalFull,
    JournalMismatch,
    RecordsGone,
)
from appliance.journal.format import FORMAT_VERSION, JBLOCK, MIN_JOURNAL_BYTES
from appliance.journal.model import JournalUsage, OpKind, Record, WriteOp
from appliance.journal.reader import JournalReader
from appliance.journal.volume_files import VolumeFiles
from appliance.journal.writer import Journal

__all__ = [
    "FORMAT_VERSION",
    "JBLOCK",
    "MIN_JOURNAL_BYTES",
    "InvalidRequest",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalMismatch",
    "JournalReader",
    "JournalUsage",
    "OpKind",
    "Record",
    "RecordsGone",
    "VolumeFiles",
    "WriteOp",
]
