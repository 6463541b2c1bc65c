"""The two records that cross the TCMU ↔ SCSI boundary (contract: docs/internals.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class Status(IntEnum):
    """SAM-5 status codes we return."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    BUSY = 0x08
    TASK_SET_FULL = 0x28


class ScsiCommand:
    """One command taken off the ring.

    `data` are the Data-Out buffers of a write-type command or the Data-In buffers of a
    read-type command, in order, as memoryviews straight into the ring's data area.

    What `@dataclass(slots=True)` would make, written out: the device loop builds one per
    command, and a dataclass's generated __init__ stays interpreted code even when this
    module is compiled (docs/compiled.md).
    """

    __slots__ = ("cdb", "data", "bidi_in")
    __match_args__ = ("cdb", "data", "bidi_in")

    def __init__(self, cdb: bytes, data: Sequence[memoryview] = (),
                 bidi_in: Sequence[memoryview] = ()) -> None:
        self.cdb = cdb
        self.data = data
        self.bidi_in = bidi_in

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}(cdb={self.cdb!r}, data={self.data!r}, "
                f"bidi_in={self.bidi_in!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScsiCommand) or other.__class__ is not self.__class__:
            return NotImplemented
        return (self.cdb, self.data, self.bidi_in) == (other.cdb, other.data, other.bidi_in)

    __hash__ = None  # type: ignore[assignment]   # mutable and compared by value, as a dataclass


@dataclass(frozen=True)
class ScsiResult:
    """What to put in the ring's response: status, sense (for CHECK CONDITION), read_len.

    `read_len` is the number of valid Data-In bytes when fewer than the buffers hold
    (the TCMU layer then sets the READ_LEN flag, target_core_user.c `tcmu_handle_completion`);
    None means "all of it".
    """

    status: int
    sense: bytes = b""
    read_len: int | None = None

    @property
    def good(self) -> bool:
        return self.status == Status.GOOD


GOOD: Final = ScsiResult(Status.GOOD)
