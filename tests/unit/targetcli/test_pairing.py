"""Pairing fetches the peer's certificate from its address over TLS and pins it only when its
fingerprint is the one given; an unreachable peer is accepted with its certificate pending;
receiver.toml follows, checked by the receiver's own parser, and the receiver takes it."""

from __future__ import annotations

import ssl
import stat
import subprocess
import tomllib

import pytest
from configshell_fb import ExecutionError
from peer_server import PeerServer, free_port

from appliance.replication.config import receiver_config
from appliance.replication.pairing import CertificateFetchError, fetch_certificate
from targetcli_ext.daemon_config import HEADER, certificate_identity
from targetcli_ext.model import ModelError

RECEIVER = "appliance-receiver.service"


@pytest.fixture
def peer(tmp_path):
    server = PeerServer(tmp_path / "peer-site")
    yield server
    server.close()


@pytest.fixture
def real_fetch(make_shell):
    return lambda **kw: make_shell(fetch=fetch_certificate, **kw)


def files(state_dir) -> dict:
    """Every file of the state directory: its bytes and mode (the lock file aside)."""
    return {p.relative_to(state_dir): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(state_dir.rglob("*")) if p.is_file() and p.name != ".site.lock"}


def receiver_toml(sh) -> dict:
    path = sh.state_dir / "receiver.toml"
    assert path.read_text().startswith(HEADER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = tomllib.loads(path.read_text())
    receiver_config(doc, str(path))                 # the receiver takes it as it is
    return doc


def test_pairing_pins_the_fetched_certificate_and_the_receiver_takes_it(real_fetch, peer):
    sh = real_fetch()
    out = sh.run(f"/replication/peers create name=dr address={peer.address} "
                 f"fingerprint={peer.cert.fingerprint}")
    assert f"Fetched the certificate of {peer.address}: fingerprint" in out
    assert "do not use shell pairings" not in out
    pem = sh.state_dir / "peers" / "dr.pem"
    assert pem.read_text() == peer.pem
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert certificate_identity(pem) == "dr-site"
    doc = receiver_toml(sh)
    assert doc["tls"]["peers"] == [str(pem)]
    assert doc["provision"] is True
    assert doc["state_dir"] == str(sh.ctx.config.replicas_dir)
    assert doc["tls"]["cert"] == str(sh.state_dir / "site.pem")
    assert sh.units.log == [("start", RECEIVER)]          # it was not running: started
    assert peer.refused_clients >= 1                       # we presented no certificate
    assert sh.root.get_node("/replication/peers/dr").summary()[0].startswith(peer.address)


def test_a_running_receiver_is_reloaded_not_restarted(real_fetch, peer):
    sh = real_fetch()
    sh.units.active.add(RECEIVER)
    sh.run(f"/replication/peers create name=dr address={peer.address} "
           f"fingerprint={peer.cert.fingerprint}")
    assert sh.units.log == []
    assert sh.calls.log == [("receiver.sock", "reload", {})]


def test_a_receiver_refusing_the_reload_is_a_warning_with_what_to_run(real_fetch, peer):
    sh = real_fetch()
    sh.units.active.add(RECEIVER)
    sh.calls.replies["reload"] = ExecutionError("identity changed: restart the receiver")
    out = sh.run(f"/replication/peers create name=dr address={peer.address} "
                 f"fingerprint={peer.cert.fingerprint}")
    assert "identity changed: restart the receiver" in out
    assert "run 'systemctl restart appliance-receiver.service'" in out
    assert (sh.state_dir / "peers" / "dr.pem").exists()


@pytest.mark.parametrize("first_pairing", [True, False])
def test_another_fingerprint_is_refused_naming_both_and_nothing_changes(real_fetch, peer,
                                                                        first_pairing):
    sh = real_fetch()
    if not first_pairing:
        sh.run("/replication info")
    before = files(sh.state_dir) if sh.state_dir.exists() else {}
    wrong = "SHA256:" + ":".join(["AB"] * 32)
    with pytest.raises(ExecutionError) as refused:
        sh.run(f"/replication/peers create name=dr address={peer.address} fingerprint={wrong}")
    message = str(refused.value)
    assert f"presented certificate {peer.cert.fingerprint}, not {wrong} as given" in message
    assert "check the fingerprint '/replication info' shows on the peer" in message
    assert message.endswith("nothing changed")
    assert (files(sh.state_dir) if sh.state_dir.exists() else {}) == before
    assert not sh.root.get_node("/replication/peers").children
    assert sh.units.log == [] and sh.calls.log == []


def test_an_unreachable_peer_is_accepted_pending_and_fetched_on_refresh(real_fetch, tmp_path):
    sh = real_fetch()
    port = free_port()
    server = PeerServer(tmp_path / "later", port=0)         # its certificate, not serving yet
    fp = server.cert.fingerprint
    server.close()
    out = sh.run(f"/replication/peers create name=dr address=127.0.0.1:{port} "
                 f"fingerprint={fp}")
    assert "Certificate of peer dr not fetched yet: cannot connect to 127.0.0.1:" in out
    assert "ConnectionRefusedError" in out
    assert not (sh.state_dir / "peers" / "dr.pem").exists()
    summary, health = sh.root.get_node("/replication/peers/dr").summary()
    assert summary.startswith(f"127.0.0.1:{port} certificate not fetched yet: cannot connect")
    assert health is False
    assert "certificate not fetched" in sh.root.get_node("/replication/peers").summary()[0]
    assert "not fetched yet: cannot connect" in sh.run("/replication/peers/dr info")
    assert receiver_toml(sh)["tls"]["peers"] == []         # no peer pinned yet
    assert sh.units.log == [("start", RECEIVER)]

    back = PeerServer(tmp_path / "later", port=port)        # the peer is up now
    try:
        out = sh.run("/replication/peers refresh")
    finally:
        back.close()
    assert "Fetched and pinned the certificate of peer dr" in out
    assert (sh.state_dir / "peers" / "dr.pem").read_text() == back.pem
    assert not (sh.state_dir / "peers" / "dr.pending").exists()
    assert receiver_toml(sh)["tls"]["peers"] == [str(sh.state_dir / "peers" / "dr.pem")]
    assert sh.calls.log == [("receiver.sock", "reload", {})]   # running now: reloaded


def test_a_peer_that_turns_out_to_present_another_certificate_stays_unpinned(real_fetch,
                                                                              tmp_path, peer):
    sh = real_fetch()
    port = free_port()
    fp = "SHA256:" + ":".join(["CD"] * 32)
    sh.run(f"/replication/peers create name=dr address=127.0.0.1:{port} fingerprint={fp}")
    other = PeerServer(tmp_path / "other", port=port)
    try:
        out = sh.run("/replication/peers refresh")
    finally:
        other.close()
    assert f"presented certificate {other.cert.fingerprint}, not {fp}" in out
    assert not (sh.state_dir / "peers" / "dr.pem").exists()
    assert "not " + fp in sh.run("/replication/peers/dr info")


def test_the_certificate_is_fetched_from_a_tls12_receiver_too(peer_tls12):
    der = fetch_certificate(peer_tls12.address, timeout=5)
    assert ssl.DER_cert_to_PEM_cert(der) == peer_tls12.pem


@pytest.fixture
def peer_tls12(tmp_path):
    server = PeerServer(tmp_path / "tls12", max_version=ssl.TLSVersion.TLSv1_2)
    yield server
    server.close()


def test_fetch_from_nothing_says_so():
    port = free_port()
    with pytest.raises(CertificateFetchError, match=f"cannot connect to 127.0.0.1:{port}"):
        fetch_certificate(f"127.0.0.1:{port}", timeout=2)


def test_deleting_a_peer_unpins_it_and_the_receiver_reloads(real_fetch, peer):
    sh = real_fetch()
    sh.run(f"/replication/peers create name=dr address={peer.address} "
           f"fingerprint={peer.cert.fingerprint}")
    sh.run("/replication/peers delete name=dr")
    assert not (sh.state_dir / "peers" / "dr.pem").exists()
    assert receiver_toml(sh)["tls"]["peers"] == []
    assert sh.calls.log == [("receiver.sock", "reload", {})]


def test_a_hand_written_receiver_toml_is_never_replaced(real_fetch, peer):
    sh = real_fetch()
    sh.state_dir.mkdir(parents=True)
    (sh.state_dir / "receiver.toml").write_text('identity = "by-hand"\n')
    before = files(sh.state_dir)
    with pytest.raises(ExecutionError, match=r"receiver.toml was written by hand .* move it "
                                             r"away to let /replication manage it; nothing"):
        sh.run(f"/replication/peers create name=dr address={peer.address} "
               f"fingerprint={peer.cert.fingerprint}")
    assert files(sh.state_dir) == before


def test_a_pending_certificate_is_fetched_again_before_the_next_change(real_fetch, tmp_path,
                                                                      peer):
    sh = real_fetch()
    port = free_port()
    later = PeerServer(tmp_path / "later", port=0)
    later.close()
    sh.run(f"/replication/peers create name=dr2 address=127.0.0.1:{port} "
           f"fingerprint={later.cert.fingerprint}")
    back = PeerServer(tmp_path / "later", port=port)
    try:
        out = sh.run(f"/replication/peers create name=dr address={peer.address} "
                     f"fingerprint={peer.cert.fingerprint}")
    finally:
        back.close()
    assert "Fetched and pinned the certificate of peer dr2" in out
    assert sorted(p.name for p in (sh.state_dir / "peers").iterdir()) == ["dr.pem", "dr2.pem"]
    assert len(receiver_toml(sh)["tls"]["peers"]) == 2
    assert "not fetched" not in sh.root.get_node("/replication").summary()[0]


def test_a_pinned_certificate_not_made_by_replication_info_is_named(tmp_path):
    """A leaf certificate (CA:FALSE) is not one identity.py makes: refused, naming the file."""
    pem, key = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(pem), "-days", "2", "-subj", "/CN=leaf", "-addext",
                    "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
    with pytest.raises(ModelError, match=f"the pinned certificate {pem} holds 0 self-signed "
                                         f"certificates, not one"):
        certificate_identity(pem)
