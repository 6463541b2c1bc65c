"""Wiring replication between two lab appliances.

Through targetcli (``pair``, ``create_volume``, ``saveconfig``: the demo and
tests/vm/test_shell_chain.py), as an admin does it; or, for the tests that drive the daemons
directly (the journal-overflow chain), by writing their TOML files on the state disk
(``configure``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from appliance.tcmu.cfgstring import SUBTYPE, parse_config
from appliance.volume.identity import mirror_volume_uuid
from vmlab import appliance as ap
from vmlab.appliance import STATE_DIR, LunSpec
from vmlab.machine import Machine, MachineError

REPLICATION_PORT = 7700
SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in SIZE_UNITS:
        return int(text[:-1]) * SIZE_UNITS[text[-1]]
    return int(text)


@dataclass(frozen=True)
class ReplicatedVolume:
    lun: LunSpec
    primary: str            # identity of the primary appliance
    dr: str                 # identity of the DR appliance
    dr_address: str         # DR appliance's address on the replication link

    @property
    def uuid(self) -> uuid.UUID:
        """The handler derives the volume uuid from its config string; so does the lab,
        with the handler's own code, before the handler has opened the volume."""
        return mirror_volume_uuid(parse_config(f"{SUBTYPE}/{self.lun.cfgstring()}").mirror)

    def receiver_toml(self) -> str:
        return (
            f'identity = "{self.dr}"\n'
            f'listen = "0.0.0.0:{REPLICATION_PORT}"\n'
            f'state_dir = "{STATE_DIR}/replicas"\n'
            'control_socket = "/run/appliance/receiver.sock"\n'
            "# lab network between two VMs on one machine; production uses a [tls] table\n"
            "insecure = true\n\n"
            "[[volume]]\n"
            f'uuid = "{self.uuid}"\n'
            f"size_bytes = {size_bytes(self.lun.size)}\nblock_size = 512\n"
            f"journal_size = {size_bytes(self.lun.journal_size)}\n"
            f'allowed_primaries = ["{self.primary}"]\n'
        )

    def transmitter_toml(self) -> str:
        return (
            f'identity = "{self.primary}"\n'
            f'peer = "{self.dr_address}:{REPLICATION_PORT}"\n'
            f'peer_identity = "{self.dr}"\n'
            f'journal = "{STATE_DIR}/journals/{self.lun.name}.jnl"\n'
            f'volume_uuid = "{self.uuid}"\n'
            f"size_bytes = {size_bytes(self.lun.size)}\nblock_size = 512\ngeneration = 1\n"
            f'control_socket = "/run/appliance/transmitter-{self.lun.name}.sock"\n'
            "insecure = true\n"
        )


def configure(primary: Machine, dr: Machine, volume: ReplicatedVolume) -> None:
    """Write both sides' configuration to their state disks and start the services
    (they restart by themselves until the other side and the journal exist)."""
    dr.write_file(f"{STATE_DIR}/replication/receiver.toml", volume.receiver_toml().encode(), "0600")
    # restart, not start: the boot's restore step already runs a receiver on every appliance
    # (from the shell's generated receiver.toml, no volumes), which must read this file
    dr.run(["systemctl", "restart", "appliance-receiver.service"], timeout=60, check=False)
    primary.write_file(f"{STATE_DIR}/replication/transmitter-{volume.lun.name}.toml",
                       volume.transmitter_toml().encode(), "0600")
    primary.run(["systemctl", "start", "appliance-restore.service"], timeout=60, check=False)
    primary.run(["systemctl", "restart", f"appliance-transmitter@{volume.lun.name}.service"],
                timeout=60, check=False)


def status(machine: Machine, socket: str) -> str:
    """The daemon's status as an admin reads it (appliancectl), or why there is none yet."""
    result = machine.run(["appliancectl", "--socket", socket, "status"], timeout=30, check=False)
    if result.rc == 0:
        return result.text.strip()
    return f"waiting ({(result.stderr or result.stdout).decode(errors='replace').strip()})"


# --------------------------------------------------------------------------- through targetcli
# Since issue 15 the appliance's targetcli configures replication: the functions below drive
# it exactly as an admin types the commands (the TOML writer above remains for the tests that
# configure the daemons directly).

RECEIVER_SOCK = "/run/appliance/receiver.sock"


def transmitter_sock(volume: str) -> str:
    return f"/run/appliance/transmitter-{volume}.sock"


@dataclass(frozen=True)
class SiteInfo:
    """What ``targetcli /replication info`` shows."""

    identity: str
    listen: str
    fingerprint: str
    text: str


def site_info(machine: Machine) -> SiteInfo:
    """``/replication info`` (makes the identity and certificate the first time)."""
    text = ap.targetcli(machine, "/replication", "info").text
    rows = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            rows[key.strip()] = value.strip()
    missing = [k for k in ("identity", "listen", "fingerprint") if not rows.get(k)]
    if missing or not rows["fingerprint"].startswith("SHA256:"):
        raise MachineError(f"{machine.name}: '/replication info' does not show "
                           f"{', '.join(missing) or 'a SHA256 fingerprint'}:\n{text}")
    return SiteInfo(rows["identity"], rows["listen"], rows["fingerprint"], text)


