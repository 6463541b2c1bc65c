"""Bad input gets a clear error and loses nothing (invariant 6)."""

from __future__ import annotations

import uuid

import pytest
from volume_harness import BS, Rig, block_data

from appliance.journal import InvalidRequest, JournalMismatch, OpKind, WriteOp
from appliance.volume import BitmapError, Volume, VolumeConfig, VolumeConfigError
from appliance.volume import bitmap_format as fmt


def files(rig: Rig) -> dict[str, bytes]:
    return {name: rig.raw(name) for name in ("mirror", "journal", "bitmap")}


def used_rig() -> Rig:
    rig = Rig()
    vol = rig.open()
    vol.submit([WriteOp(OpKind.WRITE, 1, 2, block_data(1, 0) + block_data(1, 1))], fua=True)
    vol.close()
    return rig


@pytest.mark.parametrize("bad, message", [
    (WriteOp(OpKind.WRITE, 255, 2, bytes(2 * BS)), "beyond the end"),
    (WriteOp(OpKind.WRITE, -1, 1, bytes(BS)), "invalid range"),
    (WriteOp(OpKind.WRITE, 0, 0, b""), "invalid range"),
    (WriteOp(OpKind.WRITE, 0, 17, bytes(17 * BS)), "exceeds the maximum"),
    (WriteOp(OpKind.WRITE, 0, 2, bytes(BS + 1)), "carries 513 bytes"),
    (WriteOp(OpKind.WRITE_SAME, 0, 4, bytes(2 * BS)), "expected 512"),
    (WriteOp(OpKind.UNMAP, 0, 4, bytes(BS)), "expected 0"),
    (WriteOp(7, 0, 1, bytes(BS)), "unknown op kind"),
    ("not an op", "not a WriteOp"),
])
def test_bad_op_in_a_batch_fails_the_batch_and_writes_nothing(bad, message):
    rig = used_rig()
    vol = rig.open()
    before, writes = files(rig), dict(rig.m.writes)
    good = WriteOp(OpKind.WRITE, 0, 1, block_data(9, 0))
    with pytest.raises(InvalidRequest, match=message):
        vol.submit([good, bad])
    assert dict(rig.m.writes) == writes and files(rig) == before
    buf = bytearray(3 * BS)
    vol.read_into(0, 3, [memoryview(buf)])
    assert buf == bytes(BS) + block_data(1, 0) + block_data(1, 1)


def test_bad_reads_are_refused():
    vol = used_rig().open()
    with pytest.raises(InvalidRequest, match="beyond the end"):
        vol.read_into(250, 10, [memoryview(bytearray(10 * BS))])
    with pytest.raises(InvalidRequest, match="buffers of"):
        vol.read_into(0, 2, [memoryview(bytearray(BS))])
    with pytest.raises(InvalidRequest, match="same whole blocks"):
        vol.compare_and_write(0, memoryview(bytes(BS)), memoryview(bytes(2 * BS)))


def test_journal_of_another_volume_is_refused_and_left_alone():
    rig = used_rig()
    before = files(rig)
    rig.uuid = uuid.UUID(int=0xCD)
    rig.kw["uuid"] = rig.uuid
    with pytest.raises(JournalMismatch, match="belongs to volume"):
        rig.open()
    assert files(rig) == before


def test_journal_with_other_geometry_is_refused():
    rig = used_rig()
    before = files(rig)
    rig.kw["num_blocks"] = 128
    with pytest.raises(JournalMismatch, match="128 of 512"):
        rig.open()
    assert files(rig) == before


def test_unknown_journal_version_is_refused():
    rig = used_rig()
    j = rig.m.open("journal")
    block = bytearray(4096)
    j.pread_into(0, memoryview(block))
    block[8:12] = (42).to_bytes(4, "little")
    j.pwritev(0, [block])
    j.pwritev(4096, [block])
    j.sync()
    before = files(rig)
    with pytest.raises(JournalMismatch, match="version 42"):
        rig.open()
    assert files(rig) == before


def test_foreign_data_in_the_journal_file_is_not_overwritten():
    rig = Rig()
    j = rig.m.open("journal", rig.kw["journal_size"])
    j.pwritev(0, [b"precious data" * 100])
    j.sync()
    before = rig.raw("journal")
    with pytest.raises(JournalMismatch, match="not a journal"):
        rig.open()
    assert rig.raw("journal") == before


def test_bitmap_of_another_chunk_size_is_refused():
    rig = used_rig()
    before = files(rig)
    rig.kw["chunk_size"] = 8192
    rig.num_chunks //= 2
    with pytest.raises(BitmapError, match="delete it"):
        rig.open()
    assert files(rig) == before


def test_mirror_smaller_than_the_volume_is_refused():
    rig = Rig()
    rig.m.open("mirror", 100 * BS)
    with pytest.raises(VolumeConfigError, match="enlarge the mirror"):
        rig.open()
    assert not any(rig.raw("journal")) and not any(rig.raw("bitmap"))


@pytest.mark.parametrize("change, message", [
    ({"block_size": 1000}, "block_size must be 512 or 4096"),
    ({"num_blocks": 0}, "num_blocks"),
    ({"chunk_size": 3000}, "power of two"),
    ({"journal_size": 64 * 1024}, "minimum"),
    ({"journal_size": 300 * 1024 + 1}, "multiple of 4096"),
    ({"max_transfer_bytes": 1 << 20}, "too small for max_transfer_bytes"),
    ({"mirror_io": None}, "exactly one of mirror_path and mirror_io"),
])
def test_bad_configuration_says_what_to_fix(change, message):
    rig = Rig()
    cfg = rig.config()
    args = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__} | change
    with pytest.raises(VolumeConfigError, match=message):
        Volume.open(VolumeConfig(**args))


def test_too_small_bitmap_file_is_refused():
    rig = Rig()
    rig.m.open("bitmap", fmt.SLOT_SIZE * 2)
    with pytest.raises(BitmapError, match="needs"):
        rig.open()


def test_journal_file_smaller_than_configured_is_refused_and_nothing_written():
    rig = Rig()
    rig.m.open("journal", 64 * 1024)
    with pytest.raises(InvalidRequest, match="less than the requested journal size"):
        rig.open()
    assert not any(rig.raw("journal")) and not any(rig.raw("bitmap"))
    assert not any(rig.raw("mirror"))
