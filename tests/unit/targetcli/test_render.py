"""The daemons' files rendered from site.json: what the daemons' parsers read back equals what
was meant, strings with quotes and backslashes included; replicas the admin made become
[[volume]] tables; a replica whose geometry is wrong is refused naming it."""

from __future__ import annotations

import tomllib

import pytest

from appliance.replication.config import receiver_config
from targetcli_ext.daemon_config import HEADER, Layout, receiver_document, to_toml
from targetcli_ext.model import ModelError, Site, make_replica


def test_toml_round_trips_through_the_parser():
    doc = {"a": 'quo"te\\back', "n": 7, "f": 12500000.0, "b": False, "l": ["x", 'y"'],
           "tls": {"peers": []}, "volume": [{"uuid": "u", "size_bytes": 512}]}
    text = to_toml(doc)
    assert text.startswith(HEADER)
    assert tomllib.loads(text) == doc


def test_replicas_become_volume_tables_the_receiver_accepts(tmp_path):
    uuid = "6f1c2a52-0000-4000-8000-000000000001"
    site = Site(identity="dr-site", replicas={
        "r1": make_replica("r1", uuid, "/dev/vg/r1", 1 << 30, 4096)})
    layout = Layout(tmp_path, tmp_path / "replicas", tmp_path / "run")
    doc = tomllib.loads(to_toml(receiver_document(site, layout)))
    cfg = receiver_config(doc, "receiver.toml")
    (replica,) = cfg.volumes
    assert str(replica.spec.uuid) == uuid
    assert (replica.spec.size_bytes, replica.spec.block_size) == (1 << 30, 4096)
    assert str(replica.paths.mirror) == "/dev/vg/r1"
    assert cfg.provision is True and cfg.tls.peers == ()


@pytest.mark.parametrize("args, message", [
    (("r1", "nope", "/dev/vg/r1", 4096, 512), "uuid 'nope' is not a uuid"),
    (("r1", "6f1c2a52-0000-4000-8000-000000000001", "vg/r1", 4096, 512),
     "mirror 'vg/r1' must be an absolute path"),
    (("r1", "6f1c2a52-0000-4000-8000-000000000001", "/dev/vg/r1", 1000, 512),
     "size_bytes=1000 must be a positive multiple of block_size 512"),
    (("r1", "6f1c2a52-0000-4000-8000-000000000001", "/dev/vg/r1", 4096, 1024),
     "block_size=1024: use 512 or 4096"),
])
def test_a_replica_with_bad_geometry_is_refused_naming_it(args, message):
    with pytest.raises(ModelError, match=message):
        make_replica(*args)
