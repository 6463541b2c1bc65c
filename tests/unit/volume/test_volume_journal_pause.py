"""The admin's pause of journaling: writes go to the mirror and the dirty bitmap (as after an
overflow), the pause is persisted in the bitmap header, the resync never ends it, and a power
cut anywhere in pause or resume leaves a volume that is paused or not, never anything else."""

from __future__ import annotations

import random
import uuid

import pytest
from test_volume_crash import MAX_BLOCKS, NUM_BLOCKS, Driver
from volume_harness import BS, Peer, PowerCut, Rig, arm, block_data, read_all

from appliance.journal import OpKind, WriteOp
from appliance.volume import (
    JOURNALING,
    LOGGING_TO_BITMAP,
    FlushPolicy,
    ResyncSource,
    Volume,
    VolumeConfig,
)
from appliance.volume import bitmap_format as fmt
from appliance.volume.bitmap import DirtyBitmap
from tests.support.simdisk import SimMachine


def write(lba: int, n: int, wid: int) -> WriteOp:
    return WriteOp(OpKind.WRITE, lba, n, b"".join(block_data(wid, i) for i in range(n)))


def next_seq(vol: Volume) -> int:
    return vol.status()["journal"]["next_seq"]


def header(rig: Rig) -> fmt.BitmapHeader:
    src = ResyncSource(rig.m.open("bitmap"))
    try:
        return src.header()
    finally:
        src.close()


def test_paused_writes_go_to_mirror_and_bitmap_not_the_journal_and_stay_paused_on_reopen(
        caplog):
    rig = Rig()
    vol = rig.open()
    vol.submit([write(0, 8, 1)])
    seq = next_seq(vol)
    assert seq == 2 and vol.state == JOURNALING and vol.status()["journal_paused"] is False
    assert vol.status()["logging_reason"] is None

    assert vol.pause_journal() is True
    assert vol.pause_journal() is False                     # idempotent: already paused
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "journaling paused by the admin" in warnings[0], warnings
    st = vol.status()
    assert (st["state"], st["journal_paused"], st["logging_reason"]) == (
        LOGGING_TO_BITMAP, True, "paused by admin")
    assert st["alert"].startswith("journaling paused by admin: logging writes to the dirty")
    assert st["overflow_seq"] == 1 and st["overflows"] == 0

    vol.submit([write(100, 4, 2)], fua=True)                # chunk 12 (4 KiB chunks)
    vol.submit([write(200, 1, 3)])                          # chunk 25
    assert next_seq(vol) == seq, "a paused journal took a record"
    assert vol.status()["dirty_chunks"] == 2
    snap = ResyncSource(rig.m.open("bitmap")).snapshot()
    assert snap.runs == ((12, 1), (25, 1)) and snap.logging
    assert snap.journal_paused and snap.logging_reason == "paused by admin"
    mirror = rig.raw("mirror")
    assert mirror[100 * BS:104 * BS] == b"".join(block_data(2, i) for i in range(4))
    assert mirror[200 * BS:201 * BS] == block_data(3, 0)

    vol.close()                                             # a handler restart
    vol = rig.open()
    assert vol.journal_paused and vol.state == LOGGING_TO_BITMAP
    vol.submit([write(150, 1, 4)])
    assert next_seq(vol) == seq
    rig.crash(random.Random(1), tear=True)                  # an appliance power cut
    vol = rig.open()
    assert vol.journal_paused and vol.state == LOGGING_TO_BITMAP
    assert header(rig).journal_paused

    assert vol.resume_journal() is True
    assert vol.resume_journal() is False                    # idempotent: not paused
    st = vol.status()
    # Dirty chunks the peer lacks: logging until the resync has shipped them.
    assert st["state"] == LOGGING_TO_BITMAP and st["journal_paused"] is False
    assert st["logging_reason"].startswith("journaling resumed by admin")
    vol.close()
    vol = rig.open()
    assert not vol.journal_paused
    vol.close()


