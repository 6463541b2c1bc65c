"""The promotion base (issue 18, minimal failback): promote leaves a marker naming the image the
mirror holds; the handler serving that mirror with a new journal records it in the bitmap header
(version 5) and marks nothing, so its bitmap and journal hold only what it changes afterwards.
Without a marker (or with one it cannot trust) every chunk is marked, as before."""

from __future__ import annotations

import json
import logging
import os
import random
import uuid

import pytest

from appliance.journal import OpKind, WriteOp
from appliance.replication.dr import promotion
from appliance.replication.dr.promotion import demote, promote
from appliance.replication.dr.replica import Replica
from appliance.storage import open_file
from appliance.volume import LOGGING_TO_BITMAP, ResyncSource, Volume, VolumeConfig, journal_link
from appliance.volume import bitmap_format as fmt
from appliance.volume import promotion_base as pb
from appliance.volume.bitmap import DirtyBitmap
from appliance.volume.promotion_base import PromotionBase, marker_path, read_marker
from tests.support.simdisk import SimMachine
from tests.unit.replication.test_repl_promote import (
    OLD,
    RECORDS,
    SIZE,
    VOL,
    cfg,
    durable_unapplied_replica,
    expected_image,
)

BASE = PromotionBase(uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000bb"), 4711, 2,
                     1_765_000_000_123_456_789)
CHUNK = 16384
BLOCKS = 4096                      # 2 MiB: 128 chunks
VOLUME_BYTES = BLOCKS * 512
CHUNKS = VOLUME_BYTES // CHUNK


# --- the record and its header field --------------------------------------------------------

def test_a_base_round_trips_as_a_dict_and_a_bad_dict_is_refused_naming_the_key():
    assert BASE.to_dict() == {"lineage": str(BASE.lineage), "seq": 4711, "generation": 2,
                              "promoted_ns": 1_765_000_000_123_456_789}
    assert PromotionBase.from_dict(json.loads(json.dumps(BASE.to_dict()))) == BASE
    for key in ("lineage", "seq", "generation", "promoted_ns"):
        bad = {k: v for k, v in BASE.to_dict().items() if k != key}
        with pytest.raises(ValueError, match=f"lacks '{key}'"):
            PromotionBase.from_dict(bad)
    for key, value in (("lineage", "not-a-uuid"), ("lineage", str(uuid.UUID(int=0))),
                       ("seq", "4711"), ("generation", -1), ("promoted_ns", 1.5),
                       ("seq", True), ("seq", 1 << 64)):
        with pytest.raises(ValueError, match=key):
            PromotionBase.from_dict(BASE.to_dict() | {key: value})
    with pytest.raises(ValueError, match="object"):
        PromotionBase.from_dict([1, 2])


def header(base: PromotionBase | None = None) -> fmt.BitmapHeader:
    return fmt.BitmapHeader(9, uuid.UUID(int=1), 65536, 16, 3, 2, fmt.MODE_LOGGING, 99, 4,
                            123, fmt.FLAG_SYNC, fmt.REASON_JOURNAL_FULL, 2500, base)


def test_a_version_5_header_keeps_the_base_and_a_version_4_one_reads_without_one():
    for base in (BASE, None):
        slot = fmt.encode_header(header(base))
        assert int.from_bytes(slot[8:12], "little") == fmt.HEADER_VERSION == 5
        assert fmt.decode_header(slot) == header(base)
        assert fmt.decode_header(slot).base == base
    h = header()
    v4 = fmt._HEADER_V4.pack(fmt.HEADER_MAGIC, 4, h.generation, h.volume_uuid.bytes,
                             h.chunk_size, h.num_chunks, h.incarnation, h.completed_gen, h.mode,
                             h.overflow_seq, h.processed_request, h.logging_since_ns, h.flags,
                             h.logging_reason, h.sync_fallback_ms)
    assert fmt.decode_header(fmt._seal(v4)) == h and h.base is None
    torn = bytearray(fmt.encode_header(header(BASE)))
    torn[fmt._HEADER.size - 3] ^= 1                 # inside the base: the CRC catches it
    assert fmt.decode_header(bytes(torn)) is None


