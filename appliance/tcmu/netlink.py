"""The generic netlink family "TCM-USER" (target_core_user.c, `tcmu_genl_family`).

The kernel multicasts ADDED/REMOVED/RECONFIG_DEVICE on the group "config" and, once a daemon has
sent SET_FEATURES(SUPP_KERN_CMD_REPLY=1), waits - uninterruptibly, without a timeout - for the
matching *_DONE reply before the configfs write that caused the event returns. Hence this socket
is served by its own thread that does nothing else (`tcmu_wait_genl_cmd_reply`).

Messages are pyroute2 generic netlink messages (`TcmuGenlMsg`, built on pyroute2's nla
machinery); the family id and multicast group come from pyroute2's controller lookup. The socket
that carries events is a plain AF_NETLINK socket so the serving thread can select() on it next to
a stop pipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, genlmsg
from pyroute2.netlink.generic import GenericNetlinkSocket

# The event types live apart (no pyroute2 import) so the daemon can serve rings before loading
# this module; re-exported here for the callers that build or decode messages.
from appliance.tcmu.events import REPLY_FOR, DeviceEvent, TcmuGenlCmd

__all__ = ["REPLY_FOR", "DeviceEvent", "NetlinkError", "TcmuGenlCmd", "TcmuGenlMsg", "TcmuNetlink"]

log = logging.getLogger(__name__)

FAMILY_NAME = "TCM-USER"
MCAST_GROUP = "config"
GENL_VERSION = 2
SOL_NETLINK = 270
# linux/netlink.h; Python's socket module exports NETLINK_ROUTE and a few others, not this one
NETLINK_GENERIC = 16
NETLINK_ADD_MEMBERSHIP = 1


class TcmuGenlMsg(genlmsg):
    """A TCM-USER message; attribute numbers follow enum tcmu_genl_attr (index = number)."""

    prefix = "TCMU_ATTR_"
    nla_map = (
        ("TCMU_ATTR_UNSPEC", "none"),
        ("TCMU_ATTR_DEVICE", "asciiz"),
        ("TCMU_ATTR_MINOR", "uint32"),
        ("TCMU_ATTR_PAD", "none"),
        ("TCMU_ATTR_DEV_CFG", "asciiz"),
        ("TCMU_ATTR_DEV_SIZE", "uint64"),
        ("TCMU_ATTR_WRITECACHE", "uint8"),
        ("TCMU_ATTR_CMD_STATUS", "int32"),
        ("TCMU_ATTR_DEVICE_ID", "uint32"),
        ("TCMU_ATTR_SUPP_KERN_CMD_REPLY", "uint8"),
    )


class NetlinkError(OSError):
    """The TCM-USER family cannot be used (module not loaded, no CAP_NET_ADMIN, ...)."""


def encode_event(family_id: int, event: DeviceEvent, *, seq: int = 0) -> bytes:
    """Kernel-style event (tcmu_netlink_event_init/send), used by tests and simulations."""
    msg = TcmuGenlMsg()
    msg["cmd"] = int(event.cmd)
    msg["version"] = GENL_VERSION
    attrs = [("TCMU_ATTR_DEVICE", event.device), ("TCMU_ATTR_MINOR", event.minor)]
    if event.dev_cfg is not None:
        attrs.append(("TCMU_ATTR_DEV_CFG", event.dev_cfg))
    if event.dev_size is not None:
        attrs.append(("TCMU_ATTR_PAD", b""))  # nla_put_u64_64bit aligns with a PAD attribute
        attrs.append(("TCMU_ATTR_DEV_SIZE", event.dev_size))
    if event.writecache is not None:
        attrs.append(("TCMU_ATTR_WRITECACHE", event.writecache))
    attrs.append(("TCMU_ATTR_DEVICE_ID", event.device_id))
    msg["attrs"] = attrs
    return _finish(msg, family_id, flags=0, seq=seq, pid=0)


def encode_reply(family_id: int, cmd: TcmuGenlCmd, *, status: int, device_id: int,
                 seq: int = 0, pid: int = 0) -> bytes:
    """*_DONE reply: CMD_STATUS (0 or -errno) and DEVICE_ID, no ACK asked (as libtcmu)."""
    msg = TcmuGenlMsg()
    msg["cmd"] = int(cmd)
    msg["version"] = GENL_VERSION
    msg["attrs"] = [("TCMU_ATTR_CMD_STATUS", status), ("TCMU_ATTR_DEVICE_ID", device_id)]
    return _finish(msg, family_id, flags=NLM_F_REQUEST, seq=seq, pid=pid)


def encode_set_features(family_id: int, *, reply_supported: bool, seq: int = 0,
                        pid: int = 0) -> bytes:
    msg = TcmuGenlMsg()
    msg["cmd"] = int(TcmuGenlCmd.SET_FEATURES)
    msg["version"] = GENL_VERSION
    msg["attrs"] = [("TCMU_ATTR_SUPP_KERN_CMD_REPLY", int(reply_supported))]
    return _finish(msg, family_id, flags=NLM_F_REQUEST | NLM_F_ACK, seq=seq, pid=pid)


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(nlmsg type, seq, whole message) for each netlink message in a datagram."""
    pos = 0
    while pos + 16 <= len(data):
        length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
        if length < 16 or pos + length > len(data):
            raise ValueError(f"truncated netlink message at {pos}: length {length}")
        yield mtype, seq, data[pos: pos + length]
        pos += (length + 3) & ~3


