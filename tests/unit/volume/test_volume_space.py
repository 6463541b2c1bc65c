"""A volume whose files cannot fit on their file system is refused before anything exists."""

from __future__ import annotations

import os
import uuid

import pytest

from appliance.volume import NoSpaceError, Volume, VolumeConfig, VolumeConfigError

BS = 512


def config(tmp_path, num_blocks: int) -> VolumeConfig:
    return VolumeConfig(uuid=uuid.UUID(int=77), num_blocks=num_blocks, block_size=BS,
                        journal_size=4 << 20, max_transfer_bytes=64 * 1024,
                        mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
                        bitmap_path=tmp_path / "bitmap")


def free_bytes(path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def test_a_volume_larger_than_the_free_space_is_refused_and_creates_nothing(tmp_path):
    too_big = (free_bytes(tmp_path) + (64 << 30)) // BS
    with pytest.raises(NoSpaceError, match=r"need .* more on the file system of .*free"):
        Volume.open(config(tmp_path, too_big))
    assert sorted(os.listdir(tmp_path)) == [], "a refused volume left files behind"
    assert issubclass(NoSpaceError, VolumeConfigError)


def test_a_volume_that_fits_opens_and_reopens_without_counting_its_own_files(tmp_path):
    blocks = (8 << 20) // BS
    with Volume.open(config(tmp_path, blocks)) as volume:
        assert volume.num_blocks == blocks
    # Reopening must not count the already allocated files again.
    with Volume.open(config(tmp_path, blocks)) as volume:
        assert volume.num_blocks == blocks
