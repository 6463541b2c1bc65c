"""The demo: a primary and a DR appliance replicating a disk, configured only through
targetcli, and an application host writing files to it over iSCSI with CHAP.

    python -m vmlab.demo            boots the three VMs, sets everything up, prints how to use
                                    it, waits for Ctrl-C
    python -m vmlab.demo --check    the same, then verifies end to end and powers off: the DR
                                    copy equals the primary byte for byte once converged, and
                                    the DR copy, promoted, mounts on the host with every file
                                    intact (exit 1 with the reason otherwise)
    python -m vmlab.demo --check --failback
                                    then also: the host writes more on the promoted copy and
                                    the old primary fails back as its DR, copying back only
                                    what changed (about 2 minutes more at 1G, most of it the
                                    two SHA-256 passes that prove the mirrors equal)

Every step an admin takes is a targetcli command (printed as it runs): ``/replication info``
on both appliances for their certificate fingerprints, ``/replication/peers create`` on both
(TLS, each pins the other's certificate), ``/replication/monitoring set exporter address=``
on both (metrics and alerts on the management address, forwarded to this machine), the
``user:mirror`` backstore, target, LUN and an ACL
with mutual CHAP for the host's initiator (no demo mode: authentication on, no generated ACLs),
``/replication/volumes create backstore= peer=``, and ``saveconfig`` on both.

Builds the appliance image first if its inputs changed (cached; see image/README.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmlab import appliance as ap
from vmlab import monitoring, replication
from vmlab.image import ImageError, ensure_image
from vmlab.lab import Lab
from vmlab.machine import Machine, MachineError, MachineSpec

PRIMARY_ADDR = "192.168.77.11"
DR_ADDR = "192.168.77.12"
HOST_ADDR = "192.168.77.50"
MNT = "/mnt/data"
MANIFEST = "/root/files.sha256"
CONVERGE_TIMEOUT_S = 300.0


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


@dataclass
class Chain:
    """The demo's three VMs and what was set up on them."""

    primary: Machine
    dr: Machine
    host: Machine
    lun: ap.LunSpec
    iqn: str
    chap: ap.Chap
    device: str
    volume_uuid: str
    files_written: int = 0
    promoted: str = ""      # what 'promote' printed on the DR (after a failover)

    @property
    def size(self) -> int:
        return replication.size_bytes(self.lun.size)

    @property
    def primary_mirror(self) -> str:
        return f"{ap.STATE_DIR}/volumes/{self.lun.name}.img"

    @property
    def dr_mirror(self) -> str:
        return f"{ap.STATE_DIR}/replicas/{self.volume_uuid}/mirror"


def boot(lab: Lab, port: int) -> tuple[Machine, Machine, Machine]:
    say("booting the primary, the DR appliance and the application host (software "
        "emulation: a few minutes)")
    primary, dr, host = lab.boot(
        MachineSpec("primary", private_address=f"{PRIMARY_ADDR}/24",
                    forwards={ap.ISCSI_PORT: port, monitoring.EXPORTER_PORT: 0}),
        MachineSpec("dr", private_address=f"{DR_ADDR}/24",
                    forwards={ap.ISCSI_PORT: 0, monitoring.EXPORTER_PORT: 0}),
        ap.host_spec("host", f"{HOST_ADDR}/24", memory_mib=768),
    )
    return primary, dr, host


def shell(machine: Machine, lines: list[str], log: Callable[[str], None] = say) -> list[ap.LineResult]:
    """Run targetcli lines on an appliance, printing each as an admin would see it."""
    results = ap.targetcli_batch(machine, lines)
    for r in results:
        log(f"{machine.name}: targetcli {r.describe()}")
    return results


def write_files(host: Machine, round_name: str, count: int, *, max_kib: int = 2048) -> None:
    """count files of random content and sizes under MNT/<round_name>, synced, and their
    SHA-256 added to the host's manifest."""
    host.run(f"set -e; mkdir -p {MNT}/{round_name}; cd {MNT}; "
             f"for i in $(seq 1 {count}); do "
             f"  n=$(( ($(od -An -N2 -tu2 /dev/urandom) % {max_kib}) + 1 )); "
             f"  head -c $((n * 1024)) /dev/urandom > {round_name}/file$i.bin; done; "
             f"sync; sha256sum {round_name}/*.bin >> {MANIFEST}; sync", timeout=300)