def decode_event(message: bytes) -> DeviceEvent | None:
    """A kernel → user event, or None for a command we do not act on (replies, features)."""
    msg = TcmuGenlMsg(message)
    msg.decode()
    try:
        cmd = TcmuGenlCmd(msg["cmd"])
    except ValueError:
        return None
    if cmd not in REPLY_FOR:
        return None
    device = msg.get_attr("TCMU_ATTR_DEVICE")
    device_id = msg.get_attr("TCMU_ATTR_DEVICE_ID")
    if device is None or device_id is None:
        raise ValueError(f"{cmd.name} without DEVICE or DEVICE_ID attribute")
    return DeviceEvent(cmd, device, msg.get_attr("TCMU_ATTR_MINOR", -1), device_id,
                       msg.get_attr("TCMU_ATTR_DEV_CFG"), msg.get_attr("TCMU_ATTR_DEV_SIZE"),
                       msg.get_attr("TCMU_ATTR_WRITECACHE"))


def decode_reply(message: bytes) -> tuple[TcmuGenlCmd, int, int]:
    """(cmd, status, device_id) of a *_DONE reply (what the kernel's tcmu_genl_cmd_done reads)."""
    msg = TcmuGenlMsg(message)
    msg.decode()
    return (TcmuGenlCmd(msg["cmd"]), msg.get_attr("TCMU_ATTR_CMD_STATUS"),
            msg.get_attr("TCMU_ATTR_DEVICE_ID"))


def resolve_family(name: str = FAMILY_NAME) -> tuple[int, dict[str, int]]:
    """(family id, {multicast group name: id}) through the generic netlink controller."""
    genl = GenericNetlinkSocket()
    try:
        genl.bind(name, TcmuGenlMsg)
        return genl.prid, dict(genl.mcast_groups)
    except Exception as err:
        raise NetlinkError(f"generic netlink family {name!r} not available "
                           "(is target_core_user loaded?)") from err
    finally:
        genl.close()


EventHandler = Callable[[DeviceEvent], int]


class TcmuNetlink:
    """The daemon's TCM-USER socket: join "config", SET_FEATURES, answer every event.

    `open()` builds it on a real AF_NETLINK socket; the constructor takes any connected
    datagram socket (tests use a socketpair standing in for the kernel).
    """

    def __init__(self, sock: socket.socket, family_id: int, pid: int) -> None:
        self._sock = sock
        self.family_id = family_id
        self.pid = pid
        self._seq = 0
        self._backlog: list[tuple[int, int, bytes]] = []
        self._stop_r, self._stop_w = os.pipe()

    @classmethod
    def open(cls, *, family: str = FAMILY_NAME, reply_supported: bool = True) -> TcmuNetlink:
        family_id, groups = resolve_family(family)
        if MCAST_GROUP not in groups:
            raise NetlinkError(f"family {family!r} has no {MCAST_GROUP!r} multicast group")
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_GENERIC)
        try:
            sock.bind((0, 0))  # unconnected netlink: send() goes to the kernel (port 0)
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups[MCAST_GROUP])
            link = cls(sock, family_id, sock.getsockname()[0])
        except BaseException:
            sock.close()
            raise
        try:
            link.set_features(reply_supported)
        except BaseException:
            link.close()
            raise
        return link

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def set_features(self, reply_supported: bool, timeout: float = 5.0) -> None:
        """SET_FEATURES(SUPP_KERN_CMD_REPLY) and wait for its ACK; module-wide, and it
        outlives this daemon (target_core_user.c `tcmu_genl_set_features`)."""
        seq = self._next_seq()
        self._sock.send(encode_set_features(self.family_id, reply_supported=reply_supported,
                                            seq=seq, pid=self.pid))
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise NetlinkError(f"no ACK to SET_FEATURES within {timeout}s")
            for mtype, mseq, message in split_messages(self._sock.recv(65536)):
                if mtype == NLMSG_ERROR and mseq == seq:
                    (code,) = struct.unpack_from("=i", message, 16)
                    if code:
                        # Kernels before 4.14 lack SET_FEATURES: they never wait for replies.
                        log.warning("SET_FEATURES refused (%s); kernel will not wait for "
                                    "replies", os.strerror(-code))
                    return
                self._backlog.append((mtype, mseq, message))  # an event raced the ACK

    def serve(self, handler: EventHandler) -> None:
        """Loop until stop(): decode events, call handler, send its status as the reply."""
        while True:
            messages, self._backlog = self._backlog, []
            if not messages:
                ready, _, _ = select.select([self._sock, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                messages = list(split_messages(self._sock.recv(65536)))
            for mtype, seq, message in messages:
                if mtype != self.family_id:
                    continue  # ACK/errors for our replies (e.g. nobody was waiting)
                try:
                    event = decode_event(message)
                except ValueError:
                    log.exception("undecodable TCM-USER message")
                    continue
                if event is None:
                    continue
                self._answer(event, seq, handler)

    def _answer(self, event: DeviceEvent, seq: int, handler: EventHandler) -> None:
        try:
            status = handler(event)
        except Exception:
            log.exception("handling %s for %s failed", event.cmd.name, event.device)
            status = -5  # -EIO
        reply = encode_reply(self.family_id, REPLY_FOR[event.cmd], status=status,
                             device_id=event.device_id, seq=seq, pid=self.pid)
        try:
            self._sock.send(reply)
        except OSError:
            log.exception("sending %s for %s failed", REPLY_FOR[event.cmd].name, event.device)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def close(self) -> None:
        self._sock.close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _finish(msg: TcmuGenlMsg, family_id: int, *, flags: int, seq: int, pid: int) -> bytes:
    msg["header"]["type"] = family_id
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = pid
    msg.encode()
    return bytes(msg.data)
