"""The transmitter's steering pieces: `set` validation, live pacing, the chunks of discarded
records, the persisted discard, the one writer of the bitmap's request slot, and the control
commands' refusals on a transmitter that is not connected."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import pytest

from appliance import storage
from appliance.control.server import CommandError
from appliance.replication.config import transmitter_config
from appliance.replication.primary.steering import (
    BitmapRequests,
    DiscardState,
    LiveLimiter,
    Pacing,
    chunk_runs,
    parse_settings,
)
from appliance.replication.primary.transmitter import Transmitter
from appliance.volume import bitmap_format as fmt
from appliance.volume.bitmap import DirtyBitmap


def test_set_takes_the_config_files_values():
    got = parse_settings({"bandwidth_limit": 12_500_000, "blackout": ["08:00-18:00",
                                                                      "22:00-06:00"]})
    assert got == {"bandwidth_limit": 12_500_000.0,
                   "blackout": [(dt.time(8), dt.time(18)), (dt.time(22), dt.time(6))]}
    assert parse_settings({"bandwidth_limit": None}) == {"bandwidth_limit": None}
    assert parse_settings({"blackout": []}) == {"blackout": []}


@pytest.mark.parametrize(("args", "names"), [
    ({"bandwidth_limit": 0}, "bandwidth_limit must be positive"),
    ({"bandwidth_limit": -5.5}, "bandwidth_limit must be positive"),
    ({"bandwidth_limit": True}, "bandwidth_limit must be a number"),
    ({"bandwidth_limit": "10M"}, "bandwidth_limit must be a number"),
    ({"blackout": "08:00-18:00"}, "blackout must be a list"),
    ({"blackout": ["8-18"]}, "blackout window '8-18' must look like '08:00-18:00'"),
    ({"blackout": ["08:00"]}, "blackout window"),
    ({"bandwith_limit": 5}, "unknown: bandwith_limit"),
    ({}, "needs at least one"),
])
def test_set_refuses_what_the_config_file_refuses_naming_the_key(args, names):
    with pytest.raises(CommandError, match=names) as err:
        parse_settings(args)
    assert "nothing changed" in str(err.value)


def test_pacing_applies_live():
    pacing = Pacing(None, [])
    assert pacing.batch_bytes(1 << 20) == 1 << 20 and not pacing.in_blackout()
    pacing.apply(parse_settings({"bandwidth_limit": 1_000_000, "blackout": ["10:00-11:00"]}))
    assert pacing.bandwidth_limit == 1_000_000 and pacing.batch_bytes(1 << 20) == 125_000
    assert pacing.in_blackout(dt.time(10, 30)) and not pacing.in_blackout(dt.time(11, 0))
    assert pacing.as_dict() == {"bandwidth_limit": 1_000_000, "blackout": ["10:00-11:00"]}
    pacing.apply({"bandwidth_limit": None})
    assert pacing.as_dict()["bandwidth_limit"] is None and pacing.blackout


def test_live_limiter_changes_rate_without_a_new_link():
    limiter = LiveLimiter(None)

    async def elapsed(nbytes: int) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await limiter.take(nbytes)
        return loop.time() - t0

    assert asyncio.run(elapsed(10 << 20)) < 0.05          # unlimited
    limiter.set_rate(1_000_000)                            # burst 100 kB
    assert asyncio.run(elapsed(300_000)) >= 0.15          # (300k - 100k) / 1 MB/s = 0.2 s
    limiter.set_rate(None)
    assert asyncio.run(elapsed(10 << 20)) < 0.05


def test_chunk_runs_cover_the_records_extents():
    # 512-byte blocks, 64 KiB chunks (128 blocks), 10 chunks.
    extents = [(0, 1), (127, 2), (640, 128), (1279, 1), (5, 3), (1000, 0)]
    assert chunk_runs(extents, 512, 65536, 10) == [(0, 2), (5, 1), (7, 1), (9, 1)]
    assert chunk_runs([(1270, 100)], 512, 65536, 10) == [(9, 1)]      # cut at the end
    assert chunk_runs([], 512, 65536, 10) == []


def test_discard_state_round_trip_merge_and_damage(tmp_path):
    bitmap = tmp_path / "bitmap"
    assert DiscardState.load(bitmap) is None
    first = DiscardState(51, 401, 351, 3 << 20, 1000.0)
    first.save(bitmap)
    assert DiscardState.load(bitmap) == first
    later = DiscardState(402, 450, 49, 1 << 20, 2000.0)
    assert first.merged(later) == DiscardState(51, 450, 400, 4 << 20, 2000.0)
    DiscardState.path_for(bitmap).write_text("{not json")
    with pytest.raises(ValueError, match="invalidate"):
        DiscardState.load(bitmap)
    DiscardState.remove(bitmap)
    assert DiscardState.load(bitmap) is None


def test_mark_requests_are_never_lost_and_split_to_fit_the_slot(tmp_path):
    """Mark runs beyond one request slot: each request waits for the writer before the next
    is written (the slot holds one request; a newer one would replace it)."""
    chunks = 4 * fmt.MAX_REQUEST_RANGES
    path = tmp_path / "bitmap"
    io = storage.open_file(path, create_size=fmt.file_size(chunks))
    bm = DirtyBitmap.open(io, volume_uuid=uuid.uuid4(), chunk_size=65536, num_chunks=chunks)
    stop = threading.Event()
    marks = []

    def writer():
        while not stop.is_set():
            req = bm.pending_request()
            if req is not None and req.mark:
                marks.append(len(req.ranges))
                bm.handle_mark(req)
            elif req is not None:
                bm.handle_request(req)

    requests = BitmapRequests(path)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        runs = [(2 * i, 1) for i in range(chunks // 2)]       # every other chunk
        requests.mark(runs, timeout=10)
        assert bm.dirty_chunks == chunks // 2
        assert marks == [fmt.MAX_REQUEST_RANGES] * 2
        requests.mark_all(timeout=10)
        assert bm.dirty_chunks == chunks
    finally:
        stop.set()
        thread.join()
        requests.close()
        bm.close()


def transmitter(tmp_path, **extra) -> Transmitter:
    raw = {"identity": "site-a", "peer": "127.0.0.1:1", "peer_identity": "dr-site",
           "journal": str(tmp_path / "journal"), "volume_uuid": str(uuid.uuid4()),
           "size_bytes": 1 << 20, "control_socket": str(tmp_path / "tx.sock"),
           "insecure": True, "name": "vol-a", **extra}
    return Transmitter(transmitter_config(raw))


def test_control_commands_on_an_unconnected_transmitter(tmp_path):
    tx = transmitter(tmp_path, paused=True, bandwidth_limit=5000, blackout=["01:00-02:00"])
    st = tx.status({})
    assert st["paused"] is True and st["name"] == "vol-a" and st["needs_resync"] is False
    assert st["bandwidth_limit"] == 5000 and st["blackout"] == ["01:00-02:00"]
    assert tx.resume({}) == {"paused": False, "needs_resync": False}
    with pytest.raises(CommandError, match="pause first") as err:
        asyncio.run(tx.discard({}))
    assert "nothing changed" in str(err.value)
    assert tx.pause({}) == {"paused": True}
    with pytest.raises(CommandError, match="pause takes no arguments"):
        tx.pause({"now": True})
    # No journal yet, so no bitmap known: refused, nothing changed.
    with pytest.raises(CommandError, match="discard needs the volume's bitmap.*nothing changed"):
        asyncio.run(tx.discard({}))
    with pytest.raises(CommandError, match="resync needs the volume's bitmap"):
        asyncio.run(tx.full_resync({}))
    assert tx.set_pacing({"bandwidth_limit": None, "blackout": []}) == {
        "bandwidth_limit": None, "blackout": []}
    with pytest.raises(CommandError, match="bandwidth_limit"):
        tx.set_pacing({"bandwidth_limit": -1})
    assert tx.status({})["bandwidth_limit"] is None
