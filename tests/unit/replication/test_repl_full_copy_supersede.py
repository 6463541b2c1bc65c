"""What a full copy supersedes, on the primary (real Volume, journal reader and bitmap): the
records the writer journaled before the mark request put it in logging-to-bitmap, i.e. up to
its ``overflow_seq``. Nothing while the writer still journals. After the copy the writer
journals again at ``overflow_seq + 1``: where the DR's journal continues after the jump."""

import types
import uuid

from appliance.journal import JournalReader, OpKind, WriteOp
from appliance.replication.handshake import Welcome
from appliance.replication.primary.resync import ResyncDriver
from appliance.replication.primary.shared import TxShared
from appliance.volume import Volume, VolumeConfig

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000cc")
WELCOME = Welcome("dr-site", 5, 5, None, 1.0, inconsistent=True, full_copy=True, supersede=True)


def write(vol: Volume, i: int) -> None:
    vol.submit([WriteOp(OpKind.WRITE, (i * 8) % 2048, 8, bytes([i % 251 + 1]) * 4096)])


def writer_and_driver(tmp_path, *, journal_size: int):
    """A writer (Volume), a journal reader and the resync driver of a session whose peer
    waits for a full copy and takes the jump."""
    vol = Volume.open(VolumeConfig(uuid=VOL, num_blocks=2048, journal_size=journal_size,
                                   max_transfer_bytes=64 * 1024, service_interval=None,
                                   mirror_path=tmp_path / "mirror",
                                   journal_path=tmp_path / "journal",
                                   bitmap_path=tmp_path / "bitmap"))
    reader = JournalReader(tmp_path / "journal", volume_uuid=VOL)
    cfg = types.SimpleNamespace(volume_uuid=VOL)
    driver = ResyncDriver(types.SimpleNamespace(records_paused=False), TxShared(2048 * 512),
                          cfg, types.SimpleNamespace(), reader, WELCOME, reader.volume_files())
    return vol, reader, driver


def test_a_full_copy_supersedes_up_to_the_overflow_seq_only_while_the_writer_logs(tmp_path):
    vol, reader, driver = writer_and_driver(tmp_path, journal_size=2 << 20)
    try:
        for i in range(1, 21):
            write(vol, i)
        reader.acknowledge(5)                    # an earlier peer had these
        # The writer journals: a copy would not contain what it journals next.
        assert driver._superseded_to(driver.source.snapshot()) is None

        rid = driver.source.request_mark_all()   # what request_full_copy does
        driver.source.wait_processed(rid, timeout=5, poll=vol.service)
        snap = driver.source.snapshot()
        assert snap.logging and snap.overflow_seq == 20 and snap.dirty_chunks == 16
        assert driver._superseded_to(snap) == 20
        older = {k: v for k, v in WELCOME.to_dict().items() if k != "supersede"}
        driver.welcome = Welcome.from_dict(older)
        assert driver._superseded_to(snap) is None, "an older receiver gets the records"
        driver.welcome = WELCOME
        write(vol, 21)                           # logged to the bitmap, not journaled
        assert driver._superseded_to(driver.source.snapshot()) == 20

        # The peer's ACK of the jump is acknowledged here; once the copy cleared every
        # chunk the writer journals again, right after the superseded records.
        reader.acknowledge(20)
        snap = driver.source.snapshot()
        driver.source.clear_shipped(snap, snap.runs, timeout=5, poll=vol.service)
        vol.service()
        assert vol.state == "journaling"
        write(vol, 22)
        assert [r.seq for r in reader.read(21, 1 << 20)] == [21]
        assert vol.status()["journal"]["tail_seq"] > 20      # the backlog's space is free
    finally:
        driver.close()
        reader.close()
        vol.close()


def test_a_writer_that_overflowed_long_ago_is_superseded_up_to_its_overflow(tmp_path):
    """The DR was gone so long that the journal filled: the writer already logs to the bitmap
    from its overflow_seq; the full copy supersedes the whole journal up to it."""
    vol, reader, driver = writer_and_driver(tmp_path, journal_size=512 << 10)
    try:
        i = 0
        while vol.state == "journaling":
            i += 1
            assert i < 1000, "the 512 KiB journal never filled"
            write(vol, i)
        overflow = vol.status()["overflow_seq"]
        assert 0 < overflow < i
        rid = driver.source.request_mark_all()
        driver.source.wait_processed(rid, timeout=5, poll=vol.service)
        snap = driver.source.snapshot()
        assert snap.dirty_chunks == 16 and snap.overflow_seq == overflow
        assert driver._superseded_to(snap) == overflow
    finally:
        driver.close()
        reader.close()
        vol.close()
