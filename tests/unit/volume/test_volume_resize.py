"""Volume.resize: grow and shrink on real files, the refusals, and power cuts at every step."""

from __future__ import annotations

import os
import random
import uuid

import pytest
from volume_harness import BS, Peer, PowerCut, Rig, arm, block_data, read_all

from appliance.journal import InvalidRequest, JournalMismatch, OpKind, WriteOp
from appliance.journal.header import load_superblock, read_header
from appliance.volume import FlushPolicy, ResizeRefused, Volume, VolumeConfig
from appliance.volume import bitmap_format as fmt
from tests.support.simdisk import SimMachine


def write(lba: int, n: int, wid: int) -> WriteOp:
    return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))


def real_config(tmp_path, num_blocks: int, **kw) -> VolumeConfig:
    args = dict(uuid=uuid.UUID(int=5), num_blocks=num_blocks, journal_size=1 << 20,
                max_transfer_bytes=64 * 1024, chunk_size=16384, service_interval=None,
                mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
                bitmap_path=tmp_path / "bitmap") | kw
    return VolumeConfig(**args)


def read(vol: Volume, lba: int, n: int) -> bytes:
    buf = bytearray(n * BS)
    vol.read_into(lba, n, [memoryview(buf)])
    return bytes(buf)


def test_grow_a_file_backed_volume_and_reopen_at_the_new_size(tmp_path):
    with Volume.open(real_config(tmp_path, 1000)) as vol:
        vol.submit([write(990, 10, 1)])
        with pytest.raises(InvalidRequest, match="beyond the end"):
            vol.submit([write(1000, 1, 2)])
        vol.resize(3000)
        assert vol.num_blocks == 3000 and vol.status()["state"] == "journaling"
        assert os.path.getsize(tmp_path / "mirror") == 3000 * BS
        assert os.path.getsize(tmp_path / "bitmap") >= fmt.file_size(-(-3000 * BS // 16384))
        assert read_all(vol)[1000:] == [bytes(BS)] * 2000            # the new region is zeros
        vol.submit([write(2995, 5, 3)])                              # the journal takes it
    with pytest.raises(JournalMismatch, match="made for 3000 blocks"):
        Volume.open(real_config(tmp_path, 1000))
    with Volume.open(real_config(tmp_path, 3000)) as vol:
        assert read(vol, 990, 10) == write(990, 10, 1).data
        assert read(vol, 2995, 5) == write(2995, 5, 3).data


def test_shrink_then_grow_does_not_bring_back_the_cut_bytes(tmp_path):
    cfg = real_config(tmp_path, 2000)
    with Volume.open(cfg) as vol:
        vol.submit([write(1990, 10, 1)])
        with pytest.raises(ResizeRefused, match="not acknowledged"):
            vol.resize(1000)
        assert vol.num_blocks == 2000 and read(vol, 1990, 10) == write(1990, 10, 1).data
        # The peer catches up: now nothing it lacks is cut.
        from appliance.journal import JournalReader
        with JournalReader(tmp_path / "journal", volume_uuid=cfg.uuid) as reader:
            reader.acknowledge(reader.read(1, 1 << 20)[-1].seq)
        vol.resize(1000)
        assert os.path.getsize(tmp_path / "mirror") == 1000 * BS
        with pytest.raises(InvalidRequest, match="beyond the end"):
            vol.submit([write(1500, 1, 2)])
        vol.resize(2000)
        assert read(vol, 1990, 10) == bytes(10 * BS)


def test_shrink_is_refused_while_chunks_past_the_end_are_dirty():
    rig = Rig()
    vol = rig.open()
    vol.start_full_resync()
    before = (rig.raw("journal"), rig.raw("bitmap"))
    with pytest.raises(ResizeRefused, match="dirty"):
        vol.resize(128)
    assert vol.num_blocks == 256 and (rig.raw("journal"), rig.raw("bitmap")) == before
    peer = Peer(rig)
    while peer.resync(vol):
        pass
    vol.service()
    vol.resize(128)
    assert vol.num_blocks == 128 and vol.status()["state"] == "journaling"
    vol.close()


def test_a_fixed_size_mirror_too_small_to_grow_is_refused_untouched():
    rig = Rig()
    vol = rig.open()
    vol.submit([write(0, 4, 1)])
    before = (rig.raw("journal"), rig.raw("bitmap"))
    with pytest.raises(ResizeRefused, match="enlarge the device"):
        vol.resize(512)
    assert (rig.raw("journal"), rig.raw("bitmap")) == before
    with pytest.raises(InvalidRequest, match="at least one block"):
        vol.resize(0)
    assert vol.num_blocks == 256 and read(vol, 0, 4) == write(0, 4, 1).data
    vol.close()


# -- power cuts ------------------------------------------------------------------------

OLD, NEW_BIG, NEW_SMALL = 256, 640, 96


def recorded_blocks(m: SimMachine, vol_uuid: uuid.UUID) -> int:
    io = m.open("journal")
    try:
        return load_superblock(io, read_header(io), vol_uuid).volume_blocks
    finally:
        io.close()


def prepared_rig(policy: FlushPolicy) -> tuple[Rig, Volume, dict[int, bytes]]:
    """A volume whose mirror and bitmap 'devices' are big enough for NEW_BIG blocks, with
    flushed data up to its last block; some of it the peer has acknowledged."""
    rig = Rig(policy=policy)
    rig.m.open("mirror", NEW_BIG * BS)
    rig.m.open("bitmap", fmt.file_size(-(-NEW_BIG * BS // 4096)))
    vol = rig.open()
    vol.write_cache_enabled = policy == FlushPolicy.ON_FLUSH
    expect = {}
    for wid, lba in enumerate([0, 50, OLD - 8, NEW_SMALL - 4], start=1):
        op = write(lba, 8 if lba != NEW_SMALL - 4 else 4, wid)
        vol.submit([op])
        expect.update({lba + i: block_data(wid, i) for i in range(op.nblocks)})
    vol.flush()
    Peer(rig).ship()            # the peer holds it all: a shrink may cut
    vol.submit([write(10, 2, 9)])
    expect.update({10: block_data(9, 0), 11: block_data(9, 1)})
    vol.flush()
    return rig, vol, expect


@pytest.mark.parametrize("policy", list(FlushPolicy))
@pytest.mark.parametrize("new", [NEW_BIG, NEW_SMALL])
def test_a_power_cut_anywhere_in_resize_leaves_a_volume_that_opens(policy, new):
    rig, vol, _ = prepared_rig(policy)
    seen = arm(rig.m, 10**9)
    vol.resize(new)
    steps = seen[0]
    vol.close()
    assert steps > 3, "resize wrote nothing?"
    outcomes = set()
    for cut in range(1, steps + 1):
        for seed in range(5):
            rig, vol, expect = prepared_rig(policy)
            arm(rig.m, cut)
            with pytest.raises(PowerCut):
                vol.resize(new)
            rig.crash(random.Random(cut * 7 + seed), tear=True)
            size = recorded_blocks(rig.m, rig.uuid)
            assert size in (OLD, new), f"cut {cut}: journal records {size} blocks"
            outcomes.add(size)
            rig.num_blocks, rig.kw["num_blocks"] = size, size
            rig.num_chunks = -(-size * BS // 4096)
            vol = rig.open()
            blocks = read_all(vol)
            for lba, value in expect.items():
                if lba < size:
                    assert blocks[lba] == value, f"cut {cut}: flushed block {lba} lost"
            if size > OLD:
                assert blocks[OLD:] == [bytes(BS)] * (size - OLD), f"cut {cut}: new region"
            vol.submit([write(size - 1, 1, 77)], fua=True)      # and it takes writes
            assert read(vol, size - 1, 1) == block_data(77, 0)
            vol.close()
    assert outcomes == {OLD, new}, "the cuts never reached one side of the commit"


def test_grow_while_logging_to_the_bitmap_marks_and_resyncs_the_new_region():
    rig = Rig()
    rig.m.open("mirror", 512 * BS)
    rig.m.open("bitmap", fmt.file_size(512 * BS // 4096))
    vol = rig.open()
    vol.start_full_resync()
    vol.resize(512)
    assert vol.status()["dirty_chunks"] == 256 * BS // 4096      # the new chunks start clean
    vol.submit([write(500, 4, 1)])
    assert vol.status()["dirty_chunks"] == 256 * BS // 4096 + 1
    rig.num_blocks, rig.num_chunks = 512, 512 * BS // 4096
    peer = Peer(rig)
    while peer.resync(vol):
        pass
    vol.service()
    assert vol.state == "journaling"
    assert bytes(peer.image) == rig.raw("mirror")[:512 * BS]
    vol.close()


def test_shrink_sees_a_cached_write_past_the_new_end():
    rig = Rig(policy=FlushPolicy.ON_FLUSH)
    vol = rig.open()
    vol.write_cache_enabled = True
    vol.submit([write(200, 2, 1)])                   # cached: journaled, not synced
    with pytest.raises(ResizeRefused, match="not acknowledged"):
        vol.resize(128)
    assert read(vol, 200, 2) == write(200, 2, 1).data
    vol.flush()
    Peer(rig).ship()
    vol.resize(128)
    assert vol.num_blocks == 128
    vol.close()