def build_chain(lab: Lab, *, size: str = "1G", journal_size: str = "128M", port: int = 0,
                files: int = 24, log: Callable[[str], None] = say) -> Chain:
    """Boot the three VMs and set up the replicated disk through targetcli only; the host
    logs in with CHAP, makes ext4 and writes files."""
    t0 = time.monotonic()
    primary, dr, host = boot(lab, port)
    log(f"three VMs up in {time.monotonic() - t0:.0f} s")

    log("pairing the appliances (TLS: each pins the other's certificate fingerprint)")
    replication.pair(primary, PRIMARY_ADDR, dr, DR_ADDR, say=log)
    log("metrics and alerts on each appliance's management address")
    for machine in (primary, dr):
        shell(machine, [monitoring.set_management_address_line()], log)

    lun = ap.LunSpec("disk0", size=size, journal_size=journal_size)
    chap = ap.lab_chap(host.name)
    iqn = ap.target_iqn(primary.name, lun.name)
    log(f"creating the {lun.size} user:mirror disk, its iSCSI target and the host's CHAP ACL")
    shell(primary, [ap.backstore_line(lun), *ap.target_lines(iqn, lun, chap)], log)
    log("replicating it to the DR appliance")
    shell(primary, [f"/replication/volumes create backstore={lun.name} peer=dr"], log)
    for machine in (primary, dr):
        shell(machine, ["saveconfig"], log)
    volume_uuid = str(replication.ReplicatedVolume(lun, "primary", "dr", DR_ADDR).uuid)

    log("the host logs in with (mutual) CHAP, makes ext4 and writes files")
    device = ap.host_login(host, PRIMARY_ADDR, iqn, chap=chap)
    host.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device],
             timeout=600)
    host.run(f"mkdir -p {MNT} && mount {device} {MNT} && : > {MANIFEST}")
    chain = Chain(primary, dr, host, lun, iqn, chap, device, volume_uuid)
    write_files(host, "round1", files)
    chain.files_written += files
    log(f"host wrote {files} files to {MNT} on {device} ({time.monotonic() - t0:.0f} s so far)")
    print_status(chain, log)
    return chain


def print_status(chain: Chain, log: Callable[[str], None] = say) -> None:
    for machine in (chain.primary, chain.dr):
        log(f"{machine.name}: targetcli /replication status\n{replication.shell_status(machine)}")


@dataclass(frozen=True)
class Converged:
    seconds: float          # from the host's unmount to the DR equal byte for byte
    primary_status: str     # `targetcli /replication status` on each side at that moment
    dr_status: str


def converge(chain: Chain, log: Callable[[str], None] = say,
             timeout: float = CONVERGE_TIMEOUT_S, *, remount: bool = True) -> Converged:
    """The host unmounts (its writes are all on the primary), then the DR must equal the
    primary byte for byte; both sides' status is taken then, before the host mounts again
    (its mount writes the superblock: the DR is briefly behind again)."""
    chain.host.run(f"umount {MNT}", timeout=120)
    try:
        took = replication.wait_converged(
            chain.primary, chain.dr, primary_mirror=chain.primary_mirror,
            dr_mirror=chain.dr_mirror, size=chain.size, volume=chain.lun.name,
            timeout=timeout, say=log)
        done = Converged(took, replication.shell_status(chain.primary),
                         replication.shell_status(chain.dr))
        log(f"converged: primary: targetcli /replication status\n{done.primary_status}")
        log(f"converged: dr: targetcli /replication status\n{done.dr_status}")
    finally:
        if remount:
            chain.host.run(f"mount {chain.device} {MNT}", timeout=120)
    return done


def replica_name(dr: Machine, volume: str, volume_uuid: str) -> str:
    """The replica's node under /replication/replicas on the DR (named after the primary's
    volume, or by uuid)."""
    listing = ap.targetcli(dr, "ls", "/replication/replicas").text
    for candidate in (volume, volume_uuid):
        if f"o- {candidate} " in listing:
            return candidate
    raise MachineError(f"{dr.name}: /replication/replicas shows neither {volume} nor "
                       f"{volume_uuid}:\n{listing}")


