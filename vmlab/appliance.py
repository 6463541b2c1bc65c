"""Driving VMs of the lab in their roles: an appliance (targetcli) and a host (open-iscsi),
plus the libiscsi tools on this machine through a forwarded port."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

from vmlab.agentclient import CommandResult
from vmlab.machine import Machine, MachineError, MachineSpec

IQN_PREFIX = "iqn.2026-11.org.drappliance"
ISCSI_PORT = 3260
STATE_DIR = "/var/lib/appliance"


@dataclass(frozen=True)
class LunSpec:
    """A disk exported on its own iSCSI target (LUN 0), open to any initiator (lab use)."""

    name: str
    size: str = "256M"
    backstore: str = "user:mirror"     # or "fileio" (LIO's kernel backstore, the reference)
    journal_size: str = "64M"

    def cfgstring(self) -> str:
        return (f"mirror={STATE_DIR}/volumes/{self.name}.img;"
                f"journal={STATE_DIR}/journals/{self.name}.jnl;journal_size={self.journal_size}")


def target_iqn(appliance: str, lun: str) -> str:
    return f"{IQN_PREFIX}:{appliance}.{lun}"


def targetcli(machine: Machine, *words: str, timeout: float = 90.0, check: bool = True) -> CommandResult:
    """One targetcli command (``targetcli <path> <command> <args>``) inside the appliance.

    targetcli reports some refusals on stderr with exit status 0, so a non-empty stderr is
    also a failure when check is set."""
    result = machine.run(["targetcli", *words], timeout=timeout, check=False)
    if check and (result.rc != 0 or result.timed_out or result.stderr.strip()):
        raise MachineError(f"{machine.name}: targetcli refused: {result.describe()}")
    return result


# The appliance's targetcli (targetcli_ext: stock targetcli plus /replication, built as its
# console entry point `appliance-targetcli` builds it) running several command lines in one
# process: starting Python and targetcli costs seconds under software emulation, once per line
# otherwise. Each line runs as `targetcli <line>` runs it; its output and whether it was
# refused (an exception, as `targetcli <line>` exits 1 with it; or an error logged on stderr)
# come back as JSON. Stops at the first refused line unless told to keep going.
TARGETCLI_BATCH = """
import contextlib, fcntl, io, json, os, sys
from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.main import ApplianceShell
from targetcli_ext.root import ApplianceRoot
lines, keep_going = json.loads(sys.argv[1]), sys.argv[2] == "1"
answer = os.dup(1)   # the JSON goes here, whatever the shell does with sys.stdout
config = ShellConfig.from_env()
shell = ApplianceShell(config.prefs_dir)
lock = open(config.lock_file, "w+")
fcntl.flock(lock, fcntl.LOCK_EX)
root = ApplianceRoot(shell, ReplicationContext(config), as_root=True)
root.refresh()
results = []
for line in lines:
    out, err = io.StringIO(), io.StringIO()
    shell.con._stdout, shell.con._stderr = out, err
    raised = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            shell.run_cmdline(line)
        except Exception as e:
            raised = "%s: %s" % (type(e).__name__, e)
    results.append({"line": line, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "error": raised})
    if (raised or err.getvalue().strip()) and not keep_going:
        break
data = b"@@results@@" + json.dumps(results).encode()
while data:
    data = data[os.write(answer, data):]
