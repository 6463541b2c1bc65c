"""The replica's journal and mirror writes go direct (O_DIRECT) from the page-aligned receive
buffers where the file system takes it, and stay buffered, with the same bytes durable and
applied, where it refuses (at open, or at a write). Real files; records received through a
real FrameLink, as the receiver gets them."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import uuid
from pathlib import Path

import pytest

from appliance import direct_io
from appliance.replication import wire
from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr.replica import Replica
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.link import FrameLink
from appliance.replication.wire import WireRecord
from tests.support.pagecache import cached_pages

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000d1")
BLOCKS = 8192                       # 4 MiB of 512-byte blocks
HELLO = Hello("site-a", VOL, BLOCKS * 512, 512, 1, 1)
OP = 64 * 1024
FT = wire.FrameType


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, BLOCKS * 512, 512), replica_paths(tmp_path, VOL),
                         journal_size=4 << 20, mirror_sync_interval_s=3600)


def writes(n: int, seed: int = 1) -> list[WireRecord]:
    rng = random.Random(seed)
    return [WireRecord(i + 1, i, wire.KIND_WRITE, i * (OP // 512), OP // 512, rng.randbytes(OP))
            for i in range(n)]


def received(recs: list[WireRecord]) -> list[WireRecord]:
    """The records as a receiver decodes them: sent as a BATCH over a loopback FrameLink."""
    async def go():
        box: asyncio.Queue = asyncio.Queue()

        async def accept(reader, writer):
            box.put_nowait(FrameLink(reader, writer))
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        tx = FrameLink(*await asyncio.open_connection("127.0.0.1",
                                                      server.sockets[0].getsockname()[1]))
        rx = await asyncio.wait_for(box.get(), 10)
        await tx.send_parts(FT.BATCH, wire.batch_parts(VOL, 1, recs), head_crc=True)
        frame = await rx.recv(10)
        await tx.close()
        await rx.close()
        server.close()
        return wire.decode_batch(frame.payload).records
    return asyncio.run(go())


def expected_mirror(recs: list[WireRecord]) -> bytes:
    image = bytearray(BLOCKS * 512)
    for r in recs:
        image[r.lba * 512 : r.lba * 512 + len(r.data)] = r.data
    return bytes(image)


def fs_type(path) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mnt, fstype = line.split()[:3]
        if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
            best, kind = mnt, fstype
    return kind


def direct_supported(path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_records_go_to_journal_and_mirror_direct_from_the_receive_buffers(tmp_path):
    recs = received(writes(16))
    assert all(direct_io.address_of(r.data) % direct_io.ALIGN == 0 for r in recs)
    c = cfg(tmp_path)
    r = Replica(c)
    if not direct_supported(c.paths.mirror):
        r.close()
        pytest.skip(f"{tmp_path} takes no O_DIRECT")
    r.bind(HELLO, 0)
    assert r.commit(recs) == 16
    r.apply_pending()
    assert r.status()["direct_io"] == {"journal": True, "mirror": True}
    # Written direct: none of the data went through the page cache (the journal's own small
    # metadata blocks and slots do: a few pages of its 1 MiB of records). (tmpfs takes
    # O_DIRECT and keeps every page in memory: its pages are the file.)
    if fs_type(c.paths.mirror) != "tmpfs":
        assert cached_pages(c.paths.mirror, 0, 16 * OP) == 0
        assert cached_pages(c.paths.journal, 0, 4 << 20) < 16
    r.sync_mirror()
    assert r.read_mirror(0, BLOCKS * 512) == expected_mirror(recs)
    r.close()
    again = Replica(c)                  # the journal reads back (redo finds it all applied)
    assert [rec.op.data for rec in again.journal.records(1)] == [bytes(w.data) for w in recs]
    again.close()


def test_a_file_system_refusing_o_direct_at_open_leaves_every_write_buffered(tmp_path,
                                                                             monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", no_direct)
    recs = received(writes(8, seed=2))
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.commit(recs)
    r.apply_pending()
    assert r.status()["direct_io"] == {"journal": False, "mirror": False}
    r.sync_mirror()
    assert r.read_mirror(0, BLOCKS * 512) == expected_mirror(recs)
    r.close()


def test_a_direct_write_refused_later_falls_back_and_nothing_is_lost(tmp_path, monkeypatch):
    c = cfg(tmp_path)
    first, second = received(writes(8, seed=3)), received(writes(16, seed=4)[8:])
    r = Replica(c)
    if not direct_supported(c.paths.mirror):
        r.close()
        pytest.skip(f"{tmp_path} takes no O_DIRECT")
    r.bind(HELLO, 0)
    r.commit(first)
    r.apply_pending()
    assert r.status()["direct_io"] == {"journal": True, "mirror": True}
    real_pwritev = os.pwritev
    direct_fds = {r.journal.io._direct._fd, r._mirror._direct._fd}

    def refusing(fd, bufs, offset, *args):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, bufs, offset, *args)
    monkeypatch.setattr(os, "pwritev", refusing)
    r.commit(second)
    r.apply_pending()
    assert r.status()["direct_io"] == {"journal": False, "mirror": False}
    r.sync_mirror()
    assert r.read_mirror(0, BLOCKS * 512) == expected_mirror(first + second)
    r.close()
