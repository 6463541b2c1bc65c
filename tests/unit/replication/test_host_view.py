"""HostView (appliance/replication/primary/host_view.py): regions of the primary read as the
host reads them, against a real Volume with the write cache on. The mirror file lacks the
cached writes; the view must not, whatever the journal did meanwhile (mirror checkpoints,
reclaimed and reused segments, a checkpoint moving under a read, bitmap mode)."""

from __future__ import annotations

import random
import uuid

import pytest

from appliance import storage
from appliance.journal import JournalReader, OpKind, RecordsGone, WriteOp
from appliance.replication.primary.host_view import HostView, Spans
from appliance.volume import FlushPolicy, Volume, VolumeConfig

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000dd")
BS = 512
BLOCKS = 4096           # 2 MiB
REGION = 64 * 1024


def open_volume(tmp_path, **kw) -> Volume:
    return Volume.open(VolumeConfig(
        uuid=VOL, num_blocks=BLOCKS, block_size=BS, journal_size=1 << 20,
        max_transfer_bytes=16 * 1024, flush_policy=FlushPolicy.ON_FLUSH,
        service_interval=None, mirror_sync_interval=3600.0, direct_io=False,
        mirror_path=tmp_path / "mirror", journal_path=tmp_path / "journal",
        bitmap_path=tmp_path / "bitmap", **kw))


