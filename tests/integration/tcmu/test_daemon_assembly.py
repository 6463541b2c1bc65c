"""The daemon's own assembly on a simulated device: sysfs scan, configfs reads, adoption with the
reopen sequence, the real backend (ScsiDisk over Volume), netlink event handling, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import struct
from pathlib import Path

import pytest

from appliance.tcmu.daemon import HandlerConfig, HandlerDaemon
from appliance.tcmu.netlink import DeviceEvent, TcmuGenlCmd
from appliance.tcmu.sim import SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio

pytestmark = pytest.mark.integration

SIZE = 64 << 20
SERIAL = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def _fake_system(tmp: Path, cfg: str) -> HandlerConfig:
    uio = tmp / "class_uio" / "uio3"
    (uio / "maps" / "map0").mkdir(parents=True)
    (uio / "name").write_text(f"tcm-user/1/vol1/{cfg}\n")
    backstore = tmp / "core" / "user_1" / "vol1"
    for sub in ("action", "attrib", "wwn"):
        (backstore / sub).mkdir(parents=True)
    (backstore / "info").write_text(
        "Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 128\n"
        f"        Config: {cfg} Size: {SIZE} MaxDataAreaMB: 8 DataPagesPerBlk: 1 "
        "CmdRingSizeMB: 8\n")
    (backstore / "wwn" / "vpd_unit_serial").write_text("T10 VPD Unit Serial Number: \n")
    (backstore / "attrib" / "hw_block_size").write_text("512\n")
    (backstore / "attrib" / "hw_max_sectors").write_text("2048\n")
    (tmp / "params").mkdir()
    return HandlerConfig(sysfs_class_uio=tmp / "class_uio", dev_dir=tmp / "dev",
                         configfs_core=tmp / "core", module_parameters=tmp / "params",
                         dbus="none", netlink=False, udev=False, poll_interval=0.05)


def test_daemon_adopts_serves_reconfigures_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = f"mirror/mirror={data_dir}/m.img;journal={data_dir}/j.jnl;journal_size=64M"
    config = _fake_system(tmp_path, cfg)
    kernel = SimKernel(tmp_path / "ring", SimConfig(ring_bytes=1 << 20, data_blocks=1024))
    daemon = HandlerDaemon(config, open_transport=lambda minor, name: SimUio(tmp_path / "ring"))
    action = tmp_path / "core/user_1/vol1/action"

    def run(cdb: bytes, out: bytes = b"", data_in: int = 0):
        return kernel.wait_for([kernel.submit(cdb, out, data_in)], timeout=20)[0]

    try:
        asyncio.run(daemon.start())
        assert list(daemon.manager.devices) == [3]
        # reopen sequence left the device unblocked after resetting the ring
        assert (action / "reset_ring").read_text() == "1"
        assert (action / "block_dev").read_text() == "0"

        res = run(b"\x25" + bytes(9), data_in=8)
        assert struct.unpack(">II", res.data_in) == (SIZE // 512 - 1, 512)
        # rtslib sets the WWN only after enable, i.e. after the handler opened the device:
        # the serial is read from configfs at the first INQUIRY, and then kept.
        wwn = tmp_path / "core/user_1/vol1/wwn/vpd_unit_serial"
        wwn.write_text(f"T10 VPD Unit Serial Number: {SERIAL}\n")
        res = run(b"\x12\x01\x80\x00\xff\x00", data_in=255)
        assert res.data_in[4:4 + len(SERIAL)] == SERIAL.encode()
        wwn.write_text("T10 VPD Unit Serial Number: changed-later\n")
        res = run(b"\x12\x01\x80\x00\xff\x00", data_in=255)
        assert res.data_in[4:4 + len(SERIAL)] == SERIAL.encode()
        data = os.urandom(1 << 20)                                    # hw_max_sectors 2048
        assert run(struct.pack(">BBIBHB", 0x2A, 0, 0, 0, 2048, 0), data).status == 0
        assert run(struct.pack(">BBIBHB", 0x28, 0, 0, 0, 2048, 0), data_in=1 << 20).data_in == data
        assert (data_dir / "m.img").exists() and (data_dir / "j.jnl").exists()

        def event(**kw) -> int:
            return daemon.on_netlink(DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE,
                                                 f"tcm-user/1/vol1/{cfg}", 3, 5, **kw))

        assert event(dev_cfg=cfg) == 0            # restore replays: no-ops answer 0
        assert event(dev_size=SIZE) == 0
        assert event(writecache=1) == 0
        res = run(b"\x1a\x00\x08\x00\xff\x00", data_in=255)
        page = res.data_in[4 + res.data_in[3]:]
        assert page[0] & 0x3F == 0x08 and page[2] & 0x04
        assert event(writecache=0) == 0
        res = run(b"\x1a\x00\x08\x00\xff\x00", data_in=255)
        page = res.data_in[4 + res.data_in[3]:]
        assert not page[2] & 0x04                                     # WCE now off
        grown = event(dev_size=2 * SIZE)
        backend = daemon.manager.devices[3].backend
        if hasattr(backend.volume, "resize"):
            assert grown == 0
            res = run(b"\x25" + bytes(9), data_in=8)
            assert res.status == 0x02 and (res.sense[12], res.sense[13]) == (0x2A, 0x09)
        else:
            assert grown == -errno.EOPNOTSUPP                         # refused, size unchanged
        assert daemon.on_netlink(DeviceEvent(TcmuGenlCmd.REMOVED_DEVICE,
                                             f"tcm-user/1/vol1/{cfg}", 3, 5)) == 0
        assert daemon.manager.devices == {}
    finally:
        daemon.shutdown()
        kernel.close()


def test_the_control_socket_shows_each_volume_and_what_its_peer_lacks(tmp_path: Path) -> None:
    """No transmitter runs: the handler's own status says the peer lacks the writes."""
    from appliance.control.client import call
    from appliance.tcmu.daemon import control_server

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = f"mirror/mirror={data_dir}/m.img;journal={data_dir}/j.jnl;journal_size=64M"
    config = _fake_system(tmp_path, cfg)
    config = dataclasses.replace(config, control_socket=tmp_path / "handler.sock")
    kernel = SimKernel(tmp_path / "ring", SimConfig(ring_bytes=1 << 20, data_blocks=256))
    daemon = HandlerDaemon(config, open_transport=lambda minor, name: SimUio(tmp_path / "ring"))

    async def scenario() -> tuple[dict, dict]:
        await daemon.start()
        control = control_server(daemon)
        await control.start()
        try:
            before = await asyncio.to_thread(call, config.control_socket, "status")
            for lba in (0, 8, 16):
                t = kernel.submit(struct.pack(">BBIBHB", 0x2A, 0x08, lba, 0, 8, 0),
                                  os.urandom(4096))
                assert (await asyncio.to_thread(kernel.wait_for, [t]))[0].status == 0
            after = await asyncio.to_thread(call, config.control_socket, "status")
            return before, after
        finally:
            await control.close()

    try:
        before, after = asyncio.run(scenario())
    finally:
        daemon.shutdown()
        kernel.close()
    assert before["role"] == "handler" and list(before["volumes"]) == ["vol1"]
    vol = before["volumes"]["vol1"]
    assert vol["state"] == "journaling" and vol["peer_holds_everything"] is True, vol
    vol = after["volumes"]["vol1"]
    assert vol["peer_lag_records"] == 3 and vol["peer_holds_everything"] is False, vol
    assert vol["cfgstring"].startswith(f"mirror={data_dir}/m.img;") and vol["size_bytes"] == SIZE


