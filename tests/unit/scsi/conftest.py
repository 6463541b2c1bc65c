"""Fixtures: a ScsiDisk over a volume of 2048 blocks of 512 bytes (1 MiB)."""

from __future__ import annotations

import pytest

from appliance.scsi import DiskIdentity, DiskLimits, ScsiDisk
from tests.unit.scsi.memvolume import MemVolume

SERIAL = "a1b2c3d4-e5f6-4789-abcd-ef0123456789"
NUM_BLOCKS = 2048
BLOCK = 512
LIMITS = DiskLimits(max_transfer_bytes=64 * 1024, max_unmap_lba_count=1024,
                    max_unmap_descriptors=4, max_write_same_blocks=1024,
                    max_compare_and_write_blocks=8)


@pytest.fixture
def volume():
    return MemVolume(NUM_BLOCKS, BLOCK)


@pytest.fixture
def disk(volume) -> ScsiDisk:
    return ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS)
