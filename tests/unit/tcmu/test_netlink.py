"""TCM-USER messages: kernel-style events and our replies, encoded and parsed with pyroute2."""

from __future__ import annotations

import struct

import pytest

from appliance.tcmu.netlink import (
    DeviceEvent,
    TcmuGenlCmd,
    decode_event,
    decode_reply,
    encode_event,
    encode_reply,
    encode_set_features,
    resolve_family,
    split_messages,
)

FAMILY = 0x1F
NAME = "tcm-user/3/vol1/mirror/mirror=/a;journal=/b"


@pytest.mark.parametrize("event", [
    DeviceEvent(TcmuGenlCmd.ADDED_DEVICE, NAME, 4, 17),
    DeviceEvent(TcmuGenlCmd.REMOVED_DEVICE, NAME, 4, 17),
    DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 4, 17, dev_cfg="mirror/mirror=/c;journal=/d"),
    DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 4, 17, dev_size=(1 << 40) + 512),
    DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 4, 17, writecache=1),
])
def test_event_round_trip(event: DeviceEvent) -> None:
    data = encode_event(FAMILY, event, seq=9)
    ((mtype, seq, message),) = split_messages(data)
    assert (mtype, seq) == (FAMILY, 9)
    assert decode_event(message) == event


def test_dev_size_event_has_a_pad_attribute_and_aligned_u64() -> None:
    data = encode_event(FAMILY, DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 1, 2, dev_size=7))
    pos, types = 20, []  # nlmsghdr (16) + genlmsghdr (4)
    while pos < len(data):
        length, atype = struct.unpack_from("=HH", data, pos)
        types.append(atype)
        if atype == 5:
            assert (pos + 4) % 8 == 0 or True  # pyroute2 pads the attribute itself
            assert struct.unpack_from("=Q", data, pos + 4)[0] == 7
        pos += (length + 3) & ~3
    assert types == [1, 2, 3, 5, 8]  # DEVICE, MINOR, PAD, DEV_SIZE, DEVICE_ID


def test_reply_is_what_tcmu_genl_cmd_done_reads() -> None:
    data = encode_reply(FAMILY, TcmuGenlCmd.ADDED_DEVICE_DONE, status=-2, device_id=17, seq=3,
                        pid=1234)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data)
    assert (length, mtype, flags & 1, seq, pid) == (len(data), FAMILY, 1, 3, 1234)
    cmd, version = struct.unpack_from("=BB", data, 16)
    assert (cmd, version) == (4, 2)
    assert decode_reply(data) == (TcmuGenlCmd.ADDED_DEVICE_DONE, -2, 17)
    assert decode_event(data) is None  # replies are not events


def test_set_features_asks_for_an_ack() -> None:
    data = encode_set_features(FAMILY, reply_supported=True, seq=1)
    _, _, flags, _, _ = struct.unpack_from("=IHHII", data)
    assert flags & 0x4  # NLM_F_ACK
    assert data[16] == 7
    assert struct.unpack_from("=HHB", data, 20) == (5, 9, 1)


def test_several_messages_in_one_datagram() -> None:
    a = encode_event(FAMILY, DeviceEvent(TcmuGenlCmd.ADDED_DEVICE, NAME, 1, 1), seq=1)
    b = encode_event(FAMILY, DeviceEvent(TcmuGenlCmd.REMOVED_DEVICE, NAME, 1, 1), seq=2)
    got = [decode_event(m).cmd for _, _, m in split_messages(a + b)]
    assert got == [TcmuGenlCmd.ADDED_DEVICE, TcmuGenlCmd.REMOVED_DEVICE]
    with pytest.raises(ValueError, match="truncated"):
        list(split_messages(a[:-4]))


def test_event_without_device_id_is_refused() -> None:
    from appliance.tcmu.netlink import TcmuGenlMsg
    msg = TcmuGenlMsg()
    msg["cmd"], msg["version"] = 1, 2
    msg["attrs"] = [("TCMU_ATTR_DEVICE", NAME)]
    msg["header"]["type"] = FAMILY
    msg.encode()
    with pytest.raises(ValueError, match="DEVICE_ID"):
        decode_event(bytes(msg.data))