def test_netlink_events_drive_the_daemon(tmp_path: Path) -> None:
    """A fake kernel on the netlink socket: ADDED → served (reply 0), commands flow, restore's
    no-op RECONFIG → 0, REMOVED → 0; every reply carries the event's DEVICE_ID."""
    import socket
    import threading

    from appliance.tcmu.netlink import TcmuNetlink, decode_reply, encode_event, split_messages

    family = 0x1C
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = f"mirror/mirror={data_dir}/m.img;journal={data_dir}/j.jnl;journal_size=64M"
    config = _fake_system(tmp_path, cfg)
    (tmp_path / "class_uio" / "uio3" / "name").unlink()  # not there at start: nothing adopted
    kernel = SimKernel(tmp_path / "ring", SimConfig(ring_bytes=1 << 20, data_blocks=256))
    daemon = HandlerDaemon(config, open_transport=lambda minor, name: SimUio(tmp_path / "ring"))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.settimeout(30)
    link = TcmuNetlink(ours, family, pid=99)
    server = threading.Thread(target=link.serve, args=(daemon.on_netlink,), daemon=True)
    name = f"tcm-user/1/vol1/{cfg}"

    def send(cmd: TcmuGenlCmd, seq: int, **kw) -> tuple:
        theirs.send(encode_event(family, DeviceEvent(cmd, name, 3, 40 + seq, **kw), seq=seq))
        ((mtype, _, message),) = split_messages(theirs.recv(65536))
        assert mtype == family
        return decode_reply(message)

    try:
        asyncio.run(daemon.start())
        assert daemon.manager.devices == {}
        server.start()
        assert send(TcmuGenlCmd.ADDED_DEVICE, 1) == (TcmuGenlCmd.ADDED_DEVICE_DONE, 0, 41)
        data = os.urandom(4096)
        t = kernel.submit(struct.pack(">BBIBHB", 0x2A, 0, 8, 0, 8, 0), data)
        assert kernel.wait_for([t])[0].status == 0
        t = kernel.submit(struct.pack(">BBIBHB", 0x28, 0, 8, 0, 8, 0), data_in_len=4096)
        assert kernel.wait_for([t])[0].data_in == data
        assert send(TcmuGenlCmd.RECONFIG_DEVICE, 2, dev_cfg=cfg) == \
            (TcmuGenlCmd.RECONFIG_DEVICE_DONE, 0, 42)
        assert send(TcmuGenlCmd.RECONFIG_DEVICE, 3, dev_cfg=cfg.replace("m.img", "n.img")) == \
            (TcmuGenlCmd.RECONFIG_DEVICE_DONE, -errno.EOPNOTSUPP, 43)
        assert send(TcmuGenlCmd.REMOVED_DEVICE, 4) == (TcmuGenlCmd.REMOVED_DEVICE_DONE, 0, 44)
        assert daemon.manager.devices == {}
        bad = cfg.replace("journal=", "journal=rel/")
        theirs.send(encode_event(family, DeviceEvent(TcmuGenlCmd.ADDED_DEVICE,
                                                     f"tcm-user/1/vol2/{bad}", 4, 50), seq=5))
        ((_, _, message),) = split_messages(theirs.recv(65536))
        assert decode_reply(message) == (TcmuGenlCmd.ADDED_DEVICE_DONE, -errno.EINVAL, 50)
    finally:
        link.stop()
        server.join(timeout=10)
        assert not server.is_alive(), "netlink thread did not stop"
        daemon.shutdown()
        link.close()
        theirs.close()
        kernel.close()