"""
SHELL_PYTHON = "/opt/appliance/bin/python"


@dataclass(frozen=True)
class LineResult:
    """One command line of a targetcli batch: what it printed and whether it was refused."""

    line: str
    stdout: str
    stderr: str
    error: str | None        # the exception that refused it (`targetcli <line>` exits 1)

    @property
    def refused(self) -> bool:
        return self.error is not None or bool(self.stderr.strip())

    @property
    def message(self) -> str:
        return "\n".join(t for t in (self.error or "", self.stderr.strip()) if t)

    def describe(self) -> str:
        return (f"/> {self.line}\n{self.stdout.rstrip()}\n"
                + (f"REFUSED: {self.message}" if self.refused else "")).rstrip()


def targetcli_lines(machine: Machine, lines: list[str], *, keep_going: bool = False,
                    timeout: float = 180.0) -> list[LineResult]:
    """Run targetcli command lines in order in one process of the appliance's targetcli;
    returns one result per line run (all of them with keep_going, else up to the first
    refused one)."""
    result = machine.run([SHELL_PYTHON, "-c", TARGETCLI_BATCH, json.dumps(lines),
                          "1" if keep_going else "0"], timeout=timeout, check=False)
    try:
        if result.rc == 0 and not result.timed_out:
            answer = result.text.rsplit("@@results@@", 1)[1]
            return [LineResult(**r) for r in json.loads(answer)]
    except (ValueError, IndexError):
        pass
    raise MachineError(f"{machine.name}: targetcli batch failed: {result.describe()}")


def targetcli_batch(machine: Machine, lines: list[str], *, timeout: float = 180.0) -> list[LineResult]:
    """Run targetcli command lines in order in one targetcli process; raises at the first
    refused line, naming it and its message."""
    results = targetcli_lines(machine, lines, timeout=timeout)
    if results and results[-1].refused:
        done = "\n".join(r.describe() for r in results)
        raise MachineError(f"{machine.name}: targetcli refused {results[-1].line!r}: "
                           f"{results[-1].message}\n{done}")
    return results


@dataclass(frozen=True)
class Chap:
    """An initiator let in to a target by an ACL of its own name, with CHAP; mutual CHAP
    (the target proves itself to the initiator too) when mutual_userid is set."""

    initiator: str
    userid: str
    password: str
    mutual_userid: str | None = None
    mutual_password: str | None = None

    def acl_lines(self, iqn: str) -> list[str]:
        auth = f"userid={self.userid} password={self.password}"
        if self.mutual_userid:
            auth += f" mutual_userid={self.mutual_userid} mutual_password={self.mutual_password}"
        return [f"/iscsi/{iqn}/tpg1/acls create {self.initiator}",
                f"/iscsi/{iqn}/tpg1/acls/{self.initiator} set auth {auth}"]


def host_initiator(host_name: str) -> str:
    """The initiator name host_login gives a host VM."""
    return f"{IQN_PREFIX}:host.{host_name}"


def lab_chap(host_name: str, secret: str = "lab") -> Chap:
    """Mutual CHAP credentials for a host VM (lab values: 12-16 characters, as some
    initiators require)."""
    return Chap(initiator=host_initiator(host_name), userid=f"{host_name}-in",
                password=f"{secret}-{host_name}-pw-0123"[:16],
                mutual_userid=f"{host_name}-tgt", mutual_password=f"{secret}-tgt-pw-456789"[:16])


def create_lun(machine: Machine, spec: LunSpec, *, save: bool = True, acl: Chap | None = None) -> str:
    """Create backstore, target and LUN through targetcli; returns the IQN. Without acl the
    target is open to any initiator (lab use: LIO's demo mode); with acl only that initiator
    is let in, with CHAP (authentication=1, no generated ACLs), as production runs it."""
    iqn = target_iqn(machine.name, spec.name)
    targetcli_batch(machine, [backstore_line(spec), *target_lines(iqn, spec, acl)]
                    + (["saveconfig"] if save else []))
    return iqn


def backstore_line(spec: LunSpec) -> str:
    if spec.backstore == "fileio":
        return (f"/backstores/fileio create name={spec.name} "
                f"file_or_dev={STATE_DIR}/volumes/{spec.name}.img size={spec.size}")
    return (f"/backstores/{spec.backstore} create name={spec.name} size={spec.size} "
            f"cfgstring={spec.cfgstring()}")


def target_lines(iqn: str, spec: LunSpec, acl: Chap | None) -> list[str]:
    """targetcli lines exporting the backstore of spec on target iqn (LUN 0)."""
    lines = [f"/iscsi create {iqn}",
             f"/iscsi/{iqn}/tpg1/luns create /backstores/{spec.backstore}/{spec.name}"]
    if acl is None:
        return lines + [f"/iscsi/{iqn}/tpg1 set attribute authentication=0 demo_mode_write_protect=0 "
                        "generate_node_acls=1 cache_dynamic_acls=1"]
    return lines + [f"/iscsi/{iqn}/tpg1 set attribute authentication=1 generate_node_acls=0 "
                    "demo_mode_write_protect=1 cache_dynamic_acls=0", *acl.acl_lines(iqn)]


# --------------------------------------------------------------------------- host VM


def host_login(host: Machine, portal: str, iqn: str, *, chap: Chap | None = None,
               timeout: float = 60.0) -> str:
    """Log the host VM's open-iscsi in to iqn at portal (with chap's credentials, mutual
    CHAP when it has target credentials); returns the disk's device path."""
    initiator = host_initiator(host.name)
    if chap is not None and chap.initiator != initiator:
        raise MachineError(f"{host.name}: CHAP credentials are for {chap.initiator}, "
                           f"the host logs in as {initiator}")
    host.write_file("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={initiator}\n".encode())
    # Recover quickly when an appliance reboots (defaults wait 120 s before failing I/O).
    host.run("sed -i -e 's/^node.session.timeo.replacement_timeout = .*/"
             "node.session.timeo.replacement_timeout = 1800/' /etc/iscsi/iscsid.conf")
    host.run(["systemctl", "start", "iscsid.service"], timeout=60)
    host.run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal], timeout=timeout)
    if chap is not None:
        set_node_auth(host, portal, iqn, chap)
    host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login"], timeout=timeout)
    link = device_link(portal, iqn)
    host.run(f"udevadm settle; for i in $(seq 1 100); do [ -e '{link}' ] && exit 0; sleep 0.2; done; "
             f"echo 'no {link} after login' >&2; exit 1", timeout=timeout)
    return host.run(["readlink", "-f", link]).text.strip()


