"""TEMPORARY in-memory stand-in with the Volume interface, used only until
appliance.volume.Volume can run here; then the tests switch to the real one."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.journal import OpKind, WriteOp
from appliance.journal.errors import InvalidRequest
from appliance.volume.errors import MediumError


class MemVolume:
    def __init__(self, num_blocks: int, block_size: int = 512, wce: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.write_cache_enabled = wce
        self.data = bytearray(num_blocks * block_size)
        self.submits: list[tuple[list[WriteOp], bool]] = []
        self.flushes = 0
        self.fail: str | None = None

    def _check(self, lba: int, n: int) -> None:
        if lba < 0 or n < 1 or lba + n > self.num_blocks:
            raise InvalidRequest(f"{lba}+{n}")

    def read_into(self, lba: int, nblocks: int, bufs: Sequence[memoryview]) -> None:
        self._check(lba, nblocks)
        if self.fail == "read":
            raise MediumError("read", "injected")
        pos = lba * self.block_size
        assert sum(len(b) for b in bufs) == nblocks * self.block_size
        for b in bufs:
            b[:] = self.data[pos:pos + len(b)]
            pos += len(b)

    def submit(self, ops: Sequence[WriteOp], *, fua: bool = False) -> None:
        for op in ops:
            self._check(op.lba, op.nblocks)
        if self.fail == "write":
            raise MediumError("write", "injected")
        self.submits.append((list(ops), fua))
        bs = self.block_size
        for op in ops:
            start, end = op.lba * bs, (op.lba + op.nblocks) * bs
            if op.kind == OpKind.WRITE:
                assert len(op.data) == end - start
                self.data[start:end] = op.data
            elif op.kind == OpKind.WRITE_SAME:
                self.data[start:end] = bytes(op.data) * op.nblocks
            else:
                self.data[start:end] = bytes(end - start)

    def flush(self) -> None:
        if self.fail == "write":
            raise MediumError("write", "injected")
        self.flushes += 1

    def compare_and_write(self, lba, verify, data, *, fua=False):
        n = len(verify) // self.block_size
        cur = bytearray(len(verify))
        self.read_into(lba, n, [memoryview(cur)])
        for i in range(len(cur)):
            if cur[i] != verify[i]:
                return i
        self.submit([WriteOp(OpKind.WRITE, lba, n, data)], fua=fua)
        return None
