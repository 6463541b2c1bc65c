"""Through the real Volume: bytes on the mirror file, group commits, atomic COMPARE AND WRITE
under concurrency, a full queue of commands in one batch."""

from __future__ import annotations

import struct
import threading

from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk
from tests.unit.scsi.conftest import BLOCK, LIMITS, SERIAL, Faults, open_volume
from tests.unit.scsi.helpers import pattern, read10, run, views, write10

SYNC_CACHE = bytes([0x35]) + bytes(9)


def mirror_bytes(tmp_path, lba: int, nblocks: int) -> bytes:
    with open(tmp_path / "mirror", "rb") as f:
        f.seek(lba * BLOCK)
        return f.read(nblocks * BLOCK)


def test_cached_write_reaches_the_mirror_file_at_synchronize_cache(tmp_path, disk):
    data = pattern(4 * BLOCK, seed=5)
    assert run(disk, write10(64, 4), out=data)[0].good
    # Write cache on: journaled, readable, but not yet on the mirror (write-ahead rule).
    assert run(disk, read10(64, 4), in_len=4 * BLOCK)[1] == data
    assert mirror_bytes(tmp_path, 64, 4) == bytes(4 * BLOCK)
    assert run(disk, SYNC_CACHE)[0].good
    assert mirror_bytes(tmp_path, 64, 4) == data


def test_fua_write_reaches_the_mirror_file_before_good(tmp_path, disk):
    data = pattern(2 * BLOCK, seed=6)
    assert run(disk, write10(10, 2, flags=0x08), out=data)[0].good
    assert mirror_bytes(tmp_path, 10, 2) == data


def test_write_through_after_mode_select(tmp_path, disk, volume):
    params = bytes(4) + bytes([0x08, 0x12, 0x00]) + bytes(17)       # caching page, WCE=0
    assert run(disk, bytes([0x15, 0x10, 0, 0, len(params), 0]), out=params)[0].good
    assert volume.write_cache_enabled is False
    data = pattern(BLOCK, seed=7)
    assert run(disk, write10(3, 1), out=data)[0].good
    assert mirror_bytes(tmp_path, 3, 1) == data


def test_a_full_queue_is_one_group_commit(disk, calls):
    """128 outstanding 4 KiB writes (the kernel's queue depth) then 128 reads of them."""
    writes = [ScsiCommand(write10(i * 8, 8), views(pattern(4096, seed=i))) for i in range(128)]
    reads = [ScsiCommand(read10(i * 8, 8), views(bytes(4096))) for i in range(128)]
    results = disk.execute(writes + reads)
    assert all(r.good for r in results)
    assert len(calls.submits) == 1 and len(calls.submits[0][0]) == 128
    assert all(bytes(cmd.data[0]) == pattern(4096, seed=i) for i, cmd in enumerate(reads))


def test_compare_and_write_is_atomic_against_concurrent_writers(tmp_path):
    """Four threads increment a counter in block 0 with read + COMPARE AND WRITE retries.
    Lost updates would show as a final count below the number of successful CAWs."""
    volume = open_volume(tmp_path, Faults())
    try:
        disks = [ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS) for _ in range(4)]
        per_thread = 25
        miscompares = [0] * len(disks)

        def worker(k: int) -> None:
            disk = disks[k]
            done = 0
            while done < per_thread:
                _, cur = run(disk, read10(0, 1), in_len=BLOCK)
                value = struct.unpack_from(">Q", cur)[0]
                new = struct.pack(">Q", value + 1).ljust(BLOCK, b"\0")
                cdb = struct.pack(">BBQ3xBBB", 0x89, 0, 0, 1, 0, 0)
                result, _ = run(disk, cdb, out=cur + new)
                if result.good:
                    done += 1
                else:
                    assert result.sense[2] == 0xE and result.sense[12] == 0x1D
                    miscompares[k] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(disks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "CAW worker hung"
        _, final = run(disks[0], read10(0, 1), in_len=BLOCK)
        assert struct.unpack_from(">Q", final)[0] == per_thread * len(disks)
    finally:
        volume.close()