def open_bitmap(m: SimMachine, num_chunks: int = CHUNKS) -> DirtyBitmap:
    return DirtyBitmap.open(m.open("bitmap", fmt.file_size(2 * CHUNKS)),
                            volume_uuid=uuid.UUID(int=7), chunk_size=CHUNK,
                            num_chunks=num_chunks, adopt_size=True)


def test_set_base_is_durable_and_every_later_header_write_keeps_it():
    m = SimMachine()
    bm = open_bitmap(m)
    bm.set_base(BASE)
    m.crash(random.Random(1), tear=True)
    bm = open_bitmap(m)                              # a new incarnation: one header write
    assert bm.base == BASE
    bm.set_mode(True, 7, reason=fmt.REASON_JOURNAL_FULL)
    bm.set_paused(True)
    bm.set_paused(False)
    bm.set_mode(False, 7)
    bm.set_sync(fmt.FLAG_SYNC, 1500)
    bm.resize(2 * CHUNKS)
    g = bm.begin_batch()
    bm.mark([(3, 1)], g)
    bm.finish_batch(g)
    bm.sync()
    assert bm.base == BASE
    assert ResyncSource(m.open("bitmap")).header().base == BASE   # what the transmitter reads
    bm.set_base(None)
    m.crash(random.Random(2), tear=True)
    assert open_bitmap(m, 2 * CHUNKS).base is None


# --- the marker file ------------------------------------------------------------------------

