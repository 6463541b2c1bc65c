"""Volumes from the shell: 'create backstore= peer=' takes everything from the user:mirror
backstore and writes a transmitter file the transmitter's own parser accepts, then starts its
unit; each bad input is refused naming what to fix with nothing changed; 'delete' stops it and
says what remains; other volumes are never touched; settings change through update_volume and
apply_volume."""

from __future__ import annotations

import json
import stat
import tomllib

import pytest
from configshell_fb import ExecutionError
from shell_fakes import mirror_backstore, paired_with_dr

from appliance.replication.config import transmitter_config
from appliance.volume.identity import mirror_volume_uuid
from targetcli_ext.daemon_config import HEADER
from targetcli_ext.model import ModelError


def files(state_dir) -> dict:
    return {p.relative_to(state_dir): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(state_dir.rglob("*")) if p.is_file() and p.name != ".site.lock"}


@pytest.fixture
def sh(make_shell, lio, tmp_path, dr_certificate):
    shell = paired_with_dr(make_shell, dr_certificate)
    for name in ("vol1", "vol2"):
        mirror_backstore(lio, name, tmp_path / "volumes")
    shell.units.log.clear()
    shell.calls.log.clear()
    shell.root.refresh()
    return shell


def transmitter(sh, name: str) -> dict:
    path = sh.state_dir / f"transmitter-{name}.toml"
    assert path.read_text().startswith(HEADER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = tomllib.loads(path.read_text())
    transmitter_config(doc, str(path))              # the transmitter takes it as it is
    return doc


def test_create_takes_everything_from_the_backstore_and_starts_the_transmitter(sh, tmp_path):
    out = sh.run("/replication/volumes create backstore=vol1 peer=dr")
    vols = tmp_path / "volumes"
    want_uuid = str(mirror_volume_uuid(f"{vols}/vol1.img"))
    assert f"Created volume vol1: user:mirror/vol1 (uuid {want_uuid}, 67108864 bytes) " \
           f"replicates to peer dr (192.0.2.2:7700)." in out
    doc = transmitter(sh, "vol1")
    assert doc["journal"] == f"{vols}/vol1.jnl"
    assert doc["mirror"] == f"{vols}/vol1.img"
    assert doc["bitmap"] == f"{vols}/vol1.jnl.bitmap"
    assert doc["volume_uuid"] == want_uuid
    assert (doc["size_bytes"], doc["block_size"]) == (64 << 20, 512)
    assert doc["peer"] == "192.0.2.2:7700" and doc["peer_identity"] == "dr-site"
    assert doc["peer_name"] == "dr"     # the metrics and alerts name the peer so
    assert doc["name"] == "vol1" and doc["paused"] is False
    assert doc["control_socket"] == str(tmp_path / "run" / "transmitter-vol1.sock")
    assert doc["tls"]["peers"] == [str(sh.state_dir / "peers" / "dr.pem")]
    assert doc["identity"] == json.loads((sh.state_dir / "site.json").read_text())["identity"]
    assert sh.units.log == [("start", "appliance-transmitter@vol1.service")]
    site = json.loads((sh.state_dir / "site.json").read_text())
    assert site["version"] == 3
    assert site["volumes"] == {"vol1": {"backstore": "vol1", "peer": "dr", "paused": False,
                                        "bandwidth_limit": None, "blackout": [],
                                        "uuid": want_uuid}}
    assert [c.name for c in sh.root.get_node("/replication/volumes").children] == ["vol1"]
    # The receiver refuses to provision a promoted copy of it (a failback instead).
    receiver = tomllib.loads((sh.state_dir / "receiver.toml").read_text())
    assert receiver["local_primaries"] == [want_uuid]


def test_a_4k_backstore_gives_its_block_size(sh, lio, tmp_path):
    mirror_backstore(lio, "big", tmp_path / "volumes", size=1 << 30, block_size=4096)
    sh.run("/replication/volumes create backstore=big peer=dr")
    assert transmitter(sh, "big")["block_size"] == 4096


@pytest.mark.parametrize("args, message", [
    ("backstore=nothing peer=dr",
     "backstore 'nothing' does not exist: give the name of a backstore under "
     "/backstores/user:mirror (there: vol1, vol2)"),
    ("backstore=disk1 peer=dr",
     "backstore 'disk1' is fileio/disk1, not user:mirror: only a user:mirror backstore has "
     "the journal replication ships"),
    ("backstore=vol1 peer=dr",
     "backstore 'vol1' is already replicated (volume vol1 to peer dr): see "
     "/replication/volumes/vol1"),
    ("backstore=vol2 peer=dx",
     "no peer named 'dx' (peers: dr, later): pair it first with /replication/peers create "
     "name=dx"),
    ("backstore=vol2 peer=later",
     "peer later's certificate has not been fetched yet (cannot connect to 192.0.2.9:7700: "
     "unreachable from the tests): the transmitter needs it to authenticate the peer. Make "
     "192.0.2.9:7700 reachable"),
    ("backstore=-x peer=dr", "backstore '-x' is not valid"),
    ("backstore=bad peer=dr", "backstore user:mirror/bad cannot be replicated: its config "
                              "string 'mirror/journal=/j' does not parse: missing 'mirror="),
])
def test_bad_input_is_refused_naming_what_to_fix_and_nothing_changes(sh, lio, args, message):
    from shell_fakes import FakeStorageObject, unreachable
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    sh.ctx.fetch = unreachable
    sh.run("/replication/peers create name=later address=192.0.2.9:7700 fingerprint=SHA256:"
           + "77" * 32)
    lio.storage_objects.append(FakeStorageObject("bad", "user", "", 1 << 20,
                                                 config="mirror/journal=/j"))
    before = files(sh.state_dir)
    sh.units.log.clear()
    with pytest.raises(ExecutionError) as refused:
        sh.run(f"/replication/volumes create {args}")
    assert message in str(refused.value)
    assert str(refused.value).endswith("; nothing changed")
    after = files(sh.state_dir)
    # a pending peer's certificate is tried again first: only its .pending note may differ
    after.pop(next((k for k in after if k.name == "later.pending"), None), None)
    before.pop(next((k for k in before if k.name == "later.pending"), None), None)
    assert after == before
    assert sh.units.log == []
    assert [c.name for c in sh.root.get_node("/replication/volumes").children] == ["vol1"]


def test_a_hand_written_transmitter_file_is_refused_not_replaced(sh):
    (sh.state_dir / "transmitter-vol2.toml").write_text("# mine\n")
    before = files(sh.state_dir)
    with pytest.raises(ExecutionError, match="transmitter-vol2.toml was written by hand"):
        sh.run("/replication/volumes create backstore=vol2 peer=dr")
    assert files(sh.state_dir) == before


def test_adding_and_removing_a_volume_leaves_the_others_alone(sh):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    other = sh.state_dir / "transmitter-vol1.toml"
    kept = (other.read_bytes(), other.stat().st_mtime_ns, other.stat().st_ino)
    receiver = (sh.state_dir / "receiver.toml").read_bytes()
    sh.units.log.clear()
    sh.calls.log.clear()
    sh.run("/replication/volumes create backstore=vol2 peer=dr")
    listed = tomllib.loads((sh.state_dir / "receiver.toml").read_text())["local_primaries"]
    sh.run("/replication/volumes delete name=vol2")
    assert (other.read_bytes(), other.stat().st_mtime_ns, other.stat().st_ino) == kept
    assert len(listed) == 2
    assert (sh.state_dir / "receiver.toml").read_bytes() == receiver
    assert sh.units.log == [("start", "appliance-transmitter@vol2.service"),
                            ("stop", "appliance-transmitter@vol2.service")]
    # The running receiver took each change of its local_primaries, nothing else.
    assert sh.calls.log == [("receiver.sock", "reload", {})] * 2


def test_delete_stops_it_removes_its_file_and_says_what_remains(sh, tmp_path):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    out = sh.run("/replication/volumes delete name=vol1")
    vols = tmp_path / "volumes"
    assert sh.units.log[-1] == ("stop", "appliance-transmitter@vol1.service")
    assert not (sh.state_dir / "transmitter-vol1.toml").exists()
    assert json.loads((sh.state_dir / "site.json").read_text())["volumes"] == {}
    assert "Deleted volume vol1: its transmitter is stopped and transmitter-vol1.toml " \
           "removed." in out
    assert f"Still on disk here: journal {vols}/vol1.jnl, mirror {vols}/vol1.img and bitmap " \
           f"{vols}/vol1.jnl.bitmap (backstore user:mirror/vol1, unchanged)." in out
    assert "At peer dr (192.0.2.2:7700): the replica of volume uuid " in out
    assert "stays until that appliance's admin forgets it" in out
    assert not sh.root.get_node("/replication/volumes").children


def test_a_peer_in_use_cannot_be_deleted(sh):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    before = files(sh.state_dir)
    with pytest.raises(ExecutionError, match=r"peer 'dr' is used by volume\(s\) vol1: delete "
                                             r"them first \(/replication/volumes delete "
                                             r"name=vol1\); nothing changed"):
        sh.run("/replication/peers delete name=dr")
    assert files(sh.state_dir) == before


def test_deleting_an_unknown_volume_names_the_known_ones(sh):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    with pytest.raises(ExecutionError, match=r"no replicated volume named 'vx' \(volumes: "
                                             r"vol1\); nothing changed"):
        sh.run("/replication/volumes delete name=vx")
    assert sh.units.log == [("start", "appliance-transmitter@vol1.service")]


def test_a_transmitter_that_does_not_start_leaves_the_volume_configured_and_says_so(sh):
    sh.units.failing["appliance-transmitter@vol1.service"] = "Unit not found."
    out = sh.run("/replication/volumes create backstore=vol1 peer=dr")
    assert "The transmitter did not start: systemctl start appliance-transmitter@vol1." \
           "service failed: Unit not found.; the volume is configured: run 'systemctl start " \
           "appliance-transmitter@vol1.service'" in out
    assert (sh.state_dir / "transmitter-vol1.toml").exists()


def test_tab_completes_replicable_backstores_and_peers(sh):
    volumes = sh.root.get_node("/replication/volumes")
    assert volumes.ui_complete_create({}, "", "backstore") == ["vol1", "vol2"]
    assert volumes.ui_complete_create({}, "d", "peer") == ["dr "]
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    assert volumes.ui_complete_create({}, "vol", "backstore") == ["vol2 "]
    assert volumes.ui_complete_delete({}, "", "name") == ["vol1 "]
    offered = sh.shell._complete_token_pparam("", "/replication/volumes", "create", [], {})
    assert {"backstore=", "peer="} <= set(offered)


def test_settings_change_through_update_volume_and_apply_volume(sh):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    vol = sh.ctx.store.update_volume("vol1", paused="true", bandwidth_limit="10M",
                                     blackout="08:00-18:00, 22:00-06:00")
    assert (vol.paused, vol.bandwidth_limit, vol.blackout) == \
        (True, 10 * 1024 * 1024.0, ("08:00-18:00", "22:00-06:00"))
    assert sh.ctx.apply_volume("vol1") is True
    doc = transmitter(sh, "vol1")
    assert (doc["paused"], doc["bandwidth_limit"], doc["blackout"]) == \
        (True, 10485760.0, ["08:00-18:00", "22:00-06:00"])
    assert sh.units.log == [("start", "appliance-transmitter@vol1.service")]  # no restart
    assert sh.ctx.apply_volume("vol1") is False                  # unchanged: not rewritten
    sh.ctx.store.update_volume("vol1", bandwidth_limit="none", blackout="none")
    sh.ctx.apply_volume("vol1")
    doc = transmitter(sh, "vol1")
    assert "bandwidth_limit" not in doc and doc["blackout"] == []


@pytest.mark.parametrize("changes, message", [
    ({"bandwidth_limit": -5}, "bandwidth_limit -5 is out of range: from 1K to 1T per second"),
    ({"bandwidth_limit": "fast"}, "bandwidth_limit 'fast' does not parse: use a rate per second"),
    ({"bandwidth_limit": True}, "bandwidth_limit True is not a rate"),
    ({"blackout": "8-18"}, "blackout window '8-18' does not parse: use HH:MM-HH:MM windows"),
    ({"blackout": ["08:00-08:00"]}, "blackout window '08:00-08:00' is empty"),
    ({"paused": "maybe"}, "paused='maybe' is neither true nor false: use paused=true"),
    ({"mode": "sync"}, "mode: not a volume setting (settings: paused, bandwidth_limit, "
                       "blackout)"),
])
def test_settings_out_of_range_are_refused_naming_what_to_give(sh, changes, message):
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    before = files(sh.state_dir)
    with pytest.raises(ModelError) as refused:
        sh.ctx.store.update_volume("vol1", **changes)
    assert message in str(refused.value)
    assert files(sh.state_dir) == before
