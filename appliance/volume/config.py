"""Typed, validated configuration of one volume (the write fork)."""

from __future__ import annotations

import enum
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.journal import MIN_JOURNAL_BYTES
from appliance.volume.errors import VolumeConfigError

if TYPE_CHECKING:
    from appliance.storage import BlockIO

KiB = 1024
MiB = 1024 * KiB
JOURNAL_BLOCK = 4096


class FlushPolicy(enum.StrEnum):
    """When the journal is fdatasync'd (and therefore when the mirror may be written)."""

    PER_BATCH = "per-batch"   # every group commit: journal sync, then mirror writes
    ON_FLUSH = "on-flush"     # write cache on: sync on FUA, SYNCHRONIZE CACHE or pending bound


@dataclass(frozen=True, eq=False, kw_only=True)
class VolumeConfig:
    """Everything `Volume.open` needs. Files are given as paths, or (tests, block devices
    opened elsewhere) as ready `BlockIO` objects in the ``*_io`` fields."""

    uuid: uuid.UUID
    num_blocks: int
    block_size: int = 512
    journal_size: int = 256 * MiB
    chunk_size: int = 64 * KiB
    flush_policy: FlushPolicy = FlushPolicy.PER_BATCH
    mirror_path: str | os.PathLike[str] | None = None
    journal_path: str | os.PathLike[str] | None = None
    bitmap_path: str | os.PathLike[str] | None = None
    mirror_io: BlockIO | None = None
    journal_io: BlockIO | None = None
    bitmap_io: BlockIO | None = None
    max_transfer_bytes: int = 8 * MiB
    # on-flush: pending (journaled, not yet synced) bytes that force a sync
    pending_limit_bytes: int = 16 * MiB
    # on-flush: a cached WRITE carrying at least this much data is not copied into the
    # overlay. With direct I/O its batch is written through (journal, sync, mirror) without
    # the page cache; without, it is read back from the journal's file and copied from there
    # to the mirror by the kernel at the next sync (docs/volume.md, "Flush policy")
    overlay_span_bytes: int = 64 * KiB
    # writes of at least overlay_span_bytes to journal and mirror bypass the page cache
    # (O_DIRECT) where the file system allows it (docs/volume.md, "Direct I/O")
    direct_io: bool = True
    # mirror fdatasync + checkpoint after this many bytes applied (default: journal_size / 4)
    mirror_sync_bytes: int | None = None
    mirror_sync_interval: float = 5.0
    # how often submit() looks for the resync process's clear requests
    resync_poll_interval: float = 0.05
    # a background thread runs Volume.service() this often (None: the caller does)
    service_interval: float | None = 0.1

    @property
    def volume_bytes(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_chunks(self) -> int:
        return -(-self.volume_bytes // self.chunk_size)

    @property
    def effective_mirror_sync_bytes(self) -> int:
        return self.mirror_sync_bytes or max(self.journal_size // 4, JOURNAL_BLOCK)

    def validate(self) -> None:
        """Raise VolumeConfigError naming the first setting that cannot work."""
        if not isinstance(self.uuid, uuid.UUID):
            raise VolumeConfigError(f"uuid must be a uuid.UUID, not {type(self.uuid).__name__}")
        if self.block_size not in (512, 4096):
            raise VolumeConfigError(f"block_size must be 512 or 4096, not {self.block_size}")
        if self.num_blocks < 1:
            raise VolumeConfigError(f"num_blocks must be at least 1, not {self.num_blocks}")
        if self.chunk_size < 4096 or self.chunk_size & (self.chunk_size - 1):
            raise VolumeConfigError(f"chunk_size must be a power of two >= 4096, "
                                    f"not {self.chunk_size}")
        if self.chunk_size % self.block_size:
            raise VolumeConfigError("chunk_size must be a multiple of block_size")
        if self.journal_size < MIN_JOURNAL_BYTES:
            raise VolumeConfigError(f"journal_size {self.journal_size} is below the journal's "
                                    f"minimum of {MIN_JOURNAL_BYTES} bytes")
        if self.journal_size % JOURNAL_BLOCK:
            raise VolumeConfigError(f"journal_size must be a multiple of {JOURNAL_BLOCK}, "
                                    f"not {self.journal_size}")
        if self.max_transfer_bytes < self.block_size or self.max_transfer_bytes % self.block_size:
            raise VolumeConfigError("max_transfer_bytes must be a positive multiple of "
                                    f"block_size, not {self.max_transfer_bytes}")
        # One batch of maximal transfers must fit the journal with room to spare,
        # else a single command could never be journaled.
        if self.journal_size < 4 * (self.max_transfer_bytes + JOURNAL_BLOCK):
            raise VolumeConfigError(
                f"journal_size {self.journal_size} is too small for max_transfer_bytes "
                f"{self.max_transfer_bytes}: it must hold at least four maximal transfers "
                f"({4 * (self.max_transfer_bytes + JOURNAL_BLOCK)} bytes)")
        if self.pending_limit_bytes < self.max_transfer_bytes:
            raise VolumeConfigError("pending_limit_bytes must be >= max_transfer_bytes")
        if self.overlay_span_bytes < 1:
            raise VolumeConfigError(f"overlay_span_bytes must be >= 1, "
                                    f"not {self.overlay_span_bytes}")
        if self.mirror_sync_interval <= 0 or self.resync_poll_interval <= 0:
            raise VolumeConfigError("mirror_sync_interval and resync_poll_interval must be > 0")
        if self.service_interval is not None and self.service_interval <= 0:
            raise VolumeConfigError("service_interval must be > 0, or None to call "
                                    "Volume.service() yourself")
        for name in ("mirror", "journal", "bitmap"):
            path, io = getattr(self, f"{name}_path"), getattr(self, f"{name}_io")
            if (path is None) == (io is None):
                raise VolumeConfigError(f"give exactly one of {name}_path and {name}_io")
