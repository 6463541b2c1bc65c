"""One writer per mirror (appliance/volume/mirror_lock.py): a second writer is refused before
it writes a byte, in this process or another; the lock dies with its holder, even by
SIGKILL; a group's lock covers its live members and the ones that join."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from appliance.volume import Volume, VolumeConfig
from appliance.volume import group_layout as gl
from appliance.volume.mirror_lock import MirrorInUse, MirrorLock, check_free

BS = 512
BLOCKS = 256


def config(tmp_path: Path, mirror: Path, name: str) -> VolumeConfig:
    return VolumeConfig(uuid=uuid.UUID(int=7), num_blocks=BLOCKS, journal_size=1 << 20,
                        chunk_size=16384, max_transfer_bytes=64 * 1024, mirror_path=mirror,
                        journal_path=tmp_path / f"{name}.journal",
                        bitmap_path=tmp_path / f"{name}.bitmap", service_interval=None)


def test_a_second_volume_on_one_mirror_is_refused_until_the_first_closes(tmp_path):
    mirror = tmp_path / "mirror.img"
    first = Volume.open(config(tmp_path, mirror, "a"))
    with pytest.raises(MirrorInUse, match=r"mirror .*mirror\.img is written by another "
                                          r"process.*one writer per mirror"):
        Volume.open(config(tmp_path, mirror, "b"))
    # Refused before it created anything of its own.
    assert not (tmp_path / "b.journal").exists() and not (tmp_path / "b.bitmap").exists()
    first.close()
    Volume.open(config(tmp_path, mirror, "b")).close()


HOLDER = """
import sys, time
from appliance.volume.mirror_lock import MirrorLock
lock = MirrorLock.take(sys.argv[1], "test holder")
print("held", lock.held, flush=True)
time.sleep(600)
"""


def test_another_process_holding_it_refuses_a_writer_untouched_and_its_kill_frees_it(tmp_path):
    mirror = tmp_path / "mirror.img"
    mirror.write_bytes(b"\x5a" * (BLOCKS * BS // 2))       # shorter than the volume
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(mirror)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout.readline().split() == ["held", "1"]
        with pytest.raises(MirrorInUse, match="written by another process"):
            Volume.open(config(tmp_path, mirror, "a"))
        # Not extended to the volume's size, not written.
        assert mirror.read_bytes() == b"\x5a" * (BLOCKS * BS // 2)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with Volume.open(config(tmp_path, mirror, "a")) as vol:
        assert vol.num_blocks == BLOCKS
    assert mirror.stat().st_size == BLOCKS * BS


def test_check_free_takes_nothing_and_a_missing_file_has_no_writer(tmp_path):
    mirror = tmp_path / "mirror.img"
    check_free(mirror, "demote")                    # does not exist: nobody writes it
    lock = MirrorLock.take(mirror, "handler")
    assert lock.held == 0
    mirror.write_bytes(bytes(BS))
    lock.cover(mirror)                              # created since: covered now
    assert lock.held == 1
    with pytest.raises(MirrorInUse, match="so the demote may not write it"):
        check_free(mirror, "demote")
    lock.close()
    check_free(mirror, "demote")
    check_free(mirror, "demote")                    # and it released what it took


def test_a_groups_lock_covers_its_live_members_and_one_that_joins(tmp_path):
    files = {name: tmp_path / f"{name}.img" for name in ("log", "data", "old", "new")}
    for path in files.values():
        path.write_bytes(bytes(64 * BS))
    layout = (gl.GroupLayout("db", uuid.uuid4(), BS, 64)
              .with_member("log", str(files["log"]), 64)
              .with_member("old", str(files["old"]), 64)
              .with_member("data", str(files["data"]), 64)
              .retire("old"))
    path = tmp_path / "db.group.json"
    gl.save(path, layout)
    lock = MirrorLock.take(path, "handler")
    assert lock.held == 2                           # log and data; the retired one is free
    check_free(files["old"], "handler")
    for name in ("log", "data"):
        with pytest.raises(MirrorInUse, match=f"{name}.img"):
            check_free(files[name], "handler")
    gl.save(path, layout.with_member("new", str(files["new"]), 64))
    lock.cover(path)                                # the member that joined; the rest once
    assert lock.held == 3
    with pytest.raises(MirrorInUse, match="new.img"):
        check_free(files["new"], "handler")
    lock.close()
    for file in files.values():
        check_free(file, "handler")


def test_a_refused_group_releases_the_members_it_had_locked(tmp_path):
    files = [tmp_path / "a.img", tmp_path / "b.img"]
    for path in files:
        path.write_bytes(bytes(64 * BS))
    path = tmp_path / "g.group.json"
    gl.save(path, gl.GroupLayout("g", uuid.uuid4(), BS, 64)
            .with_member("a", str(files[0]), 64).with_member("b", str(files[1]), 64))
    other = MirrorLock.take(files[1], "DR receiver")
    with pytest.raises(MirrorInUse, match="b.img"):
        MirrorLock.take(path, "handler")
    check_free(files[0], "handler")                 # a was not kept locked
    other.close()
    MirrorLock.take(path, "handler").close()
