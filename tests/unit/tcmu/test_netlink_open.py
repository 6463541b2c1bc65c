"""TcmuNetlink.open on this machine's real kernel, pointed at the always-present generic
netlink controller ("nlctrl") instead of TCM-USER (this host has no target_core_user).

It exercises what the socketpair tests cannot: the AF_NETLINK socket itself (protocol
NETLINK_GENERIC, which Python's socket module does not export), bind, and joining a
multicast group by the id the controller reports."""

from __future__ import annotations

import socket

import pytest

from appliance.tcmu import netlink


def test_open_builds_a_generic_netlink_socket_and_joins_the_group(monkeypatch):
    try:
        family_id, groups = netlink.resolve_family("nlctrl")
    except netlink.NetlinkError as err:
        pytest.skip(f"no generic netlink here: {err}")
    assert family_id == 0x10  # GENL_ID_CTRL
    monkeypatch.setattr(netlink, "resolve_family",
                        lambda name=netlink.FAMILY_NAME: (family_id, {netlink.MCAST_GROUP: groups["notify"]}))
    sent: list[bool] = []
    monkeypatch.setattr(netlink.TcmuNetlink, "set_features", lambda self, reply, timeout=5.0: sent.append(reply))
    link = netlink.TcmuNetlink.open()
    try:
        assert sent == [True]
        assert link.family_id == family_id
        sock = link._sock
        assert sock.family == socket.AF_NETLINK
        assert sock.proto == netlink.NETLINK_GENERIC == 16
        assert sock.getsockname()[0] == link.pid != 0
    finally:
        link.close()
