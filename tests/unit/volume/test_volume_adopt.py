"""A new journal over a mirror that already holds data (an existing disk taken over, or a
lost journal): the peer could never get that data from the journal, so the volume starts
with every chunk marked for a full resync, durably, before the journal exists."""

from __future__ import annotations

import uuid

import pytest

from appliance.storage import open_file
from appliance.volume import LOGGING_TO_BITMAP, ResyncSource, Volume, VolumeConfig, journal_link

CHUNK = 16384
BLOCKS = 4096                  # 2 MiB: 128 chunks


def config(tmp_path) -> VolumeConfig:
    return VolumeConfig(uuid=uuid.UUID(int=7), num_blocks=BLOCKS, journal_size=1 << 20,
                        max_transfer_bytes=64 * 1024, chunk_size=CHUNK,
                        mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
                        bitmap_path=tmp_path / "bitmap")


def dirty_chunks(tmp_path) -> int:
    source = ResyncSource(open_file(tmp_path / "bitmap"))
    try:
        return source.snapshot().dirty_chunks
    finally:
        source.close()


def test_a_mirror_with_data_and_no_journal_is_marked_for_a_full_resync(tmp_path):
    (tmp_path / "mirror").write_bytes(b"\x00" * 4096 + b"old data" + b"\x00" * 100)
    with Volume.open(config(tmp_path)) as vol:
        st = vol.status()
        assert st["state"] == LOGGING_TO_BITMAP and st["dirty_chunks"] == BLOCKS * 512 // CHUNK
    assert dirty_chunks(tmp_path) == BLOCKS * 512 // CHUNK
    with Volume.open(config(tmp_path)) as vol:         # durable: the journal exists now
        assert vol.status()["dirty_chunks"] == BLOCKS * 512 // CHUNK


def test_a_new_or_never_written_mirror_journals_normally(tmp_path):
    with Volume.open(config(tmp_path)) as vol:           # created by us
        assert vol.status()["state"] == "journaling"
    (tmp_path / "journal").unlink()
    (tmp_path / "bitmap").unlink()
    with Volume.open(config(tmp_path)) as vol:           # sparse, never written: no data
        assert vol.status()["state"] == "journaling" and vol.status()["dirty_chunks"] == 0


def test_a_power_cut_before_the_journal_exists_marks_again(tmp_path, monkeypatch):
    """The marks go down before the journal is created; if creating it fails (or the power
    goes), the next open still sees no journal and marks everything again."""
    (tmp_path / "mirror").write_bytes(b"x" * 4096)

    def cut(*args, **kwargs):
        raise OSError("power cut")
    monkeypatch.setattr(journal_link, "_open_journal", cut)
    with pytest.raises(OSError, match="power cut"):
        Volume.open(config(tmp_path))
    assert not (tmp_path / "journal").exists()
    assert dirty_chunks(tmp_path) == BLOCKS * 512 // CHUNK
    monkeypatch.undo()
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["state"] == LOGGING_TO_BITMAP
        assert vol.status()["dirty_chunks"] == BLOCKS * 512 // CHUNK
    assert (tmp_path / "mirror").read_bytes()[:4096] == b"x" * 4096
