"""Pairing from the shell: peers saved in site.json (0600); bad input refused with a message
naming what to fix, and nothing changed."""

from __future__ import annotations

import json
import stat

import pytest
from configshell_fb import ExecutionError

from targetcli_ext.model import ModelError, SiteStore, parse_address, parse_fingerprint

FP = "SHA256:" + ":".join(["5E"] * 32)
FP2 = "sha256:" + "a7" * 32


def site_json(sh) -> dict:
    return json.loads((sh.state_dir / "site.json").read_text())


def test_create_saves_the_peer_0600_and_adds_its_node(sh):
    out = sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP2}")
    assert "Created peer dr at 192.0.2.2:7700, pinned SHA256:A7:A7:" in out
    saved = site_json(sh)
    assert saved["peers"] == {"dr": {"address": "192.0.2.2:7700",
                                     "fingerprint": "SHA256:" + ":".join(["A7"] * 32)}}
    assert stat.S_IMODE((sh.state_dir / "site.json").stat().st_mode) == 0o600
    assert [c.name for c in sh.root.get_node("/replication/peers").children] == ["dr"]
    assert not list(sh.state_dir.glob("*.tmp"))


def test_delete_forgets_the_peer(sh):
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    sh.run("/replication/peers delete name=dr")
    assert site_json(sh)["peers"] == {}
    assert not sh.root.get_node("/replication/peers").children


@pytest.mark.parametrize("args, message", [
    ("name=dr2 address=192.0.2.2 fingerprint=" + FP,
     "address '192.0.2.2' has no port: use host:port, e.g. address=192.0.2.2:7700"),
    ("name=dr2 address=192.0.2.2:99999 fingerprint=" + FP,
     "port '99999' is not a number from 1 to 65535"),
    ("name=dr2 address=2001:db8::2:7700 fingerprint=" + FP,
     "put an IPv6 address in brackets"),
    ("name=dr2 address=dr_site!:7700 fingerprint=" + FP,
     "'dr_site!' is neither an IPv4 address nor a host name"),
    ("name=dr2 address=192.0.2.3:7700 fingerprint=5E:5E",
     "fingerprint '5E:5E' does not start with SHA256: ; use SHA256: and 64 hex digits as "
     "'/replication info' shows on the peer"),
    ("name=dr2 address=192.0.2.3:7700 fingerprint=SHA256:5E:5E",
     "is not 32 bytes in hex after SHA256:"),
    ("name=dr2 address=192.0.2.3:7700 fingerprint=SHA256:qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc",
     "is not 32 bytes in hex after SHA256:"),
    ("name=dr address=192.0.2.3:7700 fingerprint=SHA256:" + "77" * 32,
     "peer name 'dr' is in use (address 192.0.2.2:7700): choose another name, or delete "
     "name=dr first; nothing changed"),
    ("name=dr2 address=192.0.2.3:7700 fingerprint=" + FP,
     "is already paired as peer 'dr'"),
    ("name=-dr address=192.0.2.3:7700 fingerprint=SHA256:" + "77" * 32,
     "peer name '-dr' is not valid: use 1-63 letters, digits"),
])
def test_bad_input_is_refused_naming_what_to_fix_and_nothing_changes(sh, args, message):
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    before = (sh.state_dir / "site.json").read_bytes()
    with pytest.raises(ExecutionError) as refused:
        sh.run(f"/replication/peers create {args}")
    assert message in str(refused.value)
    assert str(refused.value).endswith("nothing changed")
    assert (sh.state_dir / "site.json").read_bytes() == before
    assert [c.name for c in sh.root.get_node("/replication/peers").children] == ["dr"]


def test_deleting_an_unknown_peer_names_the_known_ones(sh):
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    with pytest.raises(ExecutionError, match=r"no peer named 'dx' \(peers: dr\); nothing"):
        sh.run("/replication/peers delete name=dx")


def test_addresses_normalise():
    assert parse_address("[2001:db8::2]:07700") == "[2001:db8::2]:7700"
    assert parse_address("dr.example.net:7700") == "dr.example.net:7700"
    with pytest.raises(ModelError, match="is not an IPv6 address"):
        parse_address("[dr]:7700")


def test_fingerprints_normalise_from_openssl_forms():
    hexes = "ab" * 32
    want = "SHA256:" + ":".join(["AB"] * 32)
    assert parse_fingerprint("SHA256:" + hexes) == want
    assert parse_fingerprint(want.lower()) == want


def test_a_damaged_site_file_is_refused_naming_it(tmp_path):
    store = SiteStore(tmp_path)
    (tmp_path / "site.json").write_text('{"version": 1, "listen": "0.0.0.0:7700", "peers": '
                                        '{"dr": {"address": "nowhere", "fingerprint": "x"}}}')
    with pytest.raises(ModelError, match=r"site.json: address 'nowhere' has no port.*repair "
                                         r"or move away"):
        store.load()
    (tmp_path / "site.json").write_text('{"version": 7}')
    with pytest.raises(ModelError, match="format version 7, newer than this release reads"):
        store.load()


def test_a_damaged_site_file_does_not_break_ls(sh):
    (sh.state_dir).mkdir(exist_ok=True)
    (sh.state_dir / "site.json").write_text("{not json")
    assert sh.root.get_node("/replication").summary()[1] is False
    assert "is not JSON" in sh.root.get_node("/replication").summary()[0]
