"""A consistency group in the lab (docs/groups.md, docs/shell.md "Consistency groups"):
made through the appliance's targetcli, its member LUNs on one target the host logs in to,
a dependent-write workload across them on the host, and the DR's member mirrors compared
with the primary's byte for byte."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from vmlab import appliance as ap
from vmlab import demo
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
        return [f"/replication/groups create name={self.name} peer={self.peer} "
                f"journal_size={self.journal_size}",
                *(self.member_line(m) for m in self.members),
                *export_lines(iqn, self.members, chap)]


def export_lines(iqn: str, members, chap: ap.Chap) -> list[str]:
    """targetcli lines: one target with each member's user:mirror backstore as a LUN (in
    order: LUN 0, 1, ...) and the host's CHAP ACL, made after the LUNs so that it maps them
    all."""
    members = list(members)
    exported = ap.target_lines(iqn, ap.LunSpec(members[0]), chap)   # target, LUN 0, auth, ACL
    more = [f"/iscsi/{iqn}/tpg1/luns create /backstores/user:mirror/{m}" for m in members[1:]]
    return [*exported[:2], *more, *exported[2:]]


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


# --------------------------------------------------------------------------- failover and back
# A group fails over and back as docs/groups.md, "Failover and failback" says, through
# targetcli only, taking what the shell prints as an admin copies it: 'promote' prints the
# layout (promoted=, targetcli_ext/replica_nodes.py), 'create ... promoted=' the new group's
# uuid and each member's backstore line (targetcli_ext/group_ops.py).

PROMOTED = re.compile(r"^Promoted (\S+) \(([0-9a-f-]{36})\): (\S+) holds the primary's image "
                      r"after seq (\d+)", re.M)
PROMOTED_LAYOUT = re.compile(r"promoted=(/\S+\.group\.json)\s*$", re.M)
CREATED_UUID = re.compile(r"\(uuid ([0-9a-f-]{36}): the old site's '/replication/groups/\S+ "
                          r"failback uuid=\1' names it\)")
MEMBER_BACKSTORE = re.compile(r"^\s*(/backstores/user:mirror create name=(\S+) size=(\d+) "
                              r"cfgstring=mirror=([^;\s]+);group=(\S+))\s*$", re.M)


@dataclass(frozen=True)
class PromotedGroup:
    """A group replica promoted on the DR and made a group of the DR's over its members."""

    name: str
    old_uuid: str               # the group's uuid on the old primary
    at_seq: int                 # the promotion's base: every member as of this seq
    layout: str                 # the promoted layout 'promote' printed (promoted=)
    uuid: str                   # the DR's new group, as 'create ... promoted=' printed it
    mirrors: dict[str, str]     # member: its mirror on the DR (the printed backstore lines)
    backstore_lines: tuple[str, ...]
    promote_text: str
    create_text: str

    def serve_lines(self, iqn: str, chap: ap.Chap) -> list[str]:
        """The printed backstores, exported as LUNs of one target with the host's ACL."""
        return [*self.backstore_lines, *export_lines(iqn, self.mirrors, chap), "saveconfig"]


def _parsed(pattern: re.Pattern, text: str, what: str) -> re.Match:
    found = pattern.search(text)
    if not found:
        raise MachineError(f"{what} is not in what targetcli printed:\n{text}")
    return found


def promote(dr: Machine, name: str, *, peer: str, journal_size: str,
            log=lambda msg: None) -> PromotedGroup:
    """On the DR: '/replication/replicas/<name> promote', then, with the layout it printed,
    '/replication/groups create name=<name> peer=<peer> promoted=<layout>'."""
    out = demo.shell(dr, [f"/replication/replicas/{name} promote"], log)[-1].stdout
    head = _parsed(PROMOTED, out, "'Promoted <name> (<uuid>): ... after seq <n>'")
    layout = _parsed(PROMOTED_LAYOUT, out, "the step 'groups create ... promoted=<layout>'")[1]
    if layout != head[3]:
        raise MachineError(f"promote names two layouts, {head[3]} and {layout}:\n{out}")
    created = demo.shell(dr, [f"/replication/groups create name={name} peer={peer} "
                              f"journal_size={journal_size} promoted={layout}"], log)[-1].stdout
    gid = _parsed(CREATED_UUID, created, "the new group's uuid")[1]
    members = MEMBER_BACKSTORE.findall(created)
    if not members or any(m[4] != name for m in members):
        raise MachineError(f"'create ... promoted=' printed no backstore line of group "
                           f"{name}:\n{created}")
    return PromotedGroup(name, head[2], int(head[4]), layout, gid,
                         {m[1]: m[3] for m in members}, tuple(m[0] for m in members), out,
                         created)


def host_writes_through(host: Machine, portal: str, iqn: str, chap: ap.Chap, luns: int, *,
                        writes: int, slots: int) -> float:
    """The host logs in to iqn, makes the dependent writes across its LUNs, logs out and
    deletes the node record; returns the seconds the writes took."""
    try:
        devices = host_login_luns(host, portal, iqn, chap, luns)
        t0 = time.monotonic()
        dependent_writes(host, devices, writes=writes, slots=slots)
        return time.monotonic() - t0
    finally:
        ap.host_logout(host, portal, iqn)
        host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-o", "delete"],
                 check=False)


