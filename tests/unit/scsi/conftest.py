"""Fixtures: a ScsiDisk over a real Volume (journal + mirror + bitmap on tmp files) of 2048
blocks of 512 bytes, write cache on; a fault switch that makes the volume's files fail with
EIO (a dying disk); a recorder of the Volume calls the disk makes."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from appliance.journal import WriteOp
from appliance.scsi import DiskIdentity, DiskLimits, ScsiDisk
from appliance.storage import BlockIO, open_file
from appliance.volume import FlushPolicy, Volume, VolumeConfig

SERIAL = "a1b2c3d4-e5f6-4789-abcd-ef0123456789"
NUM_BLOCKS = 2048
BLOCK = 512
LIMITS = DiskLimits(max_transfer_bytes=64 * 1024, max_unmap_lba_count=1024,
                    max_unmap_descriptors=4, max_write_same_blocks=1024,
                    max_compare_and_write_blocks=8)


@dataclass
class Faults:
    reads: bool = False
    writes: bool = False


class FaultyIO:
    """A BlockIO that fails with EIO while its switch is on."""

    def __init__(self, inner: BlockIO, faults: Faults):
        self.inner, self.faults = inner, faults

    def pread_into(self, offset: int, buf: memoryview) -> None:
        if self.faults.reads:
            raise OSError(errno.EIO, "injected read error")
        self.inner.pread_into(offset, buf)

    def pwritev(self, offset: int, bufs: Sequence[bytes | memoryview]) -> None:
        if self.faults.writes:
            raise OSError(errno.EIO, "injected write error")
        self.inner.pwritev(offset, bufs)

    def sync(self) -> None:
        if self.faults.writes:
            raise OSError(errno.EIO, "injected sync error")
        self.inner.sync()

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()


@dataclass
class Calls:
    submits: list[tuple[list[WriteOp], bool]] = field(default_factory=list)
    flushes: int = 0


class RecordingVolume(Volume):
    """A Volume that records the write batches (submit, or compare and write: both commit
    through _submit_locked) and flush calls the disk makes while `calls` is set; the real
    methods still run. A subclass, not a patched instance: the compiled Volume's
    methods cannot be replaced on an instance, and the compiled disk calls them natively
    (docs/compiled.md, "Testing both forms")."""

    calls: Calls | None = None

    def _submit_locked(self, ops, fua):
        if self.calls is not None:
            self.calls.submits.append((list(ops), fua))
        return super()._submit_locked(ops, fua)

    def flush(self):
        if self.calls is not None:
            self.calls.flushes += 1
        return super().flush()


def open_volume(tmp_path, faults: Faults, *, num_blocks: int = NUM_BLOCKS,
                wce: bool = True) -> RecordingVolume:
    mirror = open_file(tmp_path / "mirror", create_size=num_blocks * BLOCK)
    journal = open_file(tmp_path / "journal", create_size=4 << 20)
    return RecordingVolume.open(VolumeConfig(
        uuid=uuid.UUID(int=3), num_blocks=num_blocks, block_size=BLOCK,
        journal_size=4 << 20, max_transfer_bytes=256 * 1024, pending_limit_bytes=1 << 20,
        flush_policy=FlushPolicy.ON_FLUSH if wce else FlushPolicy.PER_BATCH,
        mirror_io=FaultyIO(mirror, faults), journal_io=FaultyIO(journal, faults),
        bitmap_path=tmp_path / "bitmap"))


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def volume(tmp_path, faults):
    vol = open_volume(tmp_path, faults)
    yield vol
    faults.reads = faults.writes = False
    vol.close()


@pytest.fixture
def calls(volume) -> Calls:
    """Records Volume.submit / flush calls; the real methods still run."""
    volume.calls = Calls()
    return volume.calls


@pytest.fixture
def disk(volume, calls) -> ScsiDisk:
    return ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS)


def medium(volume: Volume, lba: int, nblocks: int) -> bytes:
    """What the volume holds (through its own read path)."""
    buf = bytearray(nblocks * BLOCK)
    volume.read_into(lba, nblocks, [memoryview(buf)])
    return bytes(buf)


@pytest.fixture(scope="module")
def shared_volume(tmp_path_factory):
    """One volume for a whole module whose tests do not depend on block contents (opening a
    volume costs a few fdatasyncs); modules opt in by overriding `volume` with it."""
    faults = Faults()
    vol = open_volume(tmp_path_factory.mktemp("shared"), faults)
    yield vol
    vol.close()


@pytest.fixture
def reused_volume(shared_volume):
    """shared_volume, with the write cache put back on after each test."""
    yield shared_volume
    shared_volume.write_cache_enabled = True
