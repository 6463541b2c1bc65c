"""A consistency group in the lab (docs/groups.md, docs/shell.md "Consistency groups"):
made through the appliance's targetcli, its member LUNs on one target the host logs in to,
a dependent-write workload across them on the host, and the DR's member mirrors compared
with the primary's byte for byte."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from vmlab import appliance as ap
from vmlab import replication as rp
from vmlab.machine import Machine, MachineError

GROUPS_DIR = f"{ap.STATE_DIR}/groups"            # the handler's groups directory (docs/tcmu.md)
REPLICAS_DIR = f"{ap.STATE_DIR}/replicas"        # the DR receiver's state_dir


@dataclass(frozen=True)
class Group:
    """A group of user:mirror members exported as LUNs 0, 1, ... of one target."""

    name: str
    peer: str
    members: tuple[str, ...]
    size: str = "32M"
    journal_size: str = "32M"

    @property
    def size_bytes(self) -> int:
        return rp.size_bytes(self.size)

    def primary_mirror(self, member: str) -> str:
        return f"{ap.STATE_DIR}/volumes/{member}.img"

    def member_line(self, member: str) -> str:
        return (f"/backstores/user:mirror create name={member} size={self.size} "
                f"cfgstring=mirror={self.primary_mirror(member)};group={self.name}")

    def lines(self, iqn: str, chap: ap.Chap) -> list[str]:
        """targetcli lines: the group, its members, one target with every member as a LUN
        (in member order) and the host's CHAP ACL (made after the LUNs: it maps them all)."""
        first = ap.LunSpec(self.members[0])
        exported = ap.target_lines(iqn, first, chap)     # target, LUN 0, auth, ACL
        more = [f"/iscsi/{iqn}/tpg1/luns create /backstores/user:mirror/{m}"
                for m in self.members[1:]]
        return [f"/replication/groups create name={self.name} peer={self.peer} "
                f"journal_size={self.journal_size}",
                *(self.member_line(m) for m in self.members),
                *exported[:2], *more, *exported[2:]]


def lun_link(portal: str, iqn: str, lun: int) -> str:
    return f"/dev/disk/by-path/ip-{portal}:{ap.ISCSI_PORT}-iscsi-{iqn}-lun-{lun}"


def host_login_luns(host: Machine, portal: str, iqn: str, chap: ap.Chap, luns: int,
                    timeout: float = 60.0) -> list[str]:
    """Log the host in to iqn (CHAP) and return the device of each LUN 0..luns-1."""
    devices = [ap.host_login(host, portal, iqn, chap=chap, timeout=timeout)]
    for lun in range(1, luns):
        link = lun_link(portal, iqn, lun)
        host.run(f"udevadm settle; for i in $(seq 1 100); do [ -e '{link}' ] && exit 0; "
                 f"sleep 0.2; done; echo 'no {link} after login' >&2; exit 1", timeout=timeout)
        devices.append(host.run(["readlink", "-f", link]).text.strip())
    return devices


MEMBER_BASE = 1_000_000     # member k's blocks hold i + k * MEMBER_BASE: members differ


def dependent_writes(host: Machine, devices: list[str], *, writes: int, slots: int,
                     timeout: float = 600.0) -> None:
    """For i in 1..writes: block i % slots of the first device gets i (a 512-byte block, the
    number zero-padded), synced; only then the same block of the next device gets
    i + MEMBER_BASE, and so on. A DR image where a slot of a later device is ahead of the
    same slot of an earlier one broke the write order."""
    host.run(f"set -e; for i in $(seq 1 {writes}); do s=$((i % {slots})); k=0; "
             f"for d in {' '.join(devices)}; do printf '%0512d' $((i + k * {MEMBER_BASE})) | "
             f"dd of=$d bs=512 count=1 seek=$s oflag=direct,sync status=none; k=$((k + 1)); "
             f"done; done", timeout=timeout)


def expected_slots(writes: int, slots: int, member_index: int) -> dict[int, int]:
    """{slot: what the workload wrote there last} on the member_index-th device."""
    return {i % slots: i + member_index * MEMBER_BASE for i in range(1, writes + 1)}


def read_slots(machine: Machine, path: str, slots: int) -> dict[int, int]:
    """{slot: the number in that 512-byte block} of a member's image (0: never written: its
    zero bytes read as the digit 0)."""
    raw = machine.run(f"head -c {slots * 512} '{path}' | tr '\\000' '0'").text
    if len(raw) != slots * 512 or not raw.isdigit():
        raise MachineError(f"{machine.name}: {path}: the first {slots} blocks are not the "
                           f"workload's numbers: {raw[:200]!r}...")
    return {s: int(raw[s * 512:(s + 1) * 512]) for s in range(slots)}


def primary_layout(primary: Machine, name: str) -> dict:
    """The group's layout on the primary (made by 'create', members appended by the handler)."""
    return json.loads(primary.run(["cat", f"{GROUPS_DIR}/{name}.group.json"]).text)


def dr_member_mirror(group_uuid: str, member: str) -> str:
    """A provisioned group replica keeps one mirror per member (group_replica.py)."""
    return f"{REPLICAS_DIR}/{group_uuid}/members/{member}.img"


def group_status(machine: Machine, name: str) -> str:
    return ap.targetcli(machine, f"/replication/groups/{name}", "status", check=False).text.strip()


def wait_group_converged(primary: Machine, dr: Machine, group: Group, group_uuid: str, *,
                         timeout: float = 300.0, say=lambda msg: None) -> float:
    """Wait until the group's transmitter is in sync with nothing to ship, then until every
    member's mirror at the DR equals the primary's byte for byte (SHA-256 on both
    appliances); returns the seconds it took. The host must have stopped writing."""
    t0 = time.monotonic()
    sock = rp.transmitter_sock(group.name)
    rp.wait_for(f"the transmitter of group {group.name} in sync with nothing left to ship",
                lambda: (s := rp.daemon_status(primary, sock)) and s.get("in_sync") is True
                and not s.get("lag_records") and not s.get("lag_bytes"),
                timeout, detail=lambda: f"{group_status(primary, group.name)}\n"
                f"{rp.unit_logs(primary, [f'appliance-transmitter@{group.name}', 'appliance-handler'])}\n"
                f"{rp.unit_logs(dr, ['appliance-receiver'])}")
    deadline = t0 + timeout
    while True:
        pairs = {m: (rp.file_digest(primary, group.primary_mirror(m), group.size_bytes),
                     rp.file_digest(dr, dr_member_mirror(group_uuid, m), group.size_bytes))
                 for m in group.members}
        if all(here == there for here, there in pairs.values()):
            took = time.monotonic() - t0
            say(f"group {group.name}: every member at the DR equals the primary's byte for "
                f"byte ({', '.join(f'{m} sha256 {h[:16]}...' for m, (h, _) in pairs.items())}), "
                f"{took:.0f} s after the host stopped writing")
            return took
        if time.monotonic() > deadline:
            raise MachineError(f"group {group.name}: the DR's member mirrors still differ "
                               f"{timeout:.0f} s after the host stopped writing: {pairs}\n"
                               f"{group_status(primary, group.name)}\n"
                               f"{rp.unit_logs(dr, ['appliance-receiver'])}")
        time.sleep(3)
