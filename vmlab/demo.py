"""The demo: a primary and a DR appliance with a replicated user:mirror disk.

    python -m vmlab.demo            boots both, creates the disk, prints how to use it, waits for Ctrl-C
    python -m vmlab.demo --check    the same, verifies, prints, powers off (used by the VM tests)

Builds the appliance image first if its inputs changed (cached; see image/README.md).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from vmlab import appliance as ap
from vmlab import replication
from vmlab.image import ImageError, ensure_image
from vmlab.lab import Lab
from vmlab.machine import MachineError, MachineSpec

PRIMARY_ADDR = "192.168.77.11"
DR_ADDR = "192.168.77.12"


def pick_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def instructions(lab: Lab, iqn: str, volume: replication.ReplicatedVolume) -> str:
    primary, dr = lab.machines["primary"], lab.machines["dr"]
    port = primary.ports[ap.ISCSI_PORT]
    url = ap.libiscsi_url(port, iqn)
    py = sys.executable
    name = volume.lun.name
    return f"""
================================================================================
 DR appliance demo: primary ({PRIMARY_ADDR}) and DR ({DR_ADDR}) on a private network
================================================================================
 Replicated disk: {volume.lun.size} user:mirror backstore '{name}' on the primary,
 iSCSI target {iqn}, forwarded to 127.0.0.1:{port} on this machine.

 Attach from this machine with libiscsi (package libiscsi-bin):
   iscsi-inq {url}
   iscsi-readcapacity16 {url}
   iscsi-ls -s iscsi://127.0.0.1:{port}

 Attach with open-iscsi (package open-iscsi; the target advertises its VM-internal
 address, so add the node by hand instead of using discovery):
   iscsiadm -m node -o new -T {iqn} -p 127.0.0.1:{port}
   iscsiadm -m node -T {iqn} -p 127.0.0.1:{port} --login
   lsblk    # a new {volume.lun.size} disk, vendor LIO-ORG, model {name}

 targetcli on each appliance (serial console, root shell; Ctrl-] leaves):
   {py} -m vmlab.console {primary.dir}      then: targetcli
   {py} -m vmlab.console {dr.dir}           then: targetcli
 or one command at a time:
   {py} -m vmlab.console {primary.dir} -- targetcli ls

 Watch replication (the DR side shows "waiting" until the link is up):
   {py} -m vmlab.console {primary.dir} -- appliancectl --socket /run/appliance/transmitter-{name}.sock status
   {py} -m vmlab.console {dr.dir} -- appliancectl --socket /run/appliance/receiver.sock status
   {py} -m vmlab.console {primary.dir} -- journalctl -u appliance-transmitter@{name} -n 20
   {py} -m vmlab.console {dr.dir} -- journalctl -u appliance-receiver -n 20

 Console logs: {primary.console_log}
               {dr.console_log}
================================================================================
"""


def verify(lab: Lab, iqn: str, volume: replication.ReplicatedVolume) -> list[str]:
    """What works right now, checked for real; returns the problems found."""
    primary, dr = lab.machines["primary"], lab.machines["dr"]
    problems = []
    port = primary.ports[ap.ISCSI_PORT]
    ap.wait_portal(port, iqn, timeout=60)
    capacity = ap.libiscsi("iscsi-readcapacity16", ap.libiscsi_url(port, iqn))
    expected = replication.size_bytes(volume.lun.size)
    if f"Total size:{expected}" not in capacity:
        problems.append(f"the host sees the wrong size (expected {expected}):\n{capacity}")
    else:
        say(f"host view through libiscsi: {expected} bytes, as configured")
    listing = ap.targetcli(primary, "ls", "/backstores/user:mirror").text
    if volume.lun.name not in listing:
        problems.append(f"targetcli on the primary does not list {volume.lun.name}:\n{listing}")
    ap.targetcli(dr, "ls", "/")
    tx = replication.status(primary, f"/run/appliance/transmitter-{volume.lun.name}.sock")
    rx = replication.status(dr, "/run/appliance/receiver.sock")
    say(f"transmitter on the primary: {tx}")
    say(f"receiver on the DR appliance: {rx}")
    return problems


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    say("building the appliance image if its inputs changed (first time: about 3 minutes)")
    image = ensure_image()
    say(f"image {image.manifest['key']} ready ({time.monotonic() - t0:.0f} s)")
    workdir = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = pick_port(args.port)
    with Lab(image, workdir=workdir, logs_dir=workdir / "logs",
             say=lambda m: say(m)) as lab:
        say("booting primary and DR appliances (software emulation: about a minute or two)")
        primary, dr = lab.boot(
            MachineSpec("primary", private_address=f"{PRIMARY_ADDR}/24", forwards={ap.ISCSI_PORT: port}),
            MachineSpec("dr", private_address=f"{DR_ADDR}/24", forwards={ap.ISCSI_PORT: 0}),
        )
        lun = ap.LunSpec("disk0", size=args.size, journal_size=args.journal_size)
        say(f"creating the replicated disk through targetcli on the primary ({lun.size})")
        iqn = ap.create_lun(primary, lun)
        volume = replication.ReplicatedVolume(lun, primary="primary", dr="dr", dr_address=DR_ADDR)
        say("configuring replication primary -> DR")
        replication.configure(primary, dr, volume)
        problems = verify(lab, iqn, volume)
        print(instructions(lab, iqn, volume), flush=True)
        for problem in problems:
            say(f"PROBLEM: {problem}")
        if args.check:
            return 1 if problems else 0
        for machine in (primary, dr):
            machine.release_agent()  # so `python -m vmlab.console DIR -- CMD` can use it
        say("VMs are running; press Ctrl-C to power them off")
        try:
            while True:
                time.sleep(5)
                for machine in (primary, dr):
                    if machine.proc.poll() is not None:
                        say(f"{machine.name} stopped (qemu exit {machine.proc.returncode})")
                        return 1
        except KeyboardInterrupt:
            say("powering off")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmlab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify, print, power off, exit")
    parser.add_argument("--size", default="1G", help="size of the replicated disk (default 1G)")
    parser.add_argument("--journal-size", default="128M", help="its journal (default 128M)")
    parser.add_argument("--port", type=int, default=3260,
                        help="host loopback port for the primary's iSCSI portal (if free)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dr-appliance-demo"),
                        help="VM disks, sockets and logs (recreated on each run)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # unwind (and power off) like Ctrl-C
    try:
        return run(args)
    except (ImageError, MachineError) as err:
        say(f"FAILED: {err}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; VMs powered off")
        return 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