def _failback_logs(primary: Machine, dr: Machine, name: str) -> str:
    return (f"{primary.name}: /replication status\n{rp.shell_status(primary)}\n"
            f"{dr.name}: group transmitter: {rp.status(dr, rp.transmitter_sock(name))}\n"
            f"{rp.unit_logs(primary, ['appliance-receiver', 'appliance-handler'])}\n"
            f"{rp.unit_logs(dr, [f'appliance-transmitter@{name}', 'appliance-handler'])}")


def failback(primary: Machine, dr: Machine, group: Group, iqn: str, promoted: PromotedGroup,
             log=lambda msg: None) -> str:
    """On the old primary: the group's target and every member's backstore deleted, then
    '/replication/groups/<name> failback uuid=<the DR's group>' and saveconfig; returns what
    failback printed. A refusal raises with both sides' status and logs."""
    lines = [f"/iscsi delete {iqn}", *(f"/backstores/user:mirror delete {m}"
                                       for m in group.members),
             f"/replication/groups/{group.name} failback uuid={promoted.uuid}", "saveconfig"]
    # what the DR's group transmitter (started by 'create') and this receiver see before
    log(f"{dr.name}: group transmitter before the failback: "
        f"{rp.status(dr, rp.transmitter_sock(group.name))}")
    log(f"{primary.name}: its receiver's replica of {promoted.uuid} before the failback: "
        f"{json.dumps(rp.replica_of(primary, promoted.uuid))}")
    results = ap.targetcli_lines(primary, lines)
    for r in results:
        log(f"{primary.name}: targetcli {r.describe()}")
    if len(results) < len(lines) or results[-1].refused:
        offered = rp.replica_of(primary, promoted.uuid)
        raise MachineError(f"{primary.name}: targetcli refused {results[-1].line!r}: "
                           f"{results[-1].message}\nits receiver's replica of "
                           f"{promoted.uuid}: {json.dumps(offered)}\n"
                           f"{_failback_logs(primary, dr, group.name)}")
    return results[-2].stdout


def members_equal(a: Machine, a_mirrors: dict[str, str], b: Machine, b_mirrors: dict[str, str],
                  size: int) -> dict[str, tuple[str, str]]:
    """{member: (SHA-256 on a, on b)} of each member's mirror on both appliances."""
    return {m: (rp.file_digest(a, a_mirrors[m], size), rp.file_digest(b, b_mirrors[m], size))
            for m in a_mirrors}


@dataclass(frozen=True)
class GroupFailedBack:
    """What the copy back did, as the daemons and the admin's shell report it."""

    seconds: float          # from the host's last write to equal members
    transmitter: dict       # the DR group transmitter's status (records_sent, resync, ...)
    transmitter_text: str   # the same as an admin reads it (appliancectl status)
    replica: dict           # the old primary receiver's status of the replica
    status_text: str        # '/replication/replicas/<name> status' on the old primary
    digests: dict[str, tuple[str, str]]

    @property
    def resync(self) -> dict:
        return self.transmitter.get("resync") or {}

    @property
    def failback(self) -> dict:
        return self.replica.get("failback") or {}


def wait_failed_back(primary: Machine, dr: Machine, group: Group, promoted: PromotedGroup, *,
                     timeout: float = 300.0, log=lambda msg: None) -> GroupFailedBack:
    """Wait until the old primary's replica of the DR's group is consistent, in sync, its
    failback done, the DR's group transmitter has nothing left to ship, and every member's
    old mirror on the old primary equals the DR's byte for byte (SHA-256 on both)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    sock = rp.transmitter_sock(group.name)

    def replica() -> dict:
        return rp.replica_of(primary, promoted.uuid) or {}

    def done() -> bool:
        r = replica()
        return r.get("state") == "consistent" and r.get("in_sync") is True \
            and (r.get("failback") or {}).get("state") == "done"

    def detail() -> str:
        return (f"replica: {json.dumps(replica())[:3000]}\n"
                f"{_failback_logs(primary, dr, group.name)}")

    rp.wait_for(f"{primary.name}'s replica {group.name} of group {promoted.uuid} consistent "
                f"with its failback done", done, timeout, detail=detail)
    rp.wait_for(f"{dr.name}'s transmitter of group {group.name} in sync with nothing left",
                lambda: (s := rp.daemon_status(dr, sock)) and s.get("in_sync") is True
                and not s.get("lag_records") and not s.get("lag_bytes"),
                max(10.0, deadline - time.monotonic()), detail=detail)
    mine = {m: group.primary_mirror(m) for m in group.members}
    while True:
        digests = members_equal(primary, mine, dr, promoted.mirrors, group.size_bytes)
        if all(here == there for here, there in digests.values()):
            break
        if time.monotonic() > deadline:
            raise MachineError(f"group {group.name}: the old primary's members still differ "
                               f"from the DR's {timeout:.0f} s after the failback: {digests}\n"
                               f"{detail()}")
        time.sleep(3)
    took = time.monotonic() - t0
    text = demo.shell(primary, [f"/replication/replicas/{group.name} status"], log)[-1].stdout
    tx_text = rp.status(dr, sock)
    log(f"{dr.name}: appliancectl --socket {sock} status\n{tx_text}")
    return GroupFailedBack(took, rp.daemon_status(dr, sock) or {}, tx_text, replica(),
                           text.strip(), digests)