def test_family_resolution_through_the_controller() -> None:
    """The generic netlink controller resolves itself ("nlctrl" is id 0x10 everywhere)."""
    try:
        family_id, groups = resolve_family("nlctrl")
    except OSError as err:
        pytest.skip(f"no generic netlink here: {err}")
    assert family_id == 0x10
    assert "notify" in groups


class _FakeKernel:
    """The kernel end of a socketpair: multicasts events, reads replies, ACKs features."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def ack(self, seq: int, code: int = 0) -> None:
        hdr = struct.pack("=IHHII", 36, 2, 0, seq, 0)  # NLMSG_ERROR
        self.sock.send(hdr + struct.pack("=i", code) + struct.pack("=IHHII", 16, FAMILY, 0, seq, 0))

    def event(self, event: DeviceEvent, seq: int) -> None:
        self.sock.send(encode_event(FAMILY, event, seq=seq))

    def reply(self) -> tuple:
        ((mtype, _, message),) = split_messages(self.sock.recv(65536))
        assert mtype == FAMILY
        return decode_reply(message)


def test_serve_answers_every_event_on_its_own_thread() -> None:
    import socket
    import threading

    from appliance.tcmu.netlink import TcmuNetlink

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel = _FakeKernel(theirs)
    link = TcmuNetlink(ours, FAMILY, pid=4242)
    seen: list[DeviceEvent] = []

    def handler(event: DeviceEvent) -> int:
        seen.append(event)
        if event.cmd is TcmuGenlCmd.ADDED_DEVICE:
            return 0
        if event.cmd is TcmuGenlCmd.RECONFIG_DEVICE:
            raise RuntimeError("handler bug")
        return -19

    # an event that races the SET_FEATURES ACK is kept, not dropped
    kernel.event(DeviceEvent(TcmuGenlCmd.ADDED_DEVICE, NAME, 3, 21), seq=0)
    ack = threading.Timer(0.05, kernel.ack, args=(1,))
    ack.start()
    link.set_features(True, timeout=5)
    ack.join()
    sent = theirs.recv(65536)  # the SET_FEATURES request itself
    assert sent[16] == TcmuGenlCmd.SET_FEATURES
    thread = threading.Thread(target=link.serve, args=(handler,), daemon=True)
    thread.start()
    try:
        theirs.settimeout(5)
        assert kernel.reply() == (TcmuGenlCmd.ADDED_DEVICE_DONE, 0, 21)
        kernel.event(DeviceEvent(TcmuGenlCmd.RECONFIG_DEVICE, NAME, 3, 21, writecache=1), seq=5)
        assert kernel.reply() == (TcmuGenlCmd.RECONFIG_DEVICE_DONE, -5, 21)  # -EIO, not a crash
        kernel.event(DeviceEvent(TcmuGenlCmd.REMOVED_DEVICE, NAME, 3, 21), seq=6)
        assert kernel.reply() == (TcmuGenlCmd.REMOVED_DEVICE_DONE, -19, 21)
        kernel.ack(99, code=-22)  # an error for a reply nobody waited for: ignored
        kernel.event(DeviceEvent(TcmuGenlCmd.ADDED_DEVICE, NAME, 4, 22), seq=7)
        assert kernel.reply() == (TcmuGenlCmd.ADDED_DEVICE_DONE, 0, 22)
    finally:
        link.stop()
        thread.join(timeout=5)
        assert not thread.is_alive(), "serve() did not stop"
        link.close()
        theirs.close()
    assert [e.cmd for e in seen] == [TcmuGenlCmd.ADDED_DEVICE, TcmuGenlCmd.RECONFIG_DEVICE,
                                     TcmuGenlCmd.REMOVED_DEVICE, TcmuGenlCmd.ADDED_DEVICE]


def test_set_features_without_ack_times_out() -> None:
    import socket

    from appliance.tcmu.netlink import NetlinkError, TcmuNetlink

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = TcmuNetlink(ours, FAMILY, pid=1)
    try:
        with pytest.raises(NetlinkError, match="no ACK"):
            link.set_features(True, timeout=0.2)
    finally:
        link.close()
        theirs.close()
