"""Retention on a replica (real journal, mirror and retention files): the settings are saved
in state.json and refused naming the key; the recoverable range is in the status; recovering
a point gives exactly the primary's image after it, also when records land on the mirror
while it is copied; a resync restarts the window; promoted replicas and points outside the
window are refused with the reason."""

import json
import random
import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr import recover
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.replica_state import ReplicaState
from appliance.replication.dr.retention_settings import (
    RetentionSettings,
    RetentionSettingsError,
    parse_retain,
    parse_size,
)
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.wire import KIND_WRITE, WireRecord
from tests.support.replica_crash import crash

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000bb")
BLOCKS = 256
HELLO = Hello("site-a", VOL, BLOCKS * 512, 512, 1, 1)
T0 = 1_796_000_000 * 10**9      # 2026-11-30T00:53:20Z, primary clock


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, BLOCKS * 512, 512), replica_paths(tmp_path, VOL),
                         journal_size=1 << 20, mirror_sync_interval_s=3600)


class Workload:
    """Records with random overlapping extents; the image after each seq."""

    def __init__(self) -> None:
        self.rng = random.Random(7)
        self.image = bytearray(BLOCKS * 512)
        self.images = {0: bytes(self.image)}
        self.seq = 0

    def run(self, n: int) -> list[WireRecord]:
        out = []
        for _ in range(n):
            self.seq += 1
            blocks = self.rng.randint(1, 8)
            lba = self.rng.randrange(0, BLOCKS - blocks)
            data = self.rng.randbytes(blocks * 512)
            out.append(WireRecord(self.seq, T0 + self.seq * 1_000_000, KIND_WRITE, lba, blocks,
                                  data))
            self.image[lba * 512:(lba + blocks) * 512] = data
            self.images[self.seq] = bytes(self.image)
        return out


def feed(r: Replica, w: Workload, runs: int, per_run: int = 5) -> None:
    for _ in range(runs):
        r.commit(w.run(per_run))
        r.apply_pending()


def test_settings_parse_and_refuse_naming_the_key():
    assert parse_retain("24h") == 86400 and parse_retain("7d") == 7 * 86400
    assert parse_retain("none") == 0 and parse_retain(0) == 0 and parse_retain("90") == 90
    assert parse_size("200G") == 200 << 30 and parse_size("off") == 0
    with pytest.raises(RetentionSettingsError, match="retain_s='soon' does not parse"):
        RetentionSettings.from_args({"retain_s": "soon"})
    with pytest.raises(RetentionSettingsError, match="retain_bytes=-5 must not be negative"):
        RetentionSettings.from_args({"retain_bytes": -5})
    with pytest.raises(RetentionSettingsError, match="max='10K' is less than 1M"):
        parse_size("10K", "max")
    kept = RetentionSettings.from_args({"retain_bytes": "1G"}, RetentionSettings(3600, 0))
    assert kept == RetentionSettings(3600, 1 << 30)
    assert kept.describe() == "retain=1h max=1G" and RetentionSettings().describe() == "off"