def pair(a: Machine, a_address: str, b: Machine, b_address: str, *, timeout: float = 120.0,
         say=lambda msg: None) -> tuple[SiteInfo, SiteInfo]:
    """Pair two appliances with each other through targetcli, as two admins do it: each
    reads its own fingerprint with ``/replication info`` and the other pins it with
    ``/replication/peers create name= address= fingerprint=`` (peers named after the
    machines). A side that could not fetch the other's certificate yet (its receiver was
    not up) fetches it with ``/replication/peers refresh``, bounded by timeout."""
    info_a, info_b = site_info(a), site_info(b)
    say(f"{a.name}: identity {info_a.identity}, fingerprint {info_a.fingerprint}")
    say(f"{b.name}: identity {info_b.identity}, fingerprint {info_b.fingerprint}")
    pending = {}
    for here, there, address, info in ((a, b, b_address, info_b), (b, a, a_address, info_a)):
        line = (f"/replication/peers create name={there.name} "
                f"address={address}:{REPLICATION_PORT} fingerprint={info.fingerprint}")
        result = ap.targetcli_batch(here, [line])[-1]
        say(f"{here.name}: {line}\n{result.stdout.rstrip()}")
        pending[here.name] = (here, "not fetched" in result.stdout)
    deadline = time.monotonic() + timeout
    for name, (here, waiting) in pending.items():
        last = ""
        while waiting:
            if time.monotonic() > deadline:
                raise MachineError(f"{name}: the peer's certificate was still not fetched "
                                   f"{timeout:.0f} s after pairing: {last}")
            result = ap.targetcli_batch(here, ["/replication/peers refresh",
                                               "ls /replication/peers"])
            last = "\n".join(r.stdout for r in result)
            waiting = "not fetched" in last
            if waiting:
                time.sleep(3)
        say(f"{name}: peer certificate pinned")
    return info_a, info_b


def create_volume(primary: Machine, backstore: str, peer: str) -> str:
    """``/replication/volumes create backstore= peer=`` on the primary; returns its output."""
    result = ap.targetcli_batch(primary, [f"/replication/volumes create backstore={backstore} "
                                          f"peer={peer}"])[-1]
    return result.stdout


def saveconfig(machine: Machine) -> str:
    return ap.targetcli_batch(machine, ["saveconfig"])[-1].stdout


def shell_status(machine: Machine) -> str:
    """``targetcli /replication status`` as an admin reads it (or why it failed)."""
    result = ap.targetcli(machine, "/replication", "status", check=False)
    text = result.text.strip()
    err = result.stderr.decode(errors="replace").strip()
    return text + (f"\n(stderr: {err})" if err else "") if (text or err) else "(no output)"


def daemon_status(machine: Machine, socket: str) -> dict | None:
    """A daemon's JSON status (None: it does not answer)."""
    result = machine.run(["appliancectl", "--socket", socket, "status", "--json"], timeout=30,
                         check=False)
    if result.rc != 0:
        return None
    try:
        return json.loads(result.text)
    except ValueError:
        return None


def replica_of(dr: Machine, volume_uuid: str) -> dict | None:
    return ((daemon_status(dr, RECEIVER_SOCK) or {}).get("volumes") or {}).get(volume_uuid)


def wait_for(what: str, predicate, timeout: float, interval: float = 2.0, detail=lambda: ""):
    """Poll predicate() until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise MachineError(f"{what}: not within {timeout:.0f} s. {detail()}")
        time.sleep(interval)


def unit_logs(machine: Machine, units: list[str], lines: int = 40) -> str:
    """The last lines each unit logged (for a failure's message)."""
    out = []
    for unit in units:
        result = machine.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines),
                              "-u", unit], timeout=30, check=False)
        out.append(f"--- {machine.name}: journalctl -u {unit} (last {lines})\n{result.text.rstrip()}")
    return "\n".join(out)


def file_digest(machine: Machine, path: str, size: int, timeout: float = 300.0) -> str:
    """SHA-256 of the first size bytes of a file or device in the VM."""
    result = machine.run(f"head -c {size} '{path}' | sha256sum", timeout=timeout)
    return result.text.split()[0]


def wait_converged(primary: Machine, dr: Machine, *, primary_mirror: str, dr_mirror: str,
                   size: int, volume: str, timeout: float = 240.0, say=lambda msg: None) -> float:
    """Wait until the transmitter says in sync with nothing to ship, then until the DR's
    mirror equals the primary's byte for byte (SHA-256 of both); returns the seconds it took.
    The host must have stopped writing (unmounted) first."""
    t0 = time.monotonic()
    sock = transmitter_sock(volume)
    wait_for(f"the transmitter of {volume} in sync with nothing left to ship",
             lambda: (s := daemon_status(primary, sock)) and s.get("in_sync") is True
             and not s.get("lag_records") and not s.get("lag_bytes"),
             timeout, detail=lambda: f"its status: {shell_status(primary)}\n"
             f"{unit_logs(primary, [f'appliance-transmitter@{volume}', 'appliance-handler'])}\n"
             f"{unit_logs(dr, ['appliance-receiver'])}")
    deadline = t0 + timeout
    while True:
        here, there = file_digest(primary, primary_mirror, size), file_digest(dr, dr_mirror, size)
        if here == there:
            took = time.monotonic() - t0
            say(f"DR replica equals the primary byte for byte (sha256 {here[:16]}..., "
                f"{size} bytes), {took:.0f} s after the host stopped writing")
            return took
        if time.monotonic() > deadline:
            raise MachineError(f"the DR's mirror {dr_mirror} still differs from the primary's "
                               f"{primary_mirror} {timeout:.0f} s after the host stopped writing "
                               f"(sha256 {there} vs {here}); primary: {shell_status(primary)}\n"
                               f"DR: {shell_status(dr)}")
        time.sleep(3)
