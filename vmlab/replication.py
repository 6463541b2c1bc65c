"""Wiring replication between two lab appliances: the receiver on the DR side, one
transmitter per volume on the primary (TOML files on the state disk, read by the units of
``systemd/``). Until targetcli's ``/replication`` node writes these files, the lab does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from appliance.tcmu.cfgstring import SUBTYPE, parse_config
from appliance.volume.identity import mirror_volume_uuid
from vmlab.appliance import STATE_DIR, LunSpec
from vmlab.machine import Machine

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
    dr.run(["systemctl", "start", "appliance-receiver.service"], timeout=60, check=False)
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
