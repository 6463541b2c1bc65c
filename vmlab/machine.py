"""One qemu virtual machine of the lab: disks, network, console log, agent, lifecycle."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmlab.agentclient import AgentClient, AgentError, AgentTimeout, CommandResult
from vmlab.image import ImageInfo

AGENT_PORT_NAME = "org.drappliance.lab"
BOOT_TIMEOUT = 600.0  # generous: TCG on a 2-core machine shared with other jobs
STOP_TIMEOUT = 20.0
PR_SET_PDEATHSIG = 1


class MachineError(RuntimeError):
    """A VM failed to start, boot or stop; the message quotes its console."""


@dataclass
class MachineSpec:
    """What to boot. ``forwards`` maps guest TCP ports to host loopback ports (0: pick one)."""

    name: str
    memory_mib: int = 1024
    cpus: int = 1
    private_address: str | None = None          # e.g. "192.168.77.11/24" on eth1
    forwards: dict[int, int] = field(default_factory=dict)
    writable_root: bool = False                 # hosts: rw root (still an overlay)
    state_disk_gib: int = 8
    extra_cmdline: str = ""


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the qemu child before exec: the kernel kills it when the lab process dies, even
    by SIGKILL, so no VM outlives the test run or demo that started it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def kvm_usable() -> bool:
    """KVM needs /dev/kvm and hardware virtualisation (vmx/svm) visible in this CPU."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def accel_args() -> list[str]:
    if kvm_usable():
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


