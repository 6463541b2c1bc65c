"""pause-journal / resume-journal on the handler's control socket, with host writes through
the simulated TCMU ring: while paused the writes land in the mirror and the dirty bitmap and
not in the journal, the pause survives a handler restart, the resync's clear protocol does not
end it, and after resume-journal the volume journals again once the resync has shipped."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import pytest
from one_volume_handler import one_volume

from appliance.control.client import ControlError, call
from appliance.journal import JournalReader
from appliance.storage import open_file
from appliance.tcmu import cfgstring
from appliance.tcmu.daemon import HandlerDaemon
from appliance.tcmu.sim import SimKernel
from appliance.volume import ResyncSource

pytestmark = pytest.mark.integration

CHUNK = 64 << 10          # the backend's default chunk size


def _write(kernel: SimKernel, lba: int, data: bytes) -> None:
    """WRITE(10) with FUA of `data` at `lba`, through the ring."""
    cdb = struct.pack(">BBIBHB", 0x2A, 0x08, lba, 0, len(data) // 512, 0)
    result = kernel.wait_for([kernel.submit(cdb, data)], timeout=20)[0]
    assert result.status == 0, f"WRITE at {lba} failed: status {result.status:#x}"


def test_pause_journal_survives_a_restart_beats_the_resync_and_resume_journals_again(
        tmp_path: Path) -> None:
    vol1 = one_volume(tmp_path)
    mirror_cfg, kernel, sock, vol_uuid = vol1.mirror, vol1.kernel, vol1.socket, vol1.volume_uuid
    paused_data = {2048: os.urandom(4096), 4096: os.urandom(8192)}    # chunks 16 and 32

    async def ctl(cmd: str, **args) -> dict:
        return await asyncio.to_thread(call, sock, cmd, args)

    async def volume_status() -> dict:
        return (await ctl("status"))["volumes"]["vol1"]

    async def first_life(daemon: HandlerDaemon) -> None:
        vol = await volume_status()
        assert vol["journal_paused"] is False and vol["state"] == "journaling", vol
        assert vol["logging_reason"] is None
        await asyncio.to_thread(_write, kernel, 0, os.urandom(4096))       # journaled
        assert (await volume_status())["journal"]["next_seq"] == 2

        # Refusals first: nothing changes.
        with pytest.raises(ControlError, match=r"no volume 'vol9'.*serves vol1.*nothing changed"):
            await ctl("pause-journal", volume="vol9")
        with pytest.raises(ControlError, match="missing the volume's name.*nothing changed"):
            await ctl("pause-journal")
        with pytest.raises(ControlError, match="unknown argument 'force'.*nothing changed"):
            await ctl("resume-journal", volume="vol1", force=True)
        assert (await volume_status())["journal_paused"] is False

        paused = await ctl("pause-journal", volume="vol1")
        assert paused["volume"] == "vol1" and paused["changed"] is True
        assert paused["journal_paused"] is True and paused["volume_state"] == "logging-to-bitmap"
        assert paused["logging_reason"] == "paused by admin"
        again = await ctl("pause-journal", volume="vol1")
        assert again["changed"] is False and again["journal_paused"] is True

        for lba, data in paused_data.items():
            await asyncio.to_thread(_write, kernel, lba, data)
        vol = await volume_status()
        assert vol["journal"]["next_seq"] == 2, "a paused journal took records"
        assert vol["dirty_chunks"] == 2 and vol["state"] == "logging-to-bitmap"

    async def second_life(daemon: HandlerDaemon) -> None:
        vol = await volume_status()
        assert vol["journal_paused"] is True and vol["state"] == "logging-to-bitmap", vol
        assert vol["logging_reason"] == "paused by admin"
        await asyncio.to_thread(_write, kernel, 6144, os.urandom(4096))    # chunk 48
        vol = await volume_status()
        assert vol["journal"]["next_seq"] == 2 and vol["dirty_chunks"] == 3

        # The transmitter's part, by its own handles: the peer acknowledges the journal and
        # the resync ships and clears every dirty chunk. The admin's pause still wins.
        await asyncio.to_thread(_resync_everything, mirror_cfg, vol_uuid)
        volume = daemon.manager.devices[3].backend.volume
        await asyncio.to_thread(volume.service)
        vol = await volume_status()
        assert vol["dirty_chunks"] == 0 and vol["journal"]["acked_seq"] >= vol["overflow_seq"]
        assert vol["state"] == "logging-to-bitmap" and vol["journal_paused"] is True, vol

        await asyncio.to_thread(_write, kernel, 8192, os.urandom(4096))    # chunk 64
        resumed = await ctl("resume-journal", volume="vol1")
        assert resumed["changed"] is True and resumed["journal_paused"] is False
        assert resumed["volume_state"] == "logging-to-bitmap"     # chunk 64 still owed
        assert resumed["logging_reason"].startswith("journaling resumed by admin")
        assert (await ctl("resume-journal", volume="vol1"))["changed"] is False

        await asyncio.to_thread(_resync_everything, mirror_cfg, vol_uuid)
        deadline = time.monotonic() + 10
        while (vol := await volume_status())["state"] != "journaling":
            assert time.monotonic() < deadline, f"never journaled again after resume: {vol}"
            await asyncio.sleep(0.05)
        assert vol["logging_reason"] is None and vol["dirty_chunks"] == 0
        await asyncio.to_thread(_write, kernel, 0, os.urandom(4096))
        assert (await volume_status())["journal"]["next_seq"] == 3, "resume did not journal"

    try:
        vol1.run(first_life)
        mirror = Path(mirror_cfg.mirror).read_bytes()
        for lba, data in paused_data.items():
            assert mirror[lba * 512:lba * 512 + len(data)] == data, f"write at {lba} lost"
        with open_file(mirror_cfg.bitmap_path) as io:
            snap = ResyncSource(io).snapshot()
        assert snap.runs == ((2048 * 512 // CHUNK, 1), (4096 * 512 // CHUNK, 1))
        assert snap.journal_paused and snap.logging_reason == "paused by admin"
        vol1.run(second_life)           # the restart: still paused
    finally:
        kernel.close()


def _resync_everything(mirror_cfg: cfgstring.MirrorConfig, vol_uuid) -> None:
    """What the transmitter does, reduced: acknowledge the journal up to its head, then one
    resync pass that "ships" every dirty chunk and asks the writer to clear them."""
    reader = JournalReader(mirror_cfg.journal, volume_uuid=vol_uuid)
    try:
        reader.acknowledge(reader.writer_checkpoint().head_seq - 1)
    finally:
        reader.close()
    with open_file(mirror_cfg.bitmap_path) as io:
        source = ResyncSource(io)
        snap = source.snapshot()
        if snap.runs:
            source.clear_shipped(snap, snap.runs, timeout=10)
