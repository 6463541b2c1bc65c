"""The replica's state file (``replica_state.py``): a round trip keeps every field, a torn or
damaged file and an unknown format version are refused with a message naming the file and
what to do (also by the DR tool and the receiver's replica), and the format written before
the version field existed is read as it always was."""

import json
import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr import dr_tool
from appliance.replication.dr.promotion import demote, promote
from appliance.replication.dr.replica import Replica, ReplicaError
from appliance.replication.dr.replica_state import (
    FORMAT_VERSION,
    PromotionMark,
    ReplicaState,
    ReplicaStateError,
)
from appliance.replication.handshake import Hello, VolumeSpec
from appliance.replication.wire import WireRecord

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000cc")
SIZE = 64 * 512
FULL = ReplicaState(volume_uuid=VOL, primary="site-a", generation=3,
                    inconsistent_since=1700000000.25, consistent_seq=41, consistent_at=57,
                    full_copy_pending=True, detached_image_seq=40,
                    promoted=PromotionMark(at_seq=57, generation=3, time=1700000100.5,
                                           former_primary="site-b"),
                    demoted_from=PromotionMark(at_seq=12, generation=2, time=1600000000.0,
                                               former_primary=None),
                    failback_extents=[(8, 2), (64, 128)], split_brain_keep="new-primary")
# Exactly what the replica wrote before the format carried a version (format 0).
FORMAT_0 = {"volume_uuid": str(VOL), "primary": "site-a", "generation": 2,
            "inconsistent_since": None, "consistent_seq": None, "consistent_at": None,
            "full_copy_pending": False, "detached_image_seq": 9,
            "promoted": {"at_seq": 9, "former_primary": "site-a", "generation": 2,
                         "time": 1700000000.5}}


def cfg(tmp_path) -> ReplicaConfig:
    return ReplicaConfig(VolumeSpec(VOL, SIZE, 512), replica_paths(tmp_path, VOL),
                         journal_size=1 << 20, mirror_sync_interval_s=3600)


def test_a_saved_state_loads_back_equal_and_says_its_format(tmp_path):
    path = tmp_path / "state.json"
    FULL.save(path)
    assert ReplicaState.load(path) == FULL
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]   # no temp file left
    assert ReplicaState.load(tmp_path / "missing.json") is None           # never paired


def test_the_format_without_a_version_is_read_as_before(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(FORMAT_0, sort_keys=True))
    st = ReplicaState.load(path)
    assert st == ReplicaState(volume_uuid=VOL, primary="site-a", generation=2,
                              detached_image_seq=9,
                              promoted=PromotionMark(9, 2, 1700000000.5, "site-a"))
    # The first releases wrote only the binding and a key no longer used.
    path.write_text(json.dumps({"volume_uuid": str(VOL), "primary": None, "generation": 1,
                                "mirror_durable_seq": 17}))
    assert ReplicaState.load(path) == ReplicaState(volume_uuid=VOL, generation=1)


@pytest.mark.parametrize(("text", "words"), [
    ("", "is damaged"),                                           # created, never written
    (json.dumps(FULL.to_json())[:57], "is damaged"),              # torn
    ("[1, 2]", "not an object"),
    (json.dumps({**FULL.to_json(), "generation": "3"}), "generation must be an integer"),
    (json.dumps({**FULL.to_json(), "full_copy_pending": 1}), "full_copy_pending must be"),
    (json.dumps({**FULL.to_json(), "volume_uuid": "vol-1"}), "is damaged"),
    (json.dumps({k: v for k, v in FULL.to_json().items() if k != "primary"}),
     "missing key 'primary'"),
    (json.dumps({**FULL.to_json(), "promoted": {"at_seq": 3}}), "missing key 'generation'"),
    (json.dumps({**FULL.to_json(), "primery": "x"}), "unknown keys primery"),
    (json.dumps({**FULL.to_json(), "format_version": "1"}), "format_version must be a version"),
    (json.dumps({**FULL.to_json(), "format_version": FORMAT_VERSION + 1}),
     f"format version {FORMAT_VERSION + 1}, newer than this release reads (up to "
     f"{FORMAT_VERSION}): run the release that wrote it"),
])
def test_a_damaged_or_unknown_file_is_refused_naming_it_and_what_to_do(tmp_path, text, words):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(ReplicaStateError) as refused:
        ReplicaState.load(path)
    message = str(refused.value)
    assert str(path) in message and words in message
    assert "remove the replica's files in that directory to pair it anew" in message
    assert path.read_text() == text                               # left as it was


def test_the_tools_and_the_replica_refuse_a_damaged_state_with_its_name(tmp_path, capsys):
    c = cfg(tmp_path)
    c.paths.state.parent.mkdir(parents=True)
    c.paths.state.write_text('{"primary": "site-a", "gener')
    with pytest.raises(ReplicaError, match=f"replica state {c.paths.state} is damaged"):
        Replica(c)
    config = tmp_path / "rx.toml"
    config.write_text(f'identity = "dr"\nlisten = "127.0.0.1:7700"\nstate_dir = "{tmp_path}"\n'
                      f'control_socket = "{tmp_path / "rx.sock"}"\ninsecure = true\n'
                      f'[[volume]]\nuuid = "{VOL}"\nsize_bytes = {SIZE}\n')
    for action in (["state"], ["rollback", str(VOL)], ["demote", str(VOL)]):
        assert dr_tool.main(["--config", str(config), *action]) == 1, action
        err = capsys.readouterr().err
        assert err.startswith(f"appliance-dr: replica state {c.paths.state} is damaged"), err


def test_the_replica_keeps_what_a_demotion_recorded_and_upgrades_the_format(tmp_path):
    c = cfg(tmp_path)
    r = Replica(c)
    r.bind(Hello("site-a", VOL, SIZE, 512, 1, 1), 0)
    r.commit([WireRecord(1, 10, 1, 0, 1, b"\x01" * 512)])
    r.close()
    promote(c)
    assert demote(c) == 2
    demoted = ReplicaState.load(c.paths.state)
    assert demoted.promoted is None and demoted.demoted_from.at_seq == 1
    r = Replica(c)
    r.bind(Hello("site-a", VOL, SIZE, 512, 2, 1), 0)             # the new primary's contact
    r.close()
    st = ReplicaState.load(c.paths.state)
    assert (st.primary, st.generation, st.demoted_from) == ("site-a", 2, demoted.demoted_from)
    # A replica whose state was written in format 0 writes format 1 at its next change.
    c.paths.state.write_text(json.dumps({**FORMAT_0, "promoted": None}))
    r = Replica(c)
    assert (r.primary, r.generation, r.detached_image_seq) == ("site-a", 2, 9)
    r.bind(Hello("site-b", VOL, SIZE, 512, 3, 1), 0)
    r.close()
    saved = json.loads(c.paths.state.read_text())
    assert saved["format_version"] == FORMAT_VERSION
    assert (saved["primary"], saved["generation"], saved["detached_image_seq"]) == ("site-b", 3, 9)
