"""Undo log (roll back restores the first image, torn tails ignored), REGION/HASHES frames,
and how dirty chunk runs become regions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.replication import wire
from appliance.replication.dr import undo
from appliance.replication.primary.resync import PendingRepair, Region, coalesce, split_regions
from appliance.volume.resync import ResyncSnapshot


class MemMirror:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.syncs = 0

    def pread_into(self, offset, buf):
        buf[:] = self.buf[offset : offset + len(buf)]

    def pwritev(self, offset, bufs):
        for b in bufs:
            self.buf[offset : offset + len(b)] = b
            offset += len(b)

    def sync(self):
        self.syncs += 1


@settings(max_examples=40, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 4), st.integers(1, 255)),
                       min_size=1, max_size=20))
def test_roll_back_restores_the_image_before_the_first_saved_write(tmp_path_factory, writes):
    path = tmp_path_factory.mktemp("undo") / "undo.log"
    m = MemMirror(64 * 16)
    m.buf[:] = bytes(range(256)) * 4
    original = bytes(m.buf)
    log = undo.UndoLog(path)
    for blk, n, fill in writes:        # overlapping writes, each saved before it lands
        n = min(n, 64 - blk)
        log.save(m, blk * 16, n * 16)
        log.sync()
        m.pwritev(blk * 16, [bytes([fill]) * (n * 16)])
    log.close()
    assert undo.roll_back(path, m) == sum(min(n, 64 - b) * 16 for b, n, _ in writes)
    assert bytes(m.buf) == original


def test_torn_last_entry_is_ignored(tmp_path):
    path = tmp_path / "undo.log"
    m = MemMirror(4096)
    m.buf[:] = b"a" * 4096
    log = undo.UndoLog(path)
    log.save(m, 0, 512)
    log.sync()
    m.pwritev(0, [b"b" * 512])
    log.save(m, 0, 512)          # saved, then the crash tore it; its write never happened
    log.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    assert [o for o, _ in undo.entries(path)] == [0]
    undo.roll_back(path, m)
    assert bytes(m.buf[:512]) == b"a" * 512


def test_region_and_hash_frames_round_trip_and_detect_damage():
    payload = wire.encode_region(4096, b"z" * 1024)
    assert wire.decode_region(payload) == (4096, b"z" * 1024)
    bad = bytearray(payload)
    bad[-1] ^= 1
    with pytest.raises(wire.BadChecksum):
        wire.decode_region(bytes(bad))
    with pytest.raises(wire.BadFrame):
        wire.decode_region(payload[:-1])
    hashes = [(0, 65536, b"h" * 16), (65536, 4096, b"i" * 16)]
    assert wire.decode_hashes(wire.encode_hashes(7, hashes)) == (7, hashes)
    assert wire.decode_hash_reply(wire.encode_hash_reply(7, [1])) == (7, [1])
    with pytest.raises(wire.BadFrame):
        wire.decode_hashes(wire.encode_hashes(7, hashes)[:-1])


def test_dirty_runs_become_bounded_regions_clipped_at_the_volume_end():
    snap = ResyncSnapshot(incarnation=1, seen_gen=1, logging=True, overflow_seq=5,
                          chunk_size=65536, runs=((0, 1), (3, 20), (99, 1)))
    volume = 99 * 65536 + 100 * 512            # the last chunk is partial
    regions = split_regions(snap, volume, 1 << 20)
    assert regions[0] == Region(0, 65536, (0, 1))
    assert regions[1] == Region(3 * 65536, 1 << 20, (3, 16))
    assert regions[2] == Region(3 * 65536 + (1 << 20), 4 * 65536, (19, 4))
    assert regions[-1] == Region(99 * 65536, 100 * 512, (99, 1))
    assert sum(r.length for r in regions) == 21 * 65536 + 100 * 512


def test_regions_hold_whole_chunks_so_each_completes_a_chunk_run():
    """A region size that is not a chunk multiple is rounded down to whole chunks: a region
    never ends inside a chunk, so clearing the chunks of shipped regions is exact."""
    snap = ResyncSnapshot(1, 1, True, 0, 65536, ((2, 5),))
    regions = split_regions(snap, 10 * 65536, 3 * 65536 + 4096)
    assert regions == [Region(2 * 65536, 3 * 65536, (2, 3)), Region(5 * 65536, 2 * 65536, (5, 2))]


def test_regions_smaller_than_a_chunk_complete_it_with_the_last_piece():
    snap = ResyncSnapshot(1, 1, True, 0, 65536, ((1, 2),))
    regions = split_regions(snap, 3 * 65536 - 512, 32768)
    assert [(r.offset, r.length, r.completes) for r in regions] == [
        (65536, 32768, None), (98304, 32768, (1, 1)),
        (131072, 32768, None), (163840, 32768 - 512, (2, 1))]


def test_coalesce_merges_adjacent_runs_only():
    assert coalesce([(3, 1), (4, 2), (7, 1), (8, 1), (10, 3)]) == [(3, 3), (7, 2), (10, 3)]
    assert coalesce([]) == []


def test_pending_repair_round_trips_and_a_damaged_file_is_refused_clearly(tmp_path):
    pending = PendingRepair(tmp_path / "bitmap")
    assert pending.load() == []
    pending.save([(0, 65536), (131072, 4096)])
    assert pending.load() == [(0, 65536), (131072, 4096)]
    pending.path.write_text('{"regions": [[0]]}')
    with pytest.raises(ValueError, match="run an online verify with repair again"):
        pending.load()
    pending.done()
    assert not pending.path.exists() and pending.load() == []