def failover(chain: Chain, log: Callable[[str], None] = say, *, mounted: bool = True) -> None:
    """Fail over to the DR through targetcli: promote the replica, serve it as a
    user:mirror backstore with a new journal on a target with the host's CHAP ACL; the host
    logs out of the primary, logs in to the DR and checks every file against its manifest."""
    dr, host = chain.dr, chain.host
    if mounted:
        host.run(f"umount {MNT}", timeout=120)
    ap.host_logout(host, PRIMARY_ADDR, chain.iqn)
    name = replica_name(dr, chain.lun.name, chain.volume_uuid)
    chain.promoted = shell(dr, [f"/replication/replicas/{name} promote"], log)[-1].stdout
    served = ap.LunSpec(chain.lun.name, size=chain.lun.size, journal_size=chain.lun.journal_size)
    cfg = (f"mirror={chain.dr_mirror};journal={ap.STATE_DIR}/journals/{served.name}-promoted.jnl;"
           f"journal_size={served.journal_size}")
    iqn = ap.target_iqn(dr.name, served.name)
    shell(dr, [f"/backstores/user:mirror create name={served.name} size={chain.size} cfgstring={cfg}",
               *ap.target_lines(iqn, served, chain.chap), "saveconfig"], log)
    device = ap.host_login(host, DR_ADDR, iqn, chap=chain.chap)
    host.run(f"mount -o ro {device} {MNT}", timeout=120)
    try:
        check = host.run(f"cd {MNT} && sha256sum --quiet -c {MANIFEST} && wc -l < {MANIFEST}",
                         timeout=300, check=False)
    finally:
        host.run(f"umount {MNT}", timeout=120, check=False)
    if check.rc != 0:
        raise MachineError(f"files differ on the promoted DR copy: {check.describe()}")
    log(f"promoted DR copy served as {iqn}, mounted by the host: all "
        f"{check.text.strip()} files intact")


# what 'promote' prints for the backstore it tells the admin to create (replica_nodes.py)
PROMOTED_UUID = re.compile(r"\(that volume's uuid: ([0-9a-f]{8}-[0-9a-f-]{27})\)")
FAILBACK_ROUND = "failback"
FAILBACK_FILES = 6


@dataclass(frozen=True)
class FailedBack:
    """What a failback did, as the admin and the daemons report it."""

    new_uuid: str           # the volume uuid of the DR's backstore (printed by 'promote')
    seconds: float          # from the DR's '/replication/volumes create' to equal mirrors
    host_bytes: int         # the bytes of the files the host wrote on the promoted copy
    transmitter: dict       # the DR transmitter's status: records_sent, bytes_sent, resync
    transmitter_text: str   # appliancectl status of that transmitter, as an admin reads it
    replica_status: str     # '/replication/replicas/<name> status' on the old primary
    failback: dict          # the old primary receiver's 'failback' of the replica

    @property
    def resync(self) -> dict:
        return self.transmitter.get("resync") or {}

    @property
    def copied_bytes(self) -> int:
        """What went back over the link: journal records' payload and resynced chunks."""
        return (self.transmitter.get("bytes_sent") or 0) + (self.resync.get("done_bytes") or 0)