def test_the_marker_is_written_and_removed_durably_and_read_back(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.write_bytes(b"image")
    synced: list[str] = []
    monkeypatch.setattr("appliance.statefile.sync_dir", lambda d: synced.append(str(d)))
    assert read_marker(mirror, 4096) is None                   # none yet: no complaint
    pb.write_marker(mirror, BASE, size_bytes=4096)
    assert marker_path(mirror) == tmp_path / "mirror.promotion-base.json"
    assert json.loads(marker_path(mirror).read_text()) == BASE.to_dict() | {"size_bytes": 4096}
    assert synced == [str(tmp_path)]                           # the rename is durable
    assert read_marker(mirror, 4096) == BASE
    pb.remove_marker(mirror)
    assert not marker_path(mirror).exists() and synced == [str(tmp_path)] * 2
    pb.remove_marker(mirror)                                   # absent: nothing to do
    assert read_marker(mirror, 4096) is None


@pytest.mark.parametrize(("spoil", "why"), [
    (lambda m: marker_path(m).write_text('{"lineage": '), "not usable"),
    (lambda m: marker_path(m).write_text(json.dumps({"seq": 1, "size_bytes": 4096})),
     "lacks 'lineage'"),
    (lambda m: pb.write_marker(m, BASE, size_bytes=8192), "8192 bytes, this one has 4096"),
    (lambda m: os.utime(m, ns=(0, marker_path(m).stat().st_mtime_ns + 1)),
     "older than the last write to the mirror"),
])
def test_a_marker_that_cannot_be_trusted_is_ignored_with_a_warning(tmp_path, caplog, spoil,
                                                                   why):
    mirror = tmp_path / "mirror"
    mirror.write_bytes(b"image")
    os.utime(mirror, ns=(0, 1_000_000_000))
    pb.write_marker(mirror, BASE, size_bytes=4096)
    spoil(mirror)
    with caplog.at_level(logging.WARNING, "appliance.volume"):
        assert read_marker(mirror, 4096) is None
    assert why in caplog.text and "full resync" in caplog.text


# --- the handler adopting a promoted mirror -------------------------------------------------

def config(tmp_path) -> VolumeConfig:
    return VolumeConfig(uuid=uuid.UUID(int=7), num_blocks=BLOCKS, journal_size=1 << 20,
                        max_transfer_bytes=64 * 1024, chunk_size=CHUNK,
                        mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
                        bitmap_path=tmp_path / "bitmap")


def bitmap_header(tmp_path, name: str = "bitmap") -> tuple[fmt.BitmapHeader, int]:
    """The header and the dirty chunk count, as the transmitter reads them."""
    source = ResyncSource(open_file(tmp_path / name))
    try:
        return source.header(), source.snapshot().dirty_chunks
    finally:
        source.close()


def promoted_mirror(tmp_path, data: bytes = b"the promoted image") -> None:
    (tmp_path / "mirror").write_bytes(data + bytes(VOLUME_BYTES - len(data)))
    pb.write_marker(tmp_path / "mirror", BASE, size_bytes=VOLUME_BYTES)


def test_a_promoted_mirror_is_adopted_with_its_base_and_nothing_marked(tmp_path, caplog):
    promoted_mirror(tmp_path)
    with caplog.at_level(logging.WARNING, "appliance.volume"), \
            Volume.open(config(tmp_path)) as vol:
        st = vol.status()
        assert st["state"] == "journaling" and st["dirty_chunks"] == 0, st
        vol.submit([WriteOp(OpKind.WRITE, 16, 8, b"\x01" * 4096)], fua=True)   # journaled
        assert vol.status()["dirty_chunks"] == 0
        assert vol.pause_journal()                     # a header write (set_mode)
        vol.submit([WriteOp(OpKind.WRITE, 64, 8, b"\x02" * 4096)], fua=True)   # to the bitmap
        assert bitmap_header(tmp_path) == (bitmap_header(tmp_path)[0], 1)
        assert bitmap_header(tmp_path)[0].base == BASE
        assert vol.resume_journal()
    assert not marker_path(tmp_path / "mirror").exists()
    assert (tmp_path / "journal").exists()
    assert (f"adopted the promoted image of volume {BASE.lineage} at seq 4711 (generation 2)"
            in caplog.text and "no chunk marked" in caplog.text), caplog.text
    with Volume.open(config(tmp_path)) as vol:         # the journal exists: nothing to adopt
        assert vol.status()["dirty_chunks"] == 1       # only the chunk written while paused
    assert bitmap_header(tmp_path)[0].base == BASE


def test_a_promoted_mirror_named_through_a_link_is_adopted(tmp_path):
    """The cfgstring may name the replica's mirror through a link; the marker is the file's."""
    (tmp_path / "replica").mkdir()
    promoted_mirror(tmp_path / "replica")
    (tmp_path / "mirror").symlink_to(tmp_path / "replica" / "mirror")
    assert marker_path(tmp_path / "mirror") == tmp_path / "replica" / "mirror.promotion-base.json"
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["dirty_chunks"] == 0
    assert bitmap_header(tmp_path)[0].base == BASE
    assert not marker_path(tmp_path / "replica" / "mirror").exists()


def test_a_promoted_mirror_without_data_extents_is_adopted_too(tmp_path):
    open_file(tmp_path / "mirror", create_size=VOLUME_BYTES).close()      # sparse, all zero
    pb.write_marker(tmp_path / "mirror", BASE, size_bytes=VOLUME_BYTES)
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["dirty_chunks"] == 0
    assert bitmap_header(tmp_path)[0].base == BASE
    assert not marker_path(tmp_path / "mirror").exists()


def test_without_a_marker_every_chunk_is_marked_and_no_base_kept(tmp_path):
    """Also a bitmap file left with a base from an earlier life: the lost journal's history
    is gone, so the base goes and every chunk is marked."""
    promoted_mirror(tmp_path)
    with Volume.open(config(tmp_path)):
        pass
    (tmp_path / "journal").unlink()                       # a lost journal
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["state"] == LOGGING_TO_BITMAP
        assert vol.status()["dirty_chunks"] == CHUNKS
    assert bitmap_header(tmp_path)[0].base is None
    assert bitmap_header(tmp_path)[1] == CHUNKS


def test_a_marker_for_another_size_marks_every_chunk_and_is_removed(tmp_path):
    promoted_mirror(tmp_path)
    pb.write_marker(tmp_path / "mirror", BASE, size_bytes=VOLUME_BYTES * 2)
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["dirty_chunks"] == CHUNKS
    assert bitmap_header(tmp_path)[0].base is None
    assert not marker_path(tmp_path / "mirror").exists()


def test_a_power_cut_before_the_journal_exists_adopts_again_or_marks_everything(
        tmp_path, monkeypatch):
    """Base durable, then the marker removed, then the journal: a cut between the first two
    adopts again; a cut after the marker is gone finds neither, and marks every chunk."""
    promoted_mirror(tmp_path)

    def cut(*args, **kwargs):
        raise OSError("power cut")
    monkeypatch.setattr(journal_link, "remove_marker", cut)
    with pytest.raises(OSError, match="power cut"):
        Volume.open(config(tmp_path))
    assert bitmap_header(tmp_path)[0].base == BASE and not (tmp_path / "journal").exists()
    monkeypatch.undo()
    monkeypatch.setattr(journal_link, "_open_journal", cut)
    with pytest.raises(OSError, match="power cut"):
        Volume.open(config(tmp_path))                  # adopts again, the marker goes
    assert not marker_path(tmp_path / "mirror").exists()
    assert not (tmp_path / "journal").exists()
    monkeypatch.undo()
    with Volume.open(config(tmp_path)) as vol:
        assert vol.status()["dirty_chunks"] == CHUNKS
    assert bitmap_header(tmp_path)[0].base is None


# --- promote leaves the marker, demote removes it -------------------------------------------

def test_promote_leaves_the_base_the_handler_adopts_and_demote_removes_it(tmp_path):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)
    p = promote(c)
    base = read_marker(c.paths.mirror, SIZE)
    assert base == PromotionBase(VOL, 4, 2, int(p.time * 1e9)), base
    # Served with a new journal: the promoted image adopted as the base, nothing marked.
    served = VolumeConfig(uuid=uuid.UUID(int=9), num_blocks=SIZE // 512, journal_size=1 << 20,
                          max_transfer_bytes=SIZE, chunk_size=4096,
                          mirror_path=c.paths.mirror, journal_path=tmp_path / "new.jnl",
                          bitmap_path=tmp_path / "new.jnl.bitmap")
    with Volume.open(served) as vol:
        assert vol.status()["dirty_chunks"] == 0
        image = bytearray(SIZE)
        vol.read_into(0, SIZE // 512, [memoryview(image)])
        assert image == expected_image(RECORDS)
        vol.submit([WriteOp(OpKind.WRITE, 0, 8, b"\x09" * 4096)], fua=True)
    assert bitmap_header(tmp_path, "new.jnl.bitmap")[0].base == base
    # Promoting again once the mirror is served must not leave a marker for an image the
    # mirror no longer holds.
    assert promote(c) == p
    assert not marker_path(c.paths.mirror).exists()
    pb.write_marker(c.paths.mirror, base, size_bytes=SIZE)      # (say the handler never ran)
    demote(c)
    assert not marker_path(c.paths.mirror).exists()


def test_a_promotion_cut_before_its_marker_leaves_it_when_promoted_again(tmp_path,
                                                                         monkeypatch):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)

    def power_cut(*args, **kwargs):
        raise SystemExit("power cut")
    monkeypatch.setattr(promotion, "write_marker", power_cut)
    with pytest.raises(SystemExit):
        promote(c)                     # promoted durably, then the power went
    assert read_marker(c.paths.mirror, SIZE) is None and c.paths.journal.exists()
    monkeypatch.undo()
    p = promote(c)
    assert read_marker(c.paths.mirror, SIZE) == PromotionBase(VOL, 4, 2, int(p.time * 1e9))


def test_a_marker_that_cannot_be_written_does_not_stop_the_promotion(tmp_path, monkeypatch,
                                                                     caplog):
    c = cfg(tmp_path)
    durable_unapplied_replica(c)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(promotion, "write_marker", full)
    with caplog.at_level(logging.WARNING, "appliance.replication.dr.replica"):
        p = promote(c)
    assert p.at_seq == 4 and not c.paths.journal.exists()
    assert "marker" in caplog.text and "mark every chunk" in caplog.text, caplog.text


def test_the_marker_has_the_size_the_replica_grew_to_not_the_configured_one(tmp_path):
    """A replica follows the primary's online resize (and a group's members joining): its
    journal records the image's size; a marker with the configured size would be refused by
    the handler's size check, costing a full compare at failback."""
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(OLD, 0)
    r.commit(RECORDS)
    r.resize(2 * SIZE)
    r.close()
    promote(c)
    assert read_marker(c.paths.mirror, SIZE) is None            # not the configured size
    assert read_marker(c.paths.mirror, 2 * SIZE) is not None