def device_link(portal: str, iqn: str) -> str:
    return f"/dev/disk/by-path/ip-{portal}:{ISCSI_PORT}-iscsi-{iqn}-lun-0"


def set_node_auth(host: Machine, portal: str, iqn: str, chap: Chap) -> None:
    """open-iscsi's node record for iqn at portal: CHAP with chap's credentials (and the
    target's, for mutual CHAP)."""
    settings = {"node.session.auth.authmethod": "CHAP",
                "node.session.auth.username": chap.userid,
                "node.session.auth.password": chap.password}
    if chap.mutual_userid:
        settings |= {"node.session.auth.username_in": chap.mutual_userid,
                     "node.session.auth.password_in": chap.mutual_password or ""}
    for name, value in settings.items():
        host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-o", "update",
                  "-n", name, "-v", value], timeout=30)


def host_logout(host: Machine, portal: str, iqn: str, *, timeout: float = 60.0) -> None:
    host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--logout"], timeout=timeout)


# --------------------------------------------------------------------------- this machine


def libiscsi_url(port: int, iqn: str, lun: int = 0, *, user: str | None = None,
                 password: str | None = None) -> str:
    creds = f"{user}%{password}@" if user is not None else ""
    return f"iscsi://{creds}127.0.0.1:{port}/{iqn}/{lun}"


LAB_RUNNER_INITIATOR = f"{IQN_PREFIX}:host.lab-runner"


def libiscsi(tool: str, *args: str, timeout: float = 60.0, initiator: str = LAB_RUNNER_INITIATOR) -> str:
    """Run a libiscsi tool (libiscsi-bin) on this machine; raises with its output on failure."""
    argv = [tool, "-i", initiator, *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise MachineError(f"{tool} did not finish within {timeout:.0f} s: {' '.join(argv)}") from err
    if proc.returncode != 0:
        raise MachineError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def libiscsi_refused(port: int, iqn: str, *, initiator: str = LAB_RUNNER_INITIATOR,
                     user: str | None = None, password: str | None = None) -> str:
    """Try INQUIRY through libiscsi as initiator (with user/password for CHAP, or none);
    returns libiscsi's refusal, raises if the target let it in."""
    try:
        out = libiscsi("iscsi-inq", libiscsi_url(port, iqn, user=user, password=password),
                       timeout=30, initiator=initiator)
    except MachineError as err:
        return str(err)
    raise MachineError(f"{initiator} (user {user!r}) was let in to {iqn} on 127.0.0.1:{port}:\n{out}")


def wait_portal(port: int, iqn: str, timeout: float = 60.0, *, initiator: str = LAB_RUNNER_INITIATOR,
                user: str | None = None, password: str | None = None) -> str:
    """Wait until the target answers INQUIRY through the forwarded port (after a boot)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            return libiscsi("iscsi-inq", libiscsi_url(port, iqn, user=user, password=password),
                            timeout=15, initiator=initiator)
        except MachineError as err:
            last = str(err)
            time.sleep(1)
    raise MachineError(f"target {iqn} not reachable on 127.0.0.1:{port} within {timeout:.0f} s: {last}")


HOST_ROLE_CMDLINE = " ".join(
    f"systemd.mask={unit}" for unit in (
        "appliance-handler.service", "rtslib-fb-targetctl.service", "appliance-restore.service",
        "appliance-receiver.service"))


def host_spec(name: str, private_address: str, **kw) -> MachineSpec:
    """A host (iSCSI initiator) VM: the same image, writable root (an overlay), without the
    appliance's services."""
    return MachineSpec(name, private_address=private_address, writable_root=True,
                       extra_cmdline=HOST_ROLE_CMDLINE, **kw)