def failback(chain: Chain, log: Callable[[str], None] = say,
             timeout: float = CONVERGE_TIMEOUT_S) -> FailedBack:
    """After ``failover``: the DR serves the promoted copy as the new primary; the host writes
    more files on it; the old primary becomes its DR over its OLD mirror through targetcli
    (target, LUN and backstore deleted, then '/replication/volumes/<name> failback uuid='),
    the DR replicates back ('/replication/volumes create ... peer=<the primary>'), and only
    what changed is copied: the old primary's mirror ends equal to the DR's byte for byte
    without a full pass (docs/failover.md, "Failback copies only what changed")."""
    primary, dr, host = chain.primary, chain.dr, chain.host
    name = chain.lun.name
    found = PROMOTED_UUID.search(chain.promoted)
    if not found:
        raise MachineError(f"'promote' did not print the new volume's uuid (run failover "
                           f"first):\n{chain.promoted}")
    new_uuid = found.group(1)
    dr_iqn = ap.target_iqn(dr.name, name)

    # the host writes on the new primary (the DR), then unmounts: its writes are all there
    device = host.run(["readlink", "-f", ap.device_link(DR_ADDR, dr_iqn)]).text.strip()
    host.run(f"mount {device} {MNT}", timeout=120)
    try:
        write_files(host, FAILBACK_ROUND, FAILBACK_FILES, max_kib=1024)
        host_bytes = int(host.run(f"cat {MNT}/{FAILBACK_ROUND}/*.bin | wc -c").text)
    finally:
        host.run(f"umount {MNT}", timeout=120)
    chain.files_written += FAILBACK_FILES
    log(f"host wrote {FAILBACK_FILES} files ({host_bytes} bytes) on the promoted copy "
        f"({dr_iqn}, {device})")

    log("the old primary becomes the DR of the promoted copy, over its old mirror")
    shell(primary, [f"/iscsi delete {chain.iqn}", f"/backstores/user:mirror delete {name}",
                    f"/replication/volumes/{name} failback uuid={new_uuid}", "saveconfig"], log)
    t0 = time.monotonic()
    log("the DR replicates its volume back to the old primary")
    shell(dr, [f"/replication/volumes create backstore={name} peer={primary.name}",
               "saveconfig"], log)

    def replica() -> dict:
        return replication.replica_of(primary, new_uuid) or {}

    def copied() -> dict | None:
        r = replica()
        fb = r.get("failback") or {}
        return fb if r.get("state") == "consistent" and r.get("in_sync") \
            and fb.get("state") == "done" else None

    tx_sock = replication.transmitter_sock(name)
    fb = replication.wait_for(
        f"{primary.name}'s replica of {new_uuid} consistent with its failback done", copied,
        timeout, detail=lambda: f"replica: {replica()}\n{primary.name}: "
        f"{replication.shell_status(primary)}\n{dr.name}: {replication.status(dr, tx_sock)}\n"
        f"{replication.unit_logs(primary, ['appliance-receiver'])}\n"
        f"{replication.unit_logs(dr, [f'appliance-transmitter@{name}'])}")
    # the old mirror equals the new primary's byte for byte (the roles are swapped now)
    replication.wait_converged(dr, primary, primary_mirror=chain.dr_mirror,
                               dr_mirror=chain.primary_mirror, size=chain.size, volume=name,
                               timeout=max(30.0, timeout - (time.monotonic() - t0)), say=log)
    took = time.monotonic() - t0

    rname = replica_name(primary, name, new_uuid)
    status_text = shell(primary, [f"/replication/replicas/{rname} status"], log)[-1].stdout
    tx_text = replication.status(dr, tx_sock)
    log(f"{dr.name}: appliancectl --socket {tx_sock} status\n{tx_text}")
    tx = replication.daemon_status(dr, tx_sock) or {}
    done = FailedBack(new_uuid, took, host_bytes, tx, tx_text, status_text, fb)
    resync = done.resync
    log(f"failback of the {chain.size}-byte volume: the DR sent {tx.get('records_sent')} "
        f"journal records ({tx.get('bytes_sent')} bytes of payload; the host wrote "
        f"{host_bytes} bytes of files) and marked {resync.get('failback_marked_bytes')} "
        f"bytes for the old primary's own extents ({fb.get('extents')} extents, "
        f"{fb.get('records')} records there since the promotion); resync total "
        f"{resync.get('total_bytes')} bytes, done {resync.get('done_bytes')}, skipped "
        f"{resync.get('skipped_bytes')}; {done.copied_bytes} bytes copied back in all; equal "
        f"mirrors {took:.0f} s after '/replication/volumes create'")
    problems = []
    if "failback: copied: " not in status_text:
        problems.append(f"the replica's status does not say 'failback: copied':\n{status_text}")
    for key in ("failback_marked_bytes", "total_bytes"):
        if not isinstance(resync.get(key), int) or resync[key] > chain.size // 10:
            problems.append(f"the DR's resync {key} is {resync.get(key)}, not far below the "
                            f"{chain.size}-byte volume: {resync}")
    if (tx.get("bytes_sent") or 0) < host_bytes:
        problems.append(f"the DR sent {tx.get('bytes_sent')} bytes of journal records, less "
                        f"than the {host_bytes} bytes of the host's files: {tx}")
    if done.copied_bytes > chain.size // 8:
        problems.append(f"{done.copied_bytes} bytes copied back: not far below the "
                        f"{chain.size}-byte volume")
    if problems:
        raise MachineError("failback: " + "\n".join(problems))
    return done


