"""What an old primary's mirror holds beyond a promotion's base, from its own journal and
bitmap (appliance/replication/dr/failback.py), on a real volume written through Volume."""

from __future__ import annotations

import uuid

import pytest

from appliance.journal import OpKind, WriteOp
from appliance.replication.dr import failback
from appliance.volume import Volume, VolumeConfig
from appliance.volume.promotion_base import PromotionBase

BLOCKS = 2048                   # 1 MiB of 512-byte blocks, 16 chunks of 64 KiB
CHUNK = 64 * 1024
VOL = uuid.UUID(int=11)


def config(tmp_path) -> VolumeConfig:
    return VolumeConfig(uuid=VOL, num_blocks=BLOCKS, journal_size=1 << 20,
                        max_transfer_bytes=64 * 1024, chunk_size=CHUNK,
                        mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
                        bitmap_path=tmp_path / "bitmap")


def write(vol: Volume, lba: int, nblocks: int = 2) -> None:
    vol.submit([WriteOp(OpKind.WRITE, lba, nblocks, bytes([lba % 251]) * 512 * nblocks)])


def base(seq: int, promoted_ns: int) -> PromotionBase:
    return PromotionBase(VOL, seq, 2, promoted_ns)


def plan(tmp_path, b: PromotionBase) -> failback.FailbackPlan:
    return failback.plan(b, journal=tmp_path / "journal", mirror=tmp_path / "mirror",
                         block_size=512)


def test_the_extents_are_the_writes_beyond_the_base_and_the_bitmap(tmp_path):
    with Volume.open(config(tmp_path)) as vol:
        for lba in (0, 100, 200, 300, 400):          # seqs 1..5
            write(vol, lba)
        vol.pause_journal()                          # then two writes to the bitmap only
        write(vol, 1500)
        write(vol, 1510)
    p = plan(tmp_path, base(3, promoted_ns=2**62))   # promoted after every write here
    assert (p.records, p.head_seq, p.split_brain) == (2, 5, False)
    chunk_blocks = CHUNK // 512
    assert p.bitmap_extents == [(1408, chunk_blocks)]      # lba 1500 and 1510: chunk 11
    assert p.extents == [(300, 2), (400, 2), (1408, chunk_blocks)]


def test_writes_after_the_promotion_are_a_split_brain(tmp_path):
    with Volume.open(config(tmp_path)) as vol:
        for lba in (0, 100, 200):
            write(vol, lba)
    p = plan(tmp_path, base(1, promoted_ns=0))       # every write is later than the promotion
    assert p.split_brain and [s for s, _ in p.after_promotion] == [2, 3]


def test_nothing_is_claimed_that_the_journal_cannot_show(tmp_path):
    with Volume.open(config(tmp_path)):
        pass
    other = PromotionBase(uuid.UUID(int=12), 0, 2, 0)
    with pytest.raises(failback.BaseUnproven, match="is not the promoted volume"):
        plan(tmp_path, other)
    (tmp_path / "elsewhere").write_bytes(bytes(BLOCKS * 512))
    with pytest.raises(failback.BaseUnproven, match="names the mirror"):
        failback.plan(base(0, 0), journal=tmp_path / "journal",
                      mirror=tmp_path / "elsewhere", block_size=512)
    with Volume.open(config(tmp_path)), \
            pytest.raises(failback.BaseUnproven, match="still in use"):   # a handler serves it
        plan(tmp_path, base(0, 0))


def test_many_extents_are_merged_coarser_never_smaller():
    extents = [(i * 4, 1) for i in range(failback.MAX_EXTENTS + 10)]
    merged = failback.merge(extents)
    assert len(merged) <= failback.MAX_EXTENTS
    covered = {b for lba, n in merged for b in range(lba, lba + n)}
    assert all(lba in covered for lba, _ in extents)
    assert failback.merge([(10, 5), (12, 10), (22, 1), (40, 2)]) == [(10, 13), (40, 2)]