def test_settings_are_saved_in_state_json_and_old_files_mean_off(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    assert r.status()["retention"]["enabled"] is False
    r.set_retention(RetentionSettings(3600, 64 << 20))
    r.close()
    saved = json.loads((tmp_path / str(VOL) / "state.json").read_text())
    assert saved["format_version"] == 4
    assert (saved["retain_s"], saved["retain_bytes"]) == (3600, 64 << 20)
    r = Replica(cfg(tmp_path))
    assert r.retention_settings == RetentionSettings(3600, 64 << 20)
    r.close()
    old = {k: v for k, v in saved.items() if k not in ("retain_s", "retain_bytes")}
    old["format_version"] = 2
    st = ReplicaState.from_json(old)
    assert (st.retain_s, st.retain_bytes) == (0, 0)


def test_recover_by_seq_and_time_gives_the_primary_image(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    w = Workload()
    feed(r, w, 2)                           # before retention: not recoverable
    r.set_retention(RetentionSettings(3600, 0))
    feed(r, w, 10)
    window = r.status()["retention"]
    assert window["oldest"]["seq"] == 10 and window["newest"]["seq"] == 60
    assert window["newest"]["time"] == pytest.approx((T0 + 60 * 1_000_000) / 1e9)
    for seq in (10, 11, 33, 59, 60):
        out = r.recover(f"seq:{seq}")
        path = tmp_path / str(VOL) / f"recovered-{seq}.img"
        assert out["path"] == str(path) and out["seq"] == seq
        assert path.read_bytes() == w.images[seq], f"seq {seq}"
        assert "/backstores/block create name=recovered-" in out["next_steps"]
    # By time: 33.5 ms after T0 is after record 33 and before record 34.
    at = recover.parse_at("2026-11-30T00:53:20.0335Z")[1]
    assert at == T0 + 33_500_000 and r._retention.point_at(
        ts_ns=at, newest=r.applied_point()).seq == 33
    out = r.recover("2026-11-30T00:53:20.0345Z")
    assert out["seq"] == 34 and out["time_utc"] == "2026-11-30T00:53:20.034000Z"
    assert (tmp_path / str(VOL) / "recovered-34.img").read_bytes() == w.images[34]
    with pytest.raises(ReplicaError, match="exists already"):
        r.recover("seq:34")
    with pytest.raises(ReplicaError, match=r"seq 5 is outside the retention window; "
                                           r"recoverable: seq 10 \(.*\) to seq 60 "):
        r.recover("seq:5")
    with pytest.raises(ReplicaError, match="at='yesterday' does not parse"):
        r.recover("yesterday")
    r.close()


def test_recover_is_exact_while_records_land_on_the_mirror_during_the_copy(tmp_path,
                                                                          monkeypatch):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(0, 64 << 20))
    w = Workload()
    feed(r, w, 6)
    real_copy = recover._copy

    def copy_while_applying(mirror, fd, size):
        # Half the copy, then records land (on both halves), then the rest of the copy.
        half = size // 2
        real_copy(mirror, fd, half)
        feed(r, w, 3)
        import os
        src = os.open(mirror, os.O_RDONLY)
        os.pwrite(fd, os.pread(src, size - half, half), half)
        os.close(src)
        feed(r, w, 2)
    monkeypatch.setattr(recover, "_copy", copy_while_applying)
    out = r.recover("seq:12")
    assert out["mirror_seq_at_copy"] == 55
    assert (tmp_path / str(VOL) / "recovered-12.img").read_bytes() == w.images[12]
    r.close()


def test_a_resync_restarts_the_window_and_recovery_waits_for_consistency(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(3600, 0))
    w = Workload()
    feed(r, w, 4)
    r.begin_resync()
    assert r.status()["retention"]["oldest"] is None
    with pytest.raises(ReplicaError, match="not a consistent replica now"):
        r.recover("seq:5")
    r.write_region(0, b"\x09" * 4096)
    w.image[0:4096] = b"\x09" * 4096
    r.end_resync(22)
    feed(r, w, 1, per_run=2)
    r.sync_mirror()
    assert r.status()["state"] == "consistent"
    feed(r, w, 2)
    window = r.status()["retention"]
    assert window["oldest"]["seq"] == 22 and window["newest"]["seq"] == 32
    r.recover("seq:25")
    assert (tmp_path / str(VOL) / "recovered-25.img").read_bytes() == w.images[25]
    r.close()


def test_retention_off_removes_the_log_and_recover_says_how_to_turn_it_on(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(3600, 0))
    feed(r, Workload(), 2)
    assert (tmp_path / str(VOL) / "retention").is_dir()
    r.set_retention(RetentionSettings())
    assert not (tmp_path / str(VOL) / "retention").exists()
    with pytest.raises(ReplicaError, match="keeps no retention window.*set retention"):
        r.recover("seq:3")
    r.close()


def test_the_window_survives_a_crash_and_the_redo(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(3600, 0))
    w = Workload()
    feed(r, w, 3)
    r.commit(w.run(5))          # durable, never applied: the redo applies it at open
    r._retention.close()
    crash(r)
    r = Replica(cfg(tmp_path))
    assert r.applied_seq == 20
    window = r.status()["retention"]
    assert window["oldest"]["seq"] == 0 and window["newest"]["seq"] == 20
    for seq in (0, 7, 16, 20):
        r.recover(f"seq:{seq}")
        assert (tmp_path / str(VOL) / f"recovered-{seq}.img").read_bytes() == w.images[seq]
    r.close()


def test_a_backlog_of_runs_is_saved_with_one_sync_and_every_point_is_exact(tmp_path,
                                                                            monkeypatch):
    """Runs committed faster than they are applied: their before-images (overlapping across
    runs) are saved together before the first of them reaches the mirror."""
    from appliance.replication.dr.retention import RetentionLog
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(3600, 0))
    w = Workload()
    syncs = []
    real_sync = RetentionLog.sync
    monkeypatch.setattr(RetentionLog, "sync", lambda self: (syncs.append(1), real_sync(self)))
    for _ in range(4):
        r.commit(w.run(6))
    r.apply_pending()
    assert r.applied_seq == 24 and len(syncs) == 1
    for seq in (0, 5, 6, 13, 23):
        r.recover(f"seq:{seq}")
        assert (tmp_path / str(VOL) / f"recovered-{seq}.img").read_bytes() == w.images[seq]
    r.close()


def test_a_retention_log_that_cannot_be_written_drops_the_window_not_replication(
        tmp_path, monkeypatch):
    import errno

    from appliance.replication.dr.retention import RetentionLog
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(3600, 0))
    w = Workload()
    feed(r, w, 2)
    real_save = RetentionLog.save

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(RetentionLog, "save", full)
    feed(r, w, 2)
    assert r.applied_seq == 20 and r.read_mirror(0, BLOCKS * 512) == w.images[20]
    st = r.status()["retention"]
    assert st["oldest"] is None and "No space left on device" in st["error"]
    monkeypatch.setattr(RetentionLog, "save", real_save)
    feed(r, w, 2)                           # the disk has room again: a new window
    st = r.status()["retention"]
    assert st["oldest"]["seq"] == 20 and st["newest"]["seq"] == 30 and st["error"] is None
    r.recover("seq:25")
    assert (tmp_path / str(VOL) / "recovered-25.img").read_bytes() == w.images[25]
    r.close()


def test_changing_the_settings_keeps_the_window_and_a_shorter_one_prunes_it(tmp_path):
    r = Replica(cfg(tmp_path))
    r.bind(HELLO, 0)
    r.set_retention(RetentionSettings(0, 4 << 20))      # segments of 1 MiB
    w = Workload()
    feed(r, w, 100, per_run=10)                         # about 2.3 MiB of before-images
    before = r.status()["retention"]
    assert before["oldest"]["seq"] == 0 and before["segments"] >= 2
    ret = r._retention
    month = 30 * 86400                  # (the workload is stamped a few days ago)
    after = r.set_retention(RetentionSettings(month, 0))     # by age now: nothing to prune
    assert r._retention is ret and after["oldest"] == before["oldest"]
    after = r.set_retention(RetentionSettings(month, 1 << 20))
    assert after["oldest"]["seq"] > 0 and after["bytes"] <= 1 << 20
    r.recover(f"seq:{after['oldest']['seq']}")
    assert (tmp_path / str(VOL) / f"recovered-{after['oldest']['seq']}.img").read_bytes() == \
        w.images[after["oldest"]["seq"]]
    r.close()