def test_the_resync_does_not_end_an_admin_pause_but_ends_logging_after_resume():
    rig = Rig()
    peer = Peer(rig)
    vol = rig.open()
    vol.submit([write(0, 8, 1)], fua=True)
    vol.pause_journal()
    vol.submit([write(40, 8, 2)], fua=True)
    for _ in range(3):
        peer.resync(vol)                                    # ships and clears every chunk
        vol.service()
    st = vol.status()
    assert st["dirty_chunks"] == 0 and peer.acked >= st["overflow_seq"]
    assert st["state"] == LOGGING_TO_BITMAP, "the resync's clear ended the admin's pause"
    assert vol.journal_paused

    vol.submit([write(60, 2, 3)], fua=True)                 # still to the bitmap
    assert vol.status()["dirty_chunks"] == 1
    vol.resume_journal()
    assert vol.state == LOGGING_TO_BITMAP                   # chunk 7 is still owed
    peer.resync(vol)
    vol.service()
    assert vol.state == JOURNALING
    seq = next_seq(vol)
    vol.submit([write(80, 1, 4)], fua=True)
    assert next_seq(vol) == seq + 1, "resumed journal took no record"
    peer.ship()
    assert bytes(peer.image) == b"".join(read_all(vol))
    vol.close()


def test_resume_with_nothing_owed_journals_at_once():
    rig = Rig()
    vol = rig.open()
    vol.pause_journal()
    vol.resume_journal()
    assert vol.state == JOURNALING and header(rig).mode == fmt.MODE_JOURNALING
    vol.close()


def test_pause_during_an_overflow_keeps_logging_and_resume_restores_the_overflow_reason():
    rig = Rig(num_blocks=512, max_transfer=MAX_BLOCKS * BS)
    peer = Peer(rig)
    vol = rig.open()
    wid = 0
    while vol.state != LOGGING_TO_BITMAP:
        wid += 1
        vol.submit([write((wid * 64) % (512 - 64), 64, wid)])
    assert vol.status()["logging_reason"] == "journal full"
    since = vol.status()["logging_since"]
    assert vol.pause_journal()
    st = vol.status()
    assert st["logging_reason"] == "paused by admin" and st["logging_since"] == since
    for _ in range(3):
        peer.resync(vol)
        vol.service()
    assert vol.state == LOGGING_TO_BITMAP and vol.status()["dirty_chunks"] == 0
    assert vol.resume_journal()
    assert vol.state == JOURNALING                          # nothing owed any more
    vol.close()


def test_leaving_logging_while_paused_is_refused_by_the_bitmap():
    rig = Rig()
    vol = rig.open()
    vol.pause_journal()
    with pytest.raises(ValueError, match="resume it first"):
        vol._bitmap.set_mode(False, 0)
    assert vol.journal_paused and vol.state == LOGGING_TO_BITMAP
    vol.close()


def test_header_versions_1_and_2_read_as_not_paused_with_an_unknown_reason():
    h = fmt.BitmapHeader(7, uuid.UUID(int=1), 65536, 16, 3, 2, fmt.MODE_LOGGING, 99, 4, 123)
    v2 = fmt._HEADER_V2.pack(fmt.HEADER_MAGIC, 2, h.generation, h.volume_uuid.bytes,
                             h.chunk_size, h.num_chunks, h.incarnation, h.completed_gen,
                             h.mode, h.overflow_seq, h.processed_request, h.logging_since_ns)
    old = fmt.decode_header(fmt._seal(v2))
    assert old == h and not old.journal_paused
    assert old.reason_text.startswith("unknown")
    paused = fmt.BitmapHeader(8, h.volume_uuid, 65536, 16, 3, 2, fmt.MODE_LOGGING, 99, 4, 123,
                              fmt.FLAG_JOURNAL_PAUSED, fmt.REASON_JOURNAL_FULL)
    assert fmt.decode_header(fmt.encode_header(paused)) == paused
    assert paused.journal_paused and paused.reason_text == "paused by admin"


def test_a_version_2_bitmap_is_opened_and_rewritten_in_the_current_version():
    m = SimMachine()
    io = m.open("bitmap", fmt.file_size(16))
    h = fmt.BitmapHeader(5, uuid.UUID(int=1), 65536, 16, 3, 2, fmt.MODE_LOGGING, 99, 4, 123)
    v2 = fmt._HEADER_V2.pack(fmt.HEADER_MAGIC, 2, h.generation, h.volume_uuid.bytes,
                             h.chunk_size, h.num_chunks, h.incarnation, h.completed_gen,
                             h.mode, h.overflow_seq, h.processed_request, h.logging_since_ns)
    io.pwritev(0, [fmt._seal(v2)])
    bm = DirtyBitmap.open(io, volume_uuid=h.volume_uuid, chunk_size=65536, num_chunks=16)
    assert bm.logging and not bm.journal_paused and bm.overflow_seq == 99
    slots = bytearray(2 * fmt.SLOT_SIZE)
    io.pread_into(0, memoryview(slots))
    versions = {int.from_bytes(slots[o + 8:o + 12], "little") for o in fmt.HEADER_OFFSETS}
    assert versions == {2, fmt.HEADER_VERSION}     # the new write went to the other slot
    bm.set_paused(True)
    bm.close()
    bm = DirtyBitmap.open(m.open("bitmap"), volume_uuid=h.volume_uuid, chunk_size=65536,
                          num_chunks=16)
    assert bm.journal_paused and bm.logging_since_ns == 123
    bm.close()


