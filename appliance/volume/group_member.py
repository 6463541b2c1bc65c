"""One member of a consistency group, as the volume its SCSI disk runs over (docs/groups.md).

The group is one Volume (one journal, bitmap and seq space) over the members laid end to end;
a member's LUN sees only its own blocks: LBA 0 of the member is the group's LBA
``offset_blocks``, and its capacity is the member's ``num_blocks``. Every write goes through
the group's Volume, so it takes its place in the group's one write order.

A subclass of Volume only because the compiled ScsiDisk takes a Volume (docs/compiled.md,
"Testing both forms": Volume admits interpreted subclasses). It never runs Volume.__init__:
it sets the attributes the disk reads natively (``block_size``, ``num_blocks``, ``uuid``,
``sync``) and forwards every method the disk calls, with the LBAs moved; whatever else is
asked of it is the group's business and fails (the base's attributes are unset).
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal import WriteOp
from appliance.volume.requests import check_ops, check_range
from appliance.volume.volume import Volume


class MemberVolume(Volume):
    """Blocks [offset_blocks, offset_blocks + num_blocks) of ``group``, from 0."""

    def __init__(self, group: Volume, offset_blocks: int, num_blocks: int) -> None:
        # Deliberately not Volume.__init__: this view owns no files.
        self.group = group
        self.offset_blocks = offset_blocks
        self.block_size = group.block_size
        self.num_blocks = num_blocks
        self.uuid = group.uuid
        self.sync = group.sync
        self.max_blocks = group.config.max_transfer_bytes // group.block_size

    @property
    def write_cache_enabled(self) -> bool:
        """The group's: one journal, one flush policy for all its members."""
        return self.group.write_cache_enabled

    @write_cache_enabled.setter
    def write_cache_enabled(self, enabled: bool) -> None:
        self.group.write_cache_enabled = enabled

    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        check_range(lba, nblocks, self.num_blocks, self.max_blocks)
        self.group.read_into(lba + self.offset_blocks, nblocks, bufs)

    def submit(self, ops: Sequence[WriteOp], *, fua: bool = False) -> None:
        self.group.submit(self._moved(ops), fua=fua)

    def flush(self) -> None:
        self.group.flush()

    def compare_and_write(self, lba: int, verify: memoryview, data: memoryview,
                          *, fua: bool = False) -> int | None:
        nblocks = memoryview(verify).nbytes // self.block_size
        check_range(lba, max(nblocks, 1), self.num_blocks, self.max_blocks)
        return self.group.compare_and_write(lba + self.offset_blocks, verify, data, fua=fua)

    def _moved(self, ops: Sequence[WriteOp]) -> list[WriteOp]:
        """The ops at the group's LBAs, after the member's own range check (a write past
        the member's end must not land in the next member)."""
        check_ops(ops, block_size=self.block_size, num_blocks=self.num_blocks,
                  max_transfer_blocks=self.max_blocks)
        off = self.offset_blocks
        return [WriteOp(op.kind, op.lba + off, op.nblocks, op.data) for op in ops]

    def status(self) -> dict:
        return self.group.status()

    def close(self) -> None:
        """The group's Volume is closed by its registry, with its last member."""

    def resize(self, num_blocks: int) -> None:
        from appliance.volume.resizing import ResizeRefused
        raise ResizeRefused("a consistency group member keeps its size (its neighbour "
                            "starts where it ends); create a bigger volume and copy, or "
                            "leave the group first")
