"""A lab of several VMs on one private network; always cleans up its qemu processes."""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmlab.image import ImageInfo
from vmlab.machine import Machine, MachineSpec

PRIVATE_PREFIX = "192.168.77."


class PrivateNetwork:
    """An Ethernet segment between the lab's VMs: qemu's multicast socket backend bound to
    127.0.0.1 (TTL 1, loopback interface), so no frame ever leaves this machine. A random
    group/port per lab keeps two labs on one machine apart."""

    def __init__(self, rng: random.Random) -> None:
        self.group = f"239.255.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
        self.port = rng.randrange(20000, 60000)
        self._next = 0

    def nic_args(self, index: int) -> list[str]:
        netdev = f"priv{index}"
        return ["-netdev", f"socket,id={netdev},mcast={self.group}:{self.port},localaddr=127.0.0.1",
                "-device", f"virtio-net-pci,netdev={netdev},mac=52:54:00:77:00:{index:02x}"]


class Lab:
    """Boots machines; on exit stops all of them, and if the block failed (or keep_logs is
    set) copies their console logs to logs_dir.

    >>> with Lab(image, logs_dir=Path("vm-logs")) as lab:
    ...     primary = lab.boot(MachineSpec("primary", private_address="192.168.77.11/24"))
    """

    def __init__(self, image: ImageInfo, *, workdir: Path | None = None,
                 logs_dir: Path | None = None, say: Callable[[str], None] | None = None) -> None:
        self.image = image
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="vmlab-"))
        self.logs_dir = logs_dir
        self.machines: dict[str, Machine] = {}
        self.network = PrivateNetwork(random.Random())
        self.say = say or (lambda msg: print(f"[lab] {msg}", file=sys.stderr, flush=True))

    def start(self, spec: MachineSpec) -> Machine:
        index = len(self.machines) + 1
        machine = Machine(spec, self.image, self.workdir, self.network.nic_args(index))
        self.machines[spec.name] = machine
        machine.start()
        return machine

    def boot(self, *specs: MachineSpec, timeout: float = 600.0) -> list[Machine]:
        """Start all, then wait for all (they boot in parallel)."""
        started = [self.start(spec) for spec in specs]
        for machine in started:
            t = machine.wait_booted(timeout)
            self.say(f"{machine.name} up in {t:.1f} s")
        return started

    def collect_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for name, machine in self.machines.items():
            for log in ("console.log", "qemu.log"):
                src = machine.dir / log
                if src.exists():
                    shutil.copy2(src, dest / f"{name}-{log}")

    def stop(self) -> None:
        errors = []
        for machine in self.machines.values():
            try:
                machine.stop()
            except Exception as err:  # keep stopping the others; reported below
                errors.append(f"{machine.name}: {err}")
        if errors:
            raise RuntimeError("could not stop every VM: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and self.logs_dir is not None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                self.collect_logs(self.logs_dir / stamp)
                self.say(f"console logs saved in {self.logs_dir / stamp}")
            self.stop()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