def instructions(chain: Chain, lab: Lab) -> str:
    primary, dr, host = chain.primary, chain.dr, chain.host
    py = sys.executable
    name = chain.lun.name
    port = primary.ports[ap.ISCSI_PORT]
    return f"""
================================================================================
 DR appliance demo: primary ({PRIMARY_ADDR}) -> DR ({DR_ADDR}), host ({HOST_ADDR})
================================================================================
 Replicated disk: {chain.lun.size} user:mirror backstore '{name}' on the primary, iSCSI target
 {chain.iqn} (forwarded to 127.0.0.1:{port}), open only to the host's initiator
 {chain.chap.initiator} with mutual CHAP; the host has it mounted on {MNT}.

 targetcli on each appliance (serial console, root shell; Ctrl-] leaves):
   {py} -m vmlab.console {primary.dir}      then: targetcli
   {py} -m vmlab.console {dr.dir}           then: targetcli
 or one command at a time:
   {py} -m vmlab.console {primary.dir} -- targetcli /replication status
   {py} -m vmlab.console {dr.dir} -- targetcli /replication status
   {py} -m vmlab.console {primary.dir} -- targetcli /replication/volumes/{name} pause
   {py} -m vmlab.console {primary.dir} -- targetcli /replication/volumes/{name} resume
   {py} -m vmlab.console {primary.dir} -- targetcli /replication/monitoring status

 Metrics (Prometheus text; each exporter listens on its appliance's management address
 {monitoring.MGMT_ADDR}:{monitoring.EXPORTER_PORT}, forwarded here):
   curl -s {monitoring.metrics_url(primary)}
   curl -s {monitoring.metrics_url(dr)}

 Write more on the host, then watch the DR catch up:
   {py} -m vmlab.console {host.dir} -- sh -c 'head -c 50M /dev/urandom > {MNT}/more.bin; sync'

 From this machine, libiscsi needs the host's initiator name and CHAP secret:
   iscsi-inq -i {chain.chap.initiator} \\
     iscsi://{chain.chap.userid}%{chain.chap.password}@127.0.0.1:{port}/{chain.iqn}/0
 (without them the target refuses the login)

 Console logs: {primary.console_log}
               {dr.console_log}
               {host.console_log}
================================================================================
"""


def check(chain: Chain, log: Callable[[str], None] = say) -> None:
    """--check: the DR converges byte for byte, the target refuses an initiator without the
    credentials, and the promoted DR copy mounts with every file intact."""
    port = chain.primary.ports[ap.ISCSI_PORT]
    refusal = ap.libiscsi_refused(port, chain.iqn, initiator=chain.chap.initiator)
    log(f"an initiator without the CHAP secret is refused: {refusal.strip().splitlines()[-1]}")
    converge(chain, log, remount=False)
    failover(chain, log, mounted=False)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    say("building the appliance image if its inputs changed (first time: about 3 minutes)")
    image = ensure_image()
    say(f"image {image.manifest['key']} ready ({time.monotonic() - t0:.0f} s)")
    workdir = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = pick_port(args.port) if args.port else 0
    with Lab(image, workdir=workdir, logs_dir=workdir / "logs", say=say) as lab:
        chain = build_chain(lab, size=args.size, journal_size=args.journal_size, port=port)
        print(instructions(chain, lab), flush=True)
        if args.check:
            try:
                check(chain)
                if args.failback:
                    failback(chain)
            except MachineError as err:
                say(f"PROBLEM: {err}")
                return 1
            say(f"check passed in {time.monotonic() - t0:.0f} s")
            return 0
        for machine in (chain.primary, chain.dr, chain.host):
            machine.release_agent()  # so `python -m vmlab.console DIR -- CMD` can use it
        say("VMs are running; press Ctrl-C to power them off")
        try:
            while True:
                time.sleep(5)
                for machine in (chain.primary, chain.dr, chain.host):
                    if machine.proc.poll() is not None:
                        say(f"{machine.name} stopped (qemu exit {machine.proc.returncode})")
                        return 1
        except KeyboardInterrupt:
            say("powering off")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmlab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="verify end to end, power off, exit")
    parser.add_argument("--failback", action="store_true",
                        help="with --check: then fail back to the old primary, copying back only "
                             "what changed (about 2 minutes more at 1G)")
    parser.add_argument("--size", default="1G", help="size of the replicated disk (default 1G)")
    parser.add_argument("--journal-size", default="128M", help="its journal (default 128M)")
    parser.add_argument("--port", type=int, default=3260,
                        help="host loopback port for the primary's iSCSI portal (if free; 0: any)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dr-appliance-demo"),
                        help="VM disks, sockets and logs (recreated on each run)")
    args = parser.parse_args(argv)
    if args.failback and not args.check:
        parser.error("--failback runs after --check's failover: give both")
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
