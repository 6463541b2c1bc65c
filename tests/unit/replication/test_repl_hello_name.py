"""HELLO's optional ``name`` (the volume's name on the primary): sent and read back, absent
in an older primary's HELLO, refused when it is not a string; the replica records it durably
(state.json) and its status shows it; a later HELLO without a name keeps the recorded one."""

import json
import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr.replica import Replica
from appliance.replication.dr.replica_state import ReplicaState
from appliance.replication.handshake import HandshakeError, Hello, VolumeSpec

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000dd")
SIZE = 64 * 512


def test_hello_carries_the_name_and_an_old_hello_without_it_is_read():
    h = Hello("site-a", VOL, SIZE, 512, 1, 1, name="vol1")
    d = h.to_dict()
    assert d["name"] == "vol1"
    assert Hello.from_dict(json.loads(json.dumps(d))) == h
    del d["name"]                               # an older transmitter sends none
    assert Hello.from_dict(d).name == ""


@pytest.mark.parametrize("bad", [7, None, ["vol1"], True, "x" * 256, "a\nb"])
def test_a_name_of_the_wrong_type_or_shape_is_refused(bad):
    d = {**Hello("site-a", VOL, SIZE, 512, 1, 1).to_dict(), "name": bad}
    with pytest.raises(HandshakeError, match="name"):
        Hello.from_dict(d)


def test_the_replica_records_the_name_durably_and_shows_it(tmp_path):
    cfg = ReplicaConfig(VolumeSpec(VOL, SIZE, 512), replica_paths(tmp_path, VOL), 1 << 20)
    r = Replica(cfg)
    assert r.status()["name"] == ""
    r.bind(Hello("site-a", VOL, SIZE, 512, 1, 1, name="vol1"), 0)
    assert r.status()["name"] == "vol1"
    r.close()
    assert ReplicaState.load(cfg.paths.state).name == "vol1"
    r = Replica(cfg)
    assert r.status()["name"] == "vol1"
    r.bind(Hello("site-a", VOL, SIZE, 512, 1, 1), 0)   # no name: the recorded one stays
    assert r.status()["name"] == "vol1"
    r.bind(Hello("site-a", VOL, SIZE, 512, 1, 1, name="renamed"), 0)
    r.close()
    assert ReplicaState.load(cfg.paths.state).name == "renamed"
