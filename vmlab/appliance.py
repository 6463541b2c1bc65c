"""Driving VMs of the lab in their roles: an appliance (targetcli) and a host (open-iscsi),
plus the libiscsi tools on this machine through a forwarded port."""

from __future__ import annotations

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


# targetcli's own shell (Debian's /usr/bin/targetcli: its TargetCLI shell and UIRoot) running
# several command lines in one process, exactly as `targetcli <line>` runs one: starting
# Python and targetcli costs seconds under software emulation, once per line otherwise.
TARGETCLI_BATCH = """
import os, runpy, sys
cli = runpy.run_path("/usr/bin/targetcli", run_name="targetcli_batch")
shell = cli["TargetCLI"](os.getenv("TARGETCLI_HOME", "~/.targetcli"))
root = cli["UIRoot"](shell, as_root=True)
root.refresh()
for line in sys.argv[1:]:
    print("/> " + line, flush=True)
    try:
        shell.run_cmdline(line)
    except Exception as err:
        print("targetcli: %s: %s" % (line, err), file=sys.stderr)
        sys.exit(1)
"""


def targetcli_batch(machine: Machine, lines: list[str], *, timeout: float = 180.0) -> CommandResult:
    """Run targetcli command lines in order in one targetcli process; stops at the first
    refused line (exit 1, its message on stderr)."""
    result = machine.run(["python3", "-c", TARGETCLI_BATCH, *lines], timeout=timeout, check=False)
    if result.rc != 0 or result.timed_out:
        raise MachineError(f"{machine.name}: targetcli refused: {result.describe()}")
    return result


def create_lun(machine: Machine, spec: LunSpec, *, save: bool = True) -> str:
    """Create backstore, target, LUN and open ACLs through targetcli; returns the IQN."""
    iqn = target_iqn(machine.name, spec.name)
    if spec.backstore == "fileio":
        create = (f"/backstores/fileio create name={spec.name} "
                  f"file_or_dev={STATE_DIR}/volumes/{spec.name}.img size={spec.size}")
    else:
        create = (f"/backstores/{spec.backstore} create name={spec.name} size={spec.size} "
                  f"cfgstring={spec.cfgstring()}")
    lines = [
        create,
        f"/iscsi create {iqn}",
        f"/iscsi/{iqn}/tpg1/luns create /backstores/{spec.backstore}/{spec.name}",
        f"/iscsi/{iqn}/tpg1 set attribute authentication=0 demo_mode_write_protect=0 "
        "generate_node_acls=1 cache_dynamic_acls=1",
    ]
    if save:
        lines.append("saveconfig")
    targetcli_batch(machine, lines)
    return iqn


# --------------------------------------------------------------------------- host VM


def host_login(host: Machine, portal: str, iqn: str, *, timeout: float = 60.0) -> str:
    """Log the host VM's open-iscsi in to iqn at portal; returns the disk's device path."""
    initiator = f"{IQN_PREFIX}:host.{host.name}"
    host.write_file("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={initiator}\n".encode())
    # Recover quickly when an appliance reboots (defaults wait 120 s before failing I/O).
    host.run("sed -i -e 's/^node.session.timeo.replacement_timeout = .*/"
             "node.session.timeo.replacement_timeout = 1800/' /etc/iscsi/iscsid.conf")
    host.run(["systemctl", "start", "iscsid.service"], timeout=60)
    host.run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal], timeout=timeout)
    host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "--login"], timeout=timeout)
    link = f"/dev/disk/by-path/ip-{portal}:{ISCSI_PORT}-iscsi-{iqn}-lun-0"
    host.run(f"udevadm settle; for i in $(seq 1 100); do [ -e '{link}' ] && exit 0; sleep 0.2; done; "
             f"echo 'no {link} after login' >&2; exit 1", timeout=timeout)
    return host.run(["readlink", "-f", link]).text.strip()


# --------------------------------------------------------------------------- this machine


def libiscsi_url(port: int, iqn: str, lun: int = 0) -> str:
    return f"iscsi://127.0.0.1:{port}/{iqn}/{lun}"


def libiscsi(tool: str, *args: str, timeout: float = 60.0) -> str:
    """Run a libiscsi tool (libiscsi-bin) on this machine; raises with its output on failure."""
    argv = [tool, "-i", f"{IQN_PREFIX}:host.lab-runner", *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise MachineError(f"{tool} did not finish within {timeout:.0f} s: {' '.join(argv)}") from err
    if proc.returncode != 0:
        raise MachineError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_portal(port: int, iqn: str, timeout: float = 60.0) -> str:
    """Wait until the target answers INQUIRY through the forwarded port (after a boot)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            return libiscsi("iscsi-inq", libiscsi_url(port, iqn), timeout=15)
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
