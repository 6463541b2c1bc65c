"""What a command handler sees: the volume, the disk's identity and limits, and the batch
its writes are queued into. Handlers are plain functions `(Context, ScsiCommand) ->
ScsiResult | QUEUED`; a handler that queues writes gets its result from the group commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from appliance.scsi import buffers, sense
from appliance.scsi.command import GOOD, ScsiCommand, ScsiResult, Status
from appliance.scsi.identity import DiskIdentity, DiskLimits

if TYPE_CHECKING:
    from appliance.journal import WriteOp
    from appliance.volume import Volume


class Queued:
    def __repr__(self) -> str:
        return "QUEUED"


QUEUED: Final = Queued()
"""Returned by a handler whose writes wait in the batch for the group commit."""

Handler = Callable[["Context", ScsiCommand], "ScsiResult | Queued"]


# Written out, not @dataclass: one PendingWrite per write command and one WriteBatch and
# Context per batch, and a dataclass's generated __init__ stays interpreted code when this
# module is compiled (docs/compiled.md); mypyc makes these constructors native.
class PendingWrite:
    __slots__ = ("index", "ops", "fua", "extents")

    def __init__(self, index: int, ops: list[WriteOp], fua: bool,
                 extents: list[tuple[int, int]]) -> None:
        self.index = index           # position of the command in the execute() batch
        self.ops = ops
        self.fua = fua
        self.extents = extents       # (lba, nblocks) touched, for read-after-write ordering

    def __repr__(self) -> str:
        return (f"PendingWrite(index={self.index}, ops={self.ops!r}, fua={self.fua}, "
                f"extents={self.extents!r})")


class WriteBatch:
    """Writes of consecutive commands, committed by one Volume.submit (one group commit)."""

    __slots__ = ("volume", "results", "pending", "commits")

    def __init__(self, volume: Volume, results: list[ScsiResult | None]) -> None:
        self.volume = volume
        self.results = results
        self.pending: list[PendingWrite] = []
        self.commits = 0             # group commits issued (tests and metrics read it)

    def add(self, write: PendingWrite) -> None:
        self.pending.append(write)

    def overlaps(self, lba: int, nblocks: int) -> bool:
        if not self.pending:          # the usual case: no generator to set up
            return False
        end = lba + nblocks
        return any(w_lba < end and lba < w_lba + w_n
                   for queued in self.pending for w_lba, w_n in queued.extents)

    def commit(self) -> None:
        """Submit everything pending as one group; each queued command gets GOOD or the
        failure's sense. Never raises."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if len(pending) == 1:       # qd1: the one command's ops as they are
            ops, fua = pending[0].ops, pending[0].fua
        else:
            ops = [op for queued in pending for op in queued.ops]
            fua = any(queued.fua for queued in pending)
        self.commits += 1
        try:
            if ops:
                self.volume.submit(ops, fua=fua)
        except Exception as exc:   # every failure becomes sense for the queued commands
            failed = sense.result_for_exception(exc)
            for queued in pending:
                self.results[queued.index] = failed
            return
        for queued in pending:
            self.results[queued.index] = GOOD


def _no_unit_attention() -> sense.ScsiError | None:
    return None


class Context:
    __slots__ = ("volume", "identity", "limits", "wce_default", "batch", "index",
                 "max_transfer_blocks", "pop_unit_attention")

    def __init__(self, volume: Volume, identity: DiskIdentity, limits: DiskLimits,
                 wce_default: bool, batch: WriteBatch, index: int = 0,
                 max_transfer_blocks: int = 1,
                 pop_unit_attention: Callable[[], sense.ScsiError | None] = _no_unit_attention,
                 ) -> None:
        self.volume = volume
        self.identity = identity
        self.limits = limits
        self.wce_default = wce_default
        self.batch = batch
        self.index = index
        self.max_transfer_blocks = max_transfer_blocks  # limits.max_transfer_blocks(bs), once
        self.pop_unit_attention = pop_unit_attention

    @property
    def block_size(self) -> int:
        return self.volume.block_size

    @property
    def num_blocks(self) -> int:
        return self.volume.num_blocks

    def queue_write(self, ops: list[WriteOp], *, fua: bool,
                    extents: list[tuple[int, int]]) -> Queued:
        """Queue ops for the group commit. With the write cache off (WCE=0) every write must
        be durable before GOOD (SBC-3 caching mode page, WCE), so it is committed as FUA."""
        durable = fua or not self.volume.write_cache_enabled
        self.batch.pending.append(PendingWrite(self.index, ops, durable, extents))
        return QUEUED

    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        """Read through to the volume, committing queued writes first if they overlap, so a
        read after a write in the same batch sees it (ordering of non-overlapping commands
        is free for SIMPLE tasks, SAM-5 task attributes)."""
        if self.batch.overlaps(lba, nblocks):
            self.batch.commit()
        self.volume.read_into(lba, nblocks, bufs)

    def barrier(self) -> None:
        """Commit queued writes now (before anything that depends on all earlier writes)."""
        self.batch.commit()


def respond(data: bytes, alloc_len: int, bufs: Sequence[memoryview]) -> ScsiResult:
    """GOOD with `data` truncated to the allocation length (SPC-4 r37 4.3.5.6: length fields are
    not changed by truncation) and to the Data-In buffers; the rest of the buffers zeroed and
    READ_LEN set, so no stale ring bytes reach the host (docs/scsi.md, "Decisions")."""
    copied = buffers.copy_in(memoryview(data)[:alloc_len], bufs)
    if copied == buffers.total_len(bufs):
        return GOOD
    return ScsiResult(Status.GOOD, read_len=copied)


def check_data_out(cmd: ScsiCommand, expected: int) -> None:
    """Data-Out must carry exactly the transfer length (see sense.invalid_field_in_command_iu)."""
    got = buffers.total_len(cmd.data)
    if got != expected:
        raise sense.invalid_field_in_command_iu(expected, got)


def check_data_in(cmd: ScsiCommand, expected: int) -> None:
    """Data-In must hold at least the transfer: TCMU cannot report a residual overflow, so a
    shorter buffer would silently truncate the read. A longer one is fine (READ_LEN)."""
    got = buffers.total_len(cmd.data)
    if got < expected:
        raise sense.invalid_field_in_command_iu(expected, got)
