"""Device manager: adoption order, netlink answers, reconfig no-ops and resize."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from tcmu_helpers import MemDisk, ScsiCommand, rw10

from appliance.tcmu import device as device_module
from appliance.tcmu.manager import DeviceManager
from appliance.tcmu.netlink import DeviceEvent, TcmuGenlCmd
from appliance.tcmu.sim import SAM_STAT_BUSY, SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio

CFG = "mirror/mirror=/srv/a.img;journal=/srv/a.jnl;journal_size=64M"
NAME = f"tcm-user/1/vol1/{CFG}"


class RecordingControl:
    """configfs actions forwarded to the simulated kernel, in a log."""

    def __init__(self, kernel: SimKernel, log: list[str]) -> None:
        self.kernel, self.log = kernel, log

    def block_dev(self, blocked: bool) -> None:
        self.log.append(f"block_dev={int(blocked)}")
        self.kernel.block_dev(blocked)

    def reset_ring(self, mode: int = 1) -> None:
        self.log.append(f"reset_ring={mode}")
        self.kernel.reset_ring(mode)

    def disable_cmd_time_out(self) -> None:
        self.log.append("cmd_time_out=0")


class FakeBackend:
    def __init__(self, log: list[str]) -> None:
        self.executor = MemDisk()
        self.size_bytes = 1 << 20
        self.log = log

    def resize(self, size_bytes: int) -> None:
        if size_bytes < self.size_bytes:
            raise ValueError("shrinking is not supported")
        self.log.append(f"resize={size_bytes}")
        self.size_bytes = size_bytes

    def set_write_cache(self, enabled: bool) -> None:
        self.log.append(f"wce={int(enabled)}")

    def stopping(self) -> None:
        self.log.append("backend stopping")

    def close(self) -> None:
        self.log.append("backend closed")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(device_module, "_scsi_command_class", lambda: ScsiCommand)
    kernel = SimKernel(tmp_path / "dev", SimConfig(ring_bytes=8192, data_blocks=32))
    log: list[str] = []
    backends: list[FakeBackend] = []

    def factory(name, config, control):
        log.append(f"backend {name.name} {config.mirror}")
        backends.append(FakeBackend(log))
        return backends[-1]

    def open_transport(minor, uio_name):
        log.append(f"open uio{minor}")
        return SimUio(tmp_path / "dev")

    manager = DeviceManager(backend_factory=factory, open_transport=open_transport,
                            control_for=lambda name: RecordingControl(kernel, log),
                            poll_interval=0.05)
    yield manager, kernel, log, backends
    manager.close_all()
    kernel.close()


def test_adopt_uses_the_reopen_sequence(world) -> None:
    manager, kernel, log, _ = world
    stale = kernel.submit(rw10(0x28, 0, 1), data_in_len=512)  # queued under a dead handler
    assert manager.add(3, NAME, reopen=True) == 0
    assert log == ["block_dev=1", "reset_ring=1", "backend vol1 /srv/a.img", "open uio3",
                   "block_dev=0"]
    assert kernel.results[stale].status == SAM_STAT_BUSY  # the initiator retries
    (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, 0, 1), b"x" * 512)])
    assert res.status == 0
    assert manager.add(3, NAME) == 0  # idempotent (udev after netlink)
    assert log.count("open uio3") == 1


def test_added_removed_statuses(world) -> None:
    manager, _, log, _ = world
    assert manager.add(4, "tcm-user/1/x/file/foo") == -errno.ENOENT     # not our subtype
    assert manager.add(4, "tcm-user/1/x/mirror/mirror=rel;journal=/j") == -errno.EINVAL
    assert manager.add(4, NAME) == 0
    assert manager.remove(4) == 0
    assert "backend closed" in log
    assert manager.remove(4) == 0


def test_reconfig(world) -> None:
    manager, kernel, log, backends = world
    assert manager.add(3, NAME) == 0

    def reconfig(**kw) -> int:
        return manager.reconfig(DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 3, 9, **kw))

    # targetctl restore replays every attribute: unchanged values must answer 0
    assert reconfig(dev_cfg=CFG) == 0
    assert reconfig(dev_size=1 << 20) == 0
    assert reconfig(dev_cfg=CFG.replace("a.img", "b.img")) == -errno.EOPNOTSUPP
    assert reconfig(dev_cfg="mirror/nonsense") == -errno.EINVAL
    assert reconfig(dev_size=2 << 20) == 0
    assert backends[0].size_bytes == 2 << 20
    assert reconfig(dev_size=1 << 19) == -errno.EINVAL
    assert reconfig(writecache=0) == 0
    assert log[-2:] == ["resize=2097152", "wce=0"]
    assert manager.reconfig(DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 8, 9,
                                        writecache=1)) == -errno.ENODEV


def test_corrupt_entry_resets_the_ring_and_serving_continues(world) -> None:
    import struct
    import time

    from appliance.tcmu import layout

    manager, kernel, log, _ = world
    bad = kernel.submit(rw10(0x28, 0, 1), data_in_len=512)
    # point its iovec at the ring itself: the SCSI layer must never get that buffer
    struct.pack_into("<Q", kernel.region, kernel.cmdr_off + layout.REQ_IOV, kernel.cmdr_off)
    assert manager.add(3, NAME) == 0
    deadline = time.monotonic() + 10
    while bad not in kernel.results:
        assert time.monotonic() < deadline, "the corrupt entry was never reset"
        time.sleep(0.02)
    assert kernel.results[bad].status == SAM_STAT_BUSY
    assert log[-2:] == ["reset_ring=1", "block_dev=0"]
    (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, 1, 1), b"y" * 512)])
    assert res.status == 0


def test_several_devices_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "_scsi_command_class", lambda: ScsiCommand)
    kernels = {m: SimKernel(tmp_path / f"dev{m}", SimConfig(ring_bytes=8192, data_blocks=32))
               for m in (1, 2, 3)}
    disks: dict[str, MemDisk] = {}

    class Backend(FakeBackend):
        def __init__(self, name: str) -> None:
            super().__init__([])
            disks[name] = self.executor

    manager = DeviceManager(
        backend_factory=lambda name, config, control: Backend(name.name),
        open_transport=lambda minor, uio_name: SimUio(tmp_path / f"dev{minor}"),
        control_for=lambda name: None, poll_interval=0.05)
    try:
        for m in kernels:
            assert manager.add(m, f"tcm-user/{m}/vol{m}/{CFG}") == 0
        tickets = {m: [k.submit(rw10(0x2A, i, 1), bytes([m]) * 512) for i in range(20)]
                   for m, k in kernels.items()}
        for m, k in kernels.items():
            assert all(r.status == 0 for r in k.wait_for(tickets[m]))
        for m in kernels:
            assert disks[f"vol{m}"].disk[: 20 * 512] == bytes([m]) * (20 * 512)
        assert manager.remove(2) == 0
        (res,) = kernels[1].wait_for([kernels[1].submit(bytes(6))])  # the others keep going
        assert res.status == 0
    finally:
        manager.close_all()
        for k in kernels.values():
            k.close()


def test_new_device_turns_the_kernel_command_timer_off(world) -> None:
    """Only a new device (not exported yet) gets cmd_time_out=0; an adopted one is exported
    and the kernel would refuse."""
    manager, _, log, _ = world
    assert manager.add(4, NAME) == 0
    assert log[:2] == ["cmd_time_out=0", "backend vol1 /srv/a.img"]


def test_refused_timer_write_still_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.tcmu.configfs import BackstoreControl

    monkeypatch.setattr(device_module, "_scsi_command_class", lambda: ScsiCommand)
    kernel = SimKernel(tmp_path / "dev", SimConfig(ring_bytes=8192, data_blocks=32))
    (tmp_path / "so").mkdir()   # a backstore directory without attrib/: the write fails
    manager = DeviceManager(backend_factory=lambda name, config, control: FakeBackend([]),
                            open_transport=lambda minor, uio_name: SimUio(tmp_path / "dev"),
                            control_for=lambda name: BackstoreControl(tmp_path / "so"),
                            poll_interval=0.05)
    try:
        assert manager.add(4, NAME) == 0
        (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, 0, 1), b"x" * 512)])
        assert res.status == 0
    finally:
        manager.close_all()
        kernel.close()


def test_log_state_names_each_device_and_its_ring(world, caplog: pytest.LogCaptureFixture) -> None:
    """SIGUSR1's report: one line per served device with its loop and ring state."""
    manager, kernel, _, _ = world
    assert manager.add(3, NAME) == 0
    (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, 0, 1), b"x" * 512)])
    assert res.status == 0
    with caplog.at_level("INFO", logger="appliance.tcmu.manager"):
        manager.log_state()
    (line,) = [r.getMessage() for r in caplog.records if "uio3" in r.getMessage()]
    assert line.startswith("device vol1 (uio3): loop running; cmd_head ")
    assert "pending 0" in line and "commands 1 " in line, line
