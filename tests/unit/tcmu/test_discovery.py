"""UIO names, sysfs scanning and opening a UIO node (on a fake sysfs tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.tcmu import layout
from appliance.tcmu.configfs import BackstoreControl
from appliance.tcmu.discovery import TcmuName, parse_uio_name, scan_uio
from appliance.tcmu.uio import UioDevice, UioError, read_uio_info


def test_parse_names() -> None:
    name = parse_uio_name("tcm-user/2/vol1/mirror/mirror=/srv/a/b.img;journal=/srv/j")
    assert name == TcmuName(2, "vol1", "mirror", "mirror=/srv/a/b.img;journal=/srv/j")
    assert name.dev_config == "mirror/mirror=/srv/a/b.img;journal=/srv/j"
    assert name.configfs_dir(Path("/cfg/core")) == Path("/cfg/core/user_2/vol1")
    assert parse_uio_name("tcm-user/0/bare") == TcmuName(0, "bare", None, "")
    assert parse_uio_name("uio_pci_generic") is None
    with pytest.raises(ValueError, match="HBA"):
        parse_uio_name("tcm-user/x/vol")
    with pytest.raises(ValueError, match="lacks"):
        parse_uio_name("tcm-user/1")


def _fake_uio(sysfs: Path, minor: int, name: str, size: int) -> Path:
    d = sysfs / f"uio{minor}"
    (d / "maps" / "map0").mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "version").write_text("2\n")
    (d / "maps" / "map0" / "size").write_text(f"{size:#x}\n")
    return d


def test_scan_and_info(tmp_path: Path) -> None:
    sysfs = tmp_path / "class_uio"
    _fake_uio(sysfs, 0, "uio_hv_generic", 4096)
    d = _fake_uio(sysfs, 3, "tcm-user/1/v/mirror/mirror=/a;journal=/b", 0x40800000)
    assert scan_uio(sysfs) == {3: "tcm-user/1/v/mirror/mirror=/a;journal=/b"}
    info = read_uio_info(d, tmp_path / "dev")
    assert (info.minor, info.map_size, info.dev_path) == (3, 0x40800000, tmp_path / "dev/uio3")
    assert scan_uio(tmp_path / "missing") == {}


def test_uio_device_maps_exactly_and_checks_version(tmp_path: Path) -> None:
    size = 3 * 4096
    d = _fake_uio(tmp_path / "sys", 5, "tcm-user/1/v", size)
    (tmp_path / "dev").mkdir()
    node = tmp_path / "dev/uio5"
    region = bytearray(size)
    layout.write_mailbox(memoryview(region), cmdr_off=128, cmdr_size=4096 - 128)
    node.write_bytes(bytes(region))
    dev = UioDevice(read_uio_info(d, tmp_path / "dev"))
    try:
        assert len(dev.region) == size
        assert layout.read_mailbox(dev.region).version == 2
        # A regular file always polls readable; its 4-byte read stands in for the event.
        assert dev.wait(0.01) is True
    finally:
        dev.close()
    region[0] = 1
    node.write_bytes(bytes(region))
    with pytest.raises(UioError, match="version 1"):
        UioDevice(read_uio_info(d, tmp_path / "dev"))
    (d / "version").write_text("1\n")
    with pytest.raises(UioError, match="TCMU version '1'"):
        UioDevice(read_uio_info(d, tmp_path / "dev"))


def test_backstore_control_reads_like_rtslib(tmp_path: Path) -> None:
    for sub in ("action", "attrib", "wwn"):
        (tmp_path / sub).mkdir()
    (tmp_path / "info").write_text(
        "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 128\n"
        "        Config: mirror/mirror=/a;journal=/b Size: 1073741824 MaxDataAreaMB: 8 "
        "DataPagesPerBlk: 1 CmdRingSizeMB: 8\n")
    (tmp_path / "wwn/vpd_unit_serial").write_text(
        "T10 VPD Unit Serial Number: 5f0d6b2c-9e41-4d1e-9a7e-6c1b8f0e3a52\n")
    (tmp_path / "attrib/hw_block_size").write_text("512\n")
    control = BackstoreControl(tmp_path)
    assert control.dev_size() == 1 << 30
    assert control.unit_serial() == "5f0d6b2c-9e41-4d1e-9a7e-6c1b8f0e3a52"
    assert control.hw_block_size() == 512
    control.block_dev(True)
    assert (tmp_path / "action/block_dev").read_text() == "1"
    (tmp_path / "wwn/vpd_unit_serial").write_text("T10 VPD Unit Serial Number: \n")
    assert control.unit_serial() is None


class _FakeAttributes:
    def __init__(self, name: str) -> None:
        self.name = name

    def asstring(self, key: str) -> str:
        assert key == "name"
        return self.name


class _FakeUdevDevice:
    def __init__(self, action: str, minor: int, name: str) -> None:
        self.action, self.sys_name = action, f"uio{minor}"
        self.sys_path = f"/sys/devices/virtual/uio/uio{minor}"
        self.attributes = _FakeAttributes(name)


def test_udev_events_map_to_add_and_remove() -> None:
    from appliance.tcmu.discovery import UdevWatcher
    try:
        watcher = UdevWatcher(lambda *event: calls.append(event))
    except Exception as err:  # no uevent netlink in this sandbox
        pytest.skip(f"pyudev monitor unavailable: {err}")
    calls: list[tuple[str, int, str]] = []
    name = "tcm-user/1/v/mirror/mirror=/a;journal=/b"
    watcher._dispatch(_FakeUdevDevice("add", 7, "uio_pci_generic"))     # not TCMU
    watcher._dispatch(_FakeUdevDevice("add", 3, name + "\n"))
    # on removal sysfs attributes are gone: the name comes from what was seen at add
    watcher._dispatch(_FakeUdevDevice("remove", 3, ""))
    watcher._dispatch(_FakeUdevDevice("remove", 7, ""))
    assert calls == [("add", 3, name), ("remove", 3, name)]
    watcher.stop()