# -- power cuts ------------------------------------------------------------------------

def prepared(policy: FlushPolicy, paused: bool) -> Driver:
    """A volume with history: flushed and cached writes, some shipped; paused if asked,
    with writes made while paused."""
    d = Driver(policy, seed=5)
    d.vol.write_cache_enabled = policy == FlushPolicy.ON_FLUSH
    rng = random.Random(9)
    for i in range(6):
        d.step(("submit", [("write", (rng.randrange(NUM_BLOCKS - 8), 8))], i == 2))
        if i == 3:
            d.step(("flush",))
            d.step(("ship", 2))
    if paused:
        d.vol.pause_journal()
        for _ in range(3):
            d.step(("submit", [("write", (rng.randrange(NUM_BLOCKS - 4), 4))], False))
    return d


def finish(d: Driver) -> None:
    """From any outcome: resume if paused, resync until journaling, and the peer converges."""
    rng = random.Random(2)
    d.step(("submit", [("write", (rng.randrange(NUM_BLOCKS - 4), 4))], True))
    if d.vol.journal_paused:
        d.step(("resync",))
        assert d.vol.state == LOGGING_TO_BITMAP, "the resync ended a pause after a crash"
        assert d.vol.resume_journal()
    for _ in range(5):
        d.step(("resync",))
        if d.vol.state == JOURNALING:
            break
    assert d.vol.state == JOURNALING
    d.step(("flush",))
    d.peer.ship()
    assert bytes(d.peer.image) == b"".join(read_all(d.vol)), "peer diverged"


@pytest.mark.parametrize("policy", list(FlushPolicy))
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_a_power_cut_anywhere_in_pause_or_resume_leaves_one_state_or_the_other(policy, action):
    was_paused = action == "resume"
    d = prepared(policy, was_paused)
    seen = arm(d.rig.m, 10**9)
    getattr(d.vol, f"{action}_journal")()
    steps = seen[0]
    assert steps >= 1, f"{action} wrote nothing"
    outcomes = set()
    for cut in range(1, steps + 1):
        for seed in range(3):
            d = prepared(policy, was_paused)
            d.rng = random.Random(cut * 13 + seed)
            arm(d.rig.m, cut)
            with pytest.raises(PowerCut):
                getattr(d.vol, f"{action}_journal")()
            d.crash(tear=True)          # checks flushed data, redo and invariant 3
            paused = d.vol.journal_paused
            assert not paused or d.vol.state == LOGGING_TO_BITMAP
            outcomes.add(paused)
            finish(d)
    # The last step is the header's sync: cut before it, a torn header may still survive
    # whole, so both outcomes must be seen across the cuts and seeds.
    assert outcomes == {False, True}, f"cuts in {action} never reached one side: {outcomes}"


def test_each_way_into_logging_says_why(tmp_path):
    rig = Rig()
    vol = rig.open()
    vol.start_full_resync()
    assert vol.status()["logging_reason"] == "full resync requested"
    vol.close()

    rig = Rig()
    vol = rig.open()
    src = ResyncSource(rig.m.open("bitmap"))
    src.wait_processed(src.request_mark_all(), timeout=5, poll=vol.service)
    assert vol.status()["logging_reason"] == "peer needs a full copy"
    assert src.snapshot().logging_reason == "peer needs a full copy"
    vol.close()

    mirror = tmp_path / "mirror"
    mirror.write_bytes(b"\1" * 4096 + bytes(60 * 1024))         # an existing disk, taken over
    with Volume.open(VolumeConfig(uuid=uuid.UUID(int=3), num_blocks=128, journal_size=1 << 20,
                                  max_transfer_bytes=64 * 1024, service_interval=None,
                                  mirror_path=mirror, journal_path=tmp_path / "journal",
                                  bitmap_path=tmp_path / "bitmap")) as vol:
        st = vol.status()
        assert st["logging_reason"] == "mirror held data the journal never recorded"
        assert st["alert"].startswith("mirror held data") and not st["journal_paused"]
