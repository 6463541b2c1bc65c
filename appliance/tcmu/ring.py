"""User side of the TCMU command ring: fetch with a private cursor, complete out of order.

This follows the algorithm of tcmu-design.rst as libtcmu refines it (tcmu-runner's libtcmu.c,
`tcmulib_get_next_command` and `tcmulib_command_complete`):

* Fetching walks a private cursor from the mailbox's cmd_tail towards cmd_head. PAD entries
  are skipped, TMR and unknown entries are flagged UNKNOWN_OP and skipped, and for every CMD
  entry the CDB and iovec list are copied out at once, because the response written later
  overwrites the request fields of whichever slot it lands in.
* Completing starts at cmd_tail, passes any non-CMD entries, and writes the response into the
  first CMD slot there, overwriting the slot's cmd_id with the finished command's id ("slot
  stealing", allowed by TCMU_MAILBOX_FLAG_CAP_OOOC). The kernel finds the command by the id in
  the slot and advances by the slot's length, so completion order need not match ring order.
* A batch of completions is written first and cmd_tail is stored once at the end, with a single
  aligned 4-byte store (there are no explicit barriers in Python; on x86-64 store order is
  program order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

from appliance.tcmu import layout
from appliance.tcmu.errors import RingError

_OP_MASK: Final = layout.OP_MASK
_OP_CMD: Final = layout.OP_CMD
_OP_PAD: Final = layout.OP_PAD
# Indexes of cmd_head and cmd_tail in the mailbox's 32-bit words (the loops read them directly).
_HEAD_WORD: Final = layout.MB_CMD_HEAD // 4
_TAIL_WORD: Final = layout.MB_CMD_TAIL // 4

__all__ = ["Completion", "CommandRing", "RingError"]


class Completion(NamedTuple):
    """One finished command (a NamedTuple: the device loop builds one per command)."""

    cmd_id: int
    status: int
    sense: bytes = b""
    read_len: int | None = None


class CommandRing:
    """The user-side view of one device's mailbox and ring inside the mapped region."""

    def __init__(self, region: memoryview) -> None:
        if region.format != "B" or region.ndim != 1:
            raise RingError("the region must be a flat byte memoryview")
        self.region = region
        self.region_size = len(region)
        self.mailbox = layout.read_mailbox(region)
        layout.check_mailbox(self.mailbox, self.region_size)
        self.cmdr_off = self.mailbox.cmdr_off
        self.cmdr_size = self.mailbox.cmdr_size
        self.data_off = layout.data_area_offset(self.mailbox)
        # Aligned 32-bit words for head/tail: single loads and stores, never torn.
        self._words = region[: layout.MAILBOX_SIZE].cast("I")
        self._cursor = self.cmd_tail
        self.pending = 0  # fetched CMD entries not yet completed

    def close(self) -> None:
        """Drop the views into the region so the mapping can be closed."""
        self._words.release()

    def describe(self) -> str:
        """Head, tail, cursor and outstanding count: what a stuck-I/O report needs."""
        return (f"cmd_head {self.cmd_head} cmd_tail {self.cmd_tail} cursor {self._cursor} "
                f"pending {self.pending}")

    @property
    def out_of_order_ok(self) -> bool:
        return bool(self.mailbox.flags & layout.FLAG_CAP_OOOC)

    @property
    def read_len_ok(self) -> bool:
        return bool(self.mailbox.flags & layout.FLAG_CAP_READ_LEN)

    @property
    def cmd_head(self) -> int:
        return self._words[_HEAD_WORD]

    @property
    def cmd_tail(self) -> int:
        return self._words[_TAIL_WORD]

    def has_new(self) -> bool:
        """Has cmd_head moved past the cursor (the ring spin's look: one load)?"""
        return self._words[_HEAD_WORD] != self._cursor

    def fetch(self) -> list[layout.CmdRequest]:
        """Every CMD entry between the cursor and cmd_head, copied out of the ring."""
        head = self._words[_HEAD_WORD]
        if head == self._cursor:        # nothing new: the second look of every wake-up
            return []
        cmdr_size = self.cmdr_size
        if head >= cmdr_size or head % layout.OP_ALIGN_SIZE:
            raise RingError(f"cmd_head {head} is outside a {cmdr_size}-byte ring")
        requests: list[layout.CmdRequest] = []
        region, cmdr_off, cursor = self.region, self.cmdr_off, self._cursor
        while cursor != head:
            off = cmdr_off + cursor
            length, op = self._checked_entry(off, cursor)
            if op == _OP_CMD:
                # read_cmd_request unpacks the header again with the request fields: one
                # unpack either way, and it stays a pure function the kernel side shares.
                try:
                    requests.append(layout.read_cmd_request(region, off, self.region_size,
                                                            self.data_off))
                except layout.LayoutError as err:
                    self._cursor = cursor
                    raise RingError(f"malformed CMD entry at ring offset {cursor}") from err
                self.pending += 1
            elif op != _OP_PAD:
                # TMR notifications and future opcodes: the kernel documents UNKNOWN_OP as the
                # answer; the entry itself is passed by cmd_tail in complete().
                layout.or_uflags(region, off, layout.UFLAG_UNKNOWN_OP)
            cursor = (cursor + length) % cmdr_size
            self._cursor = cursor
        return requests

    def complete(self, completions: Iterable[Completion]) -> int:
        """Write responses by slot stealing, then store cmd_tail once. Returns how many."""
        region, cmdr_off, cmdr_size = self.region, self.cmdr_off, self.cmdr_size
        words = self._words
        start = tail = words[_TAIL_WORD]
        done = 0
        for cmd_id, status, sense, read_len in completions:
            if self.pending == 0:
                raise RingError(f"completion for cmd {cmd_id} with none outstanding")
            off = cmdr_off + tail
            len_op, slot_id = layout.read_len_op_id(region, off)
            if len_op & _OP_MASK != _OP_CMD:      # PAD/TMR entries in between: pass them
                tail = self._skip_non_cmd(tail)
                off = cmdr_off + tail
                len_op, slot_id = layout.read_len_op_id(region, off)
            if slot_id != cmd_id:
                if not self.out_of_order_ok:
                    raise RingError(f"cmd {cmd_id} completed out of order and the "
                                    "kernel lacks CAP_OOOC")
                layout.set_cmd_id(region, off, cmd_id)
            if status == 0 and read_len is None and not sense:
                layout.write_good_response(region, off)      # nearly every command
            else:
                layout.write_response(region, off, status=status, sense=sense,
                                      read_len=read_len)
            tail = (tail + (len_op & ~_OP_MASK)) % cmdr_size
            self.pending -= 1
            done += 1
        # Trailing PAD/TMR entries the cursor already passed would otherwise hold the tail back
        # until the next command completes; the kernel skips them too.
        if tail != self._cursor:
            tail = self._skip_non_cmd(tail)
        if tail != start:
            words[_TAIL_WORD] = tail    # one aligned 32-bit store (see the module docstring)
        return done

    def _skip_non_cmd(self, tail: int) -> int:
        while tail != self._cursor:
            length, op = self._checked_entry(self.cmdr_off + tail, tail)
            if op == _OP_CMD:
                break
            tail = (tail + length) % self.cmdr_size
        return tail

    def _checked_entry(self, off: int, ring_pos: int) -> tuple[int, int]:
        """(length, op) of the entry at `off`; RingError if the length is impossible."""
        len_op = layout.read_len_op_id(self.region, off)[0]
        length = len_op & ~_OP_MASK
        if length < layout.HDR_SIZE or ring_pos + length > self.cmdr_size:
            raise RingError(f"entry at ring offset {ring_pos} has impossible length {length}")
        return length, len_op & _OP_MASK
