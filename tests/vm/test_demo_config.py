"""The replication configuration the lab writes is accepted by the daemons' own parsers
(no VM needed; lives here because it belongs to the lab)."""

from __future__ import annotations

import tomllib

from appliance.replication.config import receiver_config, transmitter_config
from vmlab.appliance import LunSpec
from vmlab.replication import ReplicatedVolume


def test_lab_replication_configuration_parses():
    volume = ReplicatedVolume(LunSpec("disk0", size="1G", journal_size="128M"),
                              primary="primary", dr="dr", dr_address="192.168.77.12")
    rx = receiver_config(tomllib.loads(volume.receiver_toml()))
    tx = transmitter_config(tomllib.loads(volume.transmitter_toml()))
    assert rx.volumes[0].spec.uuid == tx.volume_uuid == volume.uuid
    assert rx.volumes[0].spec.size_bytes == tx.size_bytes == 1 << 30
    assert tx.peer == ("192.168.77.12", 7700) and tx.peer_identity == rx.identity == "dr"
    assert "primary" in rx.volumes[0].spec.allowed_primaries