class Machine:
    """A running VM. Use as a context manager (or call stop()) so qemu never outlives us."""

    def __init__(self, spec: MachineSpec, image: ImageInfo, workdir: Path,
                 network_args: list[str]) -> None:
        self.spec = spec
        self.image = image
        self.dir = workdir / spec.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.dir / "console.log"
        self.console_sock = self.dir / "console.sock"
        self.agent_sock = self.dir / "agent.sock"
        self.qmp_sock = self.dir / "qmp.sock"
        self.ports = {guest: (host or free_tcp_port()) for guest, host in spec.forwards.items()}
        self._network_args = network_args
        self.proc: subprocess.Popen | None = None
        self.agent: AgentClient | None = None
        self.boot_seconds: float | None = None
        self.boot_id: str | None = None

    # ------------------------------------------------------------------ disks and argv

    def _make_disks(self) -> None:
        root = self.dir / "root.qcow2"
        if not root.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            str(self.image.qcow2), str(root)], check=True)
        state = self.dir / "state.qcow2"
        if not state.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(state),
                            f"{self.spec.state_disk_gib}G"], check=True)

    def cmdline(self) -> str:
        parts = ["root=LABEL=appliance-root", "rw" if self.spec.writable_root else "ro",
                 "console=ttyS0,115200", "net.ifnames=0", "panic=-1",
                 f"systemd.hostname={self.spec.name}"]
        if self.spec.private_address:
            parts.append(f"appliance.net=eth1:{self.spec.private_address}")
        if self.spec.extra_cmdline:
            parts.append(self.spec.extra_cmdline)
        return " ".join(parts)

    def argv(self) -> list[str]:
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items())
        return [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "q35", *accel_args(), "-smp", str(self.spec.cpus),
            "-m", str(self.spec.memory_mib), "-name", self.spec.name,
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.cmdline(),
            "-drive", f"file={self.dir / 'root.qcow2'},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={self.dir / 'state.qcow2'},if=none,id=state,format=qcow2,cache=writeback",
            "-device", "virtio-blk-pci,drive=state,serial=appliance-state",
            # restrict=on: the guest reaches nothing outside (no NAT to the host network or the
            # internet); only the explicit host-loopback port forwards come in.
            "-netdev", f"user,id=mgmt,net=10.0.2.0/24,restrict=on{fwd}",
            "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:01",
            *self._network_args,
            "-chardev", f"socket,id=con,path={self.console_sock},server=on,wait=off,"
                        f"logfile={self.console_log},logappend=on",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=agent,path={self.agent_sock},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
            "-qmp", f"unix:{self.qmp_sock},server=on,wait=off",
            "-device", "virtio-rng-pci",
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._make_disks()
        for sock in (self.console_sock, self.agent_sock, self.qmp_sock):
            sock.unlink(missing_ok=True)
        with open(self.dir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self._started_at = time.monotonic()
        deadline = time.monotonic() + 15
        while not self.agent_sock.exists():
            if self.proc.poll() is not None:
                raise MachineError(f"{self.name}: qemu exited with {self.proc.returncode}: "
                                   f"{(self.dir / 'qemu.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name}: qemu did not create its sockets within 15 s")
            time.sleep(0.05)
        self.agent = AgentClient(self.agent_sock, self.name)

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait for the agent, then for systemd to finish starting units. Returns seconds
        since start (or since the reboot began)."""
        deadline = time.monotonic() + timeout
        try:
            info = self.connect_agent().wait_ready(timeout, on_wait=self._check_alive)
            self.boot_id = info["boot_id"]
            remaining = max(5.0, deadline - time.monotonic())
            self.run(["systemctl", "is-system-running", "--wait"], timeout=remaining, check=False)
        except AgentError as err:
            raise MachineError(f"{err}\n--- console of {self.name} (last lines) ---\n"
                               f"{self.console_tail()}") from err
        self.boot_seconds = time.monotonic() - self._started_at
        return self.boot_seconds

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise MachineError(f"{self.name}: qemu exited with {self.proc.returncode} during boot\n"
                               f"{self.console_tail()}")

    def reboot(self, *, hard: bool = False, timeout: float = BOOT_TIMEOUT) -> float:
        """Reboot (``systemctl reboot``, or a hard reset like a power cycle) and wait until
        it is back with a new boot id."""
        old = self.boot_id
        self._started_at = time.monotonic()
        if hard:
            self.qmp("system_reset")
        else:
            # the agent may be stopped before it answers; the new boot id tells
            with contextlib.suppress(AgentError):
                self.run("systemctl reboot", timeout=10, check=False)

        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name}: did not come back from reboot within {timeout:.0f} s\n"
                                   f"{self.console_tail()}")
            try:
                if self.connect_agent().ping(timeout=2)["boot_id"] != old:
                    break
            except AgentTimeout:
                self._check_alive()
            time.sleep(0.5)
        return self.wait_booted(max(10.0, deadline - time.monotonic()))

    def qmp(self, command: str, **arguments) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_sock))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for msg in ({"execute": "qmp_capabilities"},
                        {"execute": command, **({"arguments": arguments} if arguments else {})}):
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            if "error" in reply:
                raise MachineError(f"{self.name}: QMP {command}: {reply['error']}")
            return reply["return"]

    @property
    def private_netdev(self) -> str | None:
        """qemu's id of the NIC on the lab's private network (None: the machine has none)."""
        for flag, value in zip(self._network_args, self._network_args[1:], strict=False):
            if flag == "-netdev":
                return value.split(",id=", 1)[1].split(",", 1)[0]
        return None

    def set_private_link(self, up: bool) -> None:
        """Cut (or restore) this machine's private-network cable, as qemu's ``set_link``: the
        guest sees its NIC lose carrier and no frame passes either way. The management NIC
        (the agent's port forwards) is not touched."""
        netdev = self.private_netdev
        if netdev is None:
            raise MachineError(f"{self.name}: no NIC on the private network")
        self.qmp("set_link", name=netdev, up=up)

    def stop(self) -> None:
        """Power off now (this is a lab: nothing to save). Always leaves no qemu behind."""
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.qmp("quit")
            self.proc.wait(timeout=STOP_TIMEOUT)
        except (OSError, MachineError, ValueError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, argv: list[str] | str, *, timeout: float = 60.0, check: bool = True,
            stdin: bytes = b"") -> CommandResult:
        return self.connect_agent().run(argv, timeout=timeout, check=check, stdin=stdin)

    def connect_agent(self) -> AgentClient:
        """The agent connection (qemu serves one client at a time: see release_agent)."""
        if self.proc is None or self.proc.poll() is not None:
            raise MachineError(f"{self.name}: not running")
        if self.agent is None:
            self.agent = AgentClient(self.agent_sock, self.name)
        return self.agent

    def release_agent(self) -> None:
        """Let another client (``python -m vmlab.console DIR -- CMD``) use the agent."""
        if self.agent is not None:
            self.agent.close()
            self.agent = None

    def write_file(self, path: str, data: bytes, mode: str = "0644") -> None:
        self.run(["sh", "-c", f'cat > "$1" && chmod {mode} "$1"', "sh", path], stdin=data)

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def wait_console(self, needle: str, timeout: float) -> str:
        """Wait until the console log contains needle; returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.console_text()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name}: {needle!r} did not appear on the console within "
                                   f"{timeout:.0f} s\n{self.console_tail()}")
            self._check_alive()
            time.sleep(0.2)