def host_read(vol: Volume, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    step = 16 * 1024
    for at in range(0, length, step):
        n = min(step, length - at)
        vol.read_into((offset + at) // BS, n // BS, [memoryview(buf)[at:at + n]])
    return bytes(buf)


def random_op(rng: random.Random, i: int) -> WriteOp:
    kind = rng.choices((OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP), (80, 12, 8))[0]
    n = rng.randint(1, 32)
    lba = rng.randrange(0, BLOCKS - n + 1)
    if kind is OpKind.WRITE:
        return WriteOp(kind, lba, n, rng.randbytes(n * BS))
    if kind is OpKind.WRITE_SAME:
        return WriteOp(kind, lba, n, bytes([i % 251 + 1]) * BS)
    return WriteOp(kind, lba, n)


class Peer:
    """The transmitter's part: read on, acknowledge, so the writer reclaims and reuses."""

    def __init__(self, tmp_path) -> None:
        self.reader = JournalReader(tmp_path / "journal", volume_uuid=VOL)
        self.next = self.reader.acked_seq + 1

    def ship_all(self) -> None:
        while records := self.reader.read(self.next, 1 << 20):
            self.next = records[-1].seq + 1
        if self.next - 1 > self.reader.acked_seq:
            self.reader.acknowledge(self.next - 1)


@pytest.fixture
def parts(tmp_path):
    vol = open_volume(tmp_path, mirror_sync_bytes=64 * 1024)
    mirror = storage.open_file(tmp_path / "mirror")
    view = HostView(mirror, lambda: JournalReader(tmp_path / "journal", volume_uuid=VOL))
    peer = Peer(tmp_path)
    try:
        yield vol, view, peer, tmp_path
    finally:
        view.close()
        mirror.close()
        peer.reader.close()
        vol.close()


def check(vol: Volume, view: HostView, regions: list[tuple[int, int]]) -> None:
    datas, head = view.read(regions)
    assert head == vol.status()["journal"]["next_seq"] - 1
    for (offset, length), data in zip(regions, datas, strict=True):
        assert data == host_read(vol, offset, length), f"region at {offset} differs"


def test_the_view_is_what_the_host_reads_through_checkpoints_and_journal_wraps(parts):
    vol, view, peer, tmp_path = parts
    rng = random.Random(7)
    mirror_lacked_writes = 0
    for i in range(1, 1500):
        vol.submit([random_op(rng, i)], fua=rng.random() < 0.05)
        if rng.random() < 0.03:
            vol.flush()
        if rng.random() < 0.3:
            peer.ship_all()
        if i % 25 == 0:
            first = rng.randrange(0, BLOCKS * BS // REGION - 4)
            regions = [(r * REGION, REGION) for r in range(first, first + 4)]
            if i % 100 == 0:
                regions = [(r * REGION, REGION) for r in range(BLOCKS * BS // REGION)]
            check(vol, view, regions)
            mirror = (tmp_path / "mirror").read_bytes()
            mirror_lacked_writes += any(mirror[o:o + n] != host_read(vol, o, n)
                                        for o, n in regions)
    usage = vol.status()["journal"]
    assert usage["next_seq"] == 1500 and usage["tail_seq"] > 300, "the journal never wrapped"
    assert mirror_lacked_writes > 10, "the mirror file mostly held the cached writes already"
    assert view.records_applied > 0


def test_pieces_smaller_than_a_region_and_regions_out_of_order(parts):
    vol, view, _, _ = parts
    vol.submit([WriteOp(OpKind.WRITE, 100, 8, b"\x11" * 8 * BS)], fua=True)
    vol.submit([WriteOp(OpKind.WRITE, 102, 2, b"\x22" * 2 * BS),
                WriteOp(OpKind.WRITE_SAME, 2000, 300, b"\x33" * BS),
                WriteOp(OpKind.UNMAP, 2100, 10)])
    check(vol, view, [(2048 * BS, 4096), (101 * BS, 2 * BS), (0, 1024 * BS)])
    with pytest.raises(ValueError, match="whole blocks"):
        view.read([(100, BS)])


def test_a_checkpoint_moving_under_the_read_starts_it_over(parts, monkeypatch):
    """The writer syncs its mirror and reclaims what the read was about to take from the
    journal: the mirror holds those writes now, so the read starts over and still returns
    the host's image."""
    vol, view, peer, _ = parts
    vol.submit([WriteOp(OpKind.WRITE, 10, 4, b"\x44" * 4 * BS)])
    view.read([(0, REGION)])                    # the readers are open now
    scan = view._scan
    real_read = scan.read
    moved = []

    def read_after_the_writer_moved_on(from_seq, max_bytes, *, views=False):
        if not moved:
            moved.append(from_seq)
            vol.submit([WriteOp(OpKind.WRITE, 12, 8, b"\x55" * 8 * BS)])
            vol.flush()
            for k in range(6):          # past mirror_sync_bytes: the writer checkpoints
                vol.submit([WriteOp(OpKind.WRITE, 3000 + 32 * k, 32, b"\x66" * 32 * BS)],
                           fua=True)
            assert view._scan.writer_checkpoint().mirror_durable_seq > from_seq
            peer.ship_all()
            raise RecordsGone(f"records from seq {from_seq} were reclaimed")
        return real_read(from_seq, max_bytes, views=views)

    monkeypatch.setattr(scan, "read", read_after_the_writer_moved_on)
    vol.submit([WriteOp(OpKind.WRITE, 11, 1, b"\x77" * BS)])
    check(vol, view, [(0, REGION), (3000 * BS, REGION)])
    assert moved


def test_a_journal_error_without_a_moved_checkpoint_is_raised(parts, monkeypatch):
    vol, view, _, _ = parts
    vol.submit([WriteOp(OpKind.WRITE, 10, 4, b"\x44" * 4 * BS)])
    view.read([(0, REGION)])

    def gone(*_args, **_kw):
        raise RecordsGone("gone")

    monkeypatch.setattr(view._scan, "read", gone)
    vol.submit([WriteOp(OpKind.WRITE, 11, 1, b"\x77" * BS)])
    with pytest.raises(RecordsGone):
        view.read([(0, REGION)])
    monkeypatch.undo()
    check(vol, view, [(0, REGION)])             # indexed again from the checkpoint


def test_while_the_writer_logs_to_the_bitmap_the_view_is_the_mirror(parts):
    """The bitmap resync reads only then: entering that mode commits the overlay and
    checkpoints the mirror, and bitmap-mode writes go to the mirror at once."""
    vol, view, _, tmp_path = parts
    vol.submit([WriteOp(OpKind.WRITE, 10, 4, b"\x44" * 4 * BS)])
    vol.start_full_resync()
    vol.submit([WriteOp(OpKind.WRITE, 12, 8, b"\x55" * 8 * BS)])
    before = view.records_applied
    datas, head = view.read([(0, REGION)])
    assert vol.state == "logging-to-bitmap"
    assert datas[0] == (tmp_path / "mirror").read_bytes()[:REGION] == host_read(vol, 0, REGION)
    assert head == vol.status()["overflow_seq"]
    assert view.records_applied == before, "records applied over a mirror that holds them"


def test_spans_touch():
    spans = Spans([(10, 20), (30, 40), (18, 25)])
    assert not spans.touches(0, 10) and spans.touches(0, 11)
    assert spans.touches(24, 26) and not spans.touches(25, 30)
    assert spans.touches(39, 100) and not spans.touches(40, 100)
    assert not Spans([]).touches(0, 100)
