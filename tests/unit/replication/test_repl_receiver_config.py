"""The receiver's provisioning settings and a receiver that pins no peer yet: the keys load
with their defaults, bad values are refused naming the key (and the closest key for a typo),
a transmitter still needs a pinned certificate, and a TLS server context that pins none
refuses a real client with a line that says no peer is paired."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from appliance.replication.config import ConfigError, receiver_config, transmitter_config
from appliance.replication.tls import NO_PEER_PAIRED, TlsConfig, TlsSide
from tests.unit.replication.test_repl_tls_pinning import connect, side

U = "0b5e6a4c-0000-4000-8000-000000000001"
TLS = {"cert": "/c.pem", "key": "/k.pem"}


def rx(**kw) -> dict:
    d = {"identity": "dr", "listen": "127.0.0.1:7700", "state_dir": "/tmp/s",
         "control_socket": "/tmp/c.sock", "insecure": True}
    d.update(kw)
    return d


def test_provisioning_is_off_by_default_with_a_256_mib_journal():
    r = receiver_config(rx())
    assert (r.provision, r.provision_journal_size, r.volumes) == (False, 256 << 20, [])
    r = receiver_config(rx(provision=True, provision_journal_size=1 << 20))
    assert (r.provision, r.provision_journal_size) == (True, 1 << 20)


@pytest.mark.parametrize("d, words", [
    (rx(provision="yes"), "rx.toml: provision must be bool, got 'yes'"),
    (rx(provision_journal_size=(1 << 20) - 1), "rx.toml: provision_journal_size 1048575 is too "
                                               "small (at least 1 MiB"),
    (rx(provision_journal_size=1.5), "provision_journal_size must be int"),
    (rx(provison=True), "unknown setting provison: did you mean provision?"),
    (rx(provision_journal=1 << 20), "did you mean provision_journal_size?"),
])
def test_bad_provisioning_settings_are_refused_naming_the_key(d, words):
    with pytest.raises(ConfigError) as exc:
        receiver_config(d, "rx.toml")
    assert words in str(exc.value), str(exc.value)


def test_local_primaries_load_as_uuids_and_a_bad_one_is_refused_naming_the_key():
    assert receiver_config(rx()).local_primaries == frozenset()
    assert receiver_config(rx(local_primaries=[U])).local_primaries == {uuid.UUID(U)}
    with pytest.raises(ConfigError, match="rx.toml: local_primaries 'vol1' is not a uuid"):
        receiver_config(rx(local_primaries=["vol1"]), "rx.toml")
    with pytest.raises(ConfigError, match="local_primaries must be a list of str"):
        receiver_config(rx(local_primaries=U), "rx.toml")


def test_a_receiver_may_pin_no_peer_but_a_transmitter_may_not():
    r = receiver_config({**rx(tls={**TLS, "peers": []}), "insecure": False})
    assert r.tls == TlsConfig(Path("/c.pem"), Path("/k.pem"), ca=None, peers=())
    tx = {"identity": "a", "peer": "127.0.0.1:7700", "peer_identity": "dr", "journal": "/j",
          "volume_uuid": U, "size_bytes": 1 << 20, "control_socket": "/tmp/t.sock",
          "tls": {**TLS, "peers": []}}
    with pytest.raises(ConfigError, match=r"tx.toml: \[tls\] peers is empty"):
        transmitter_config(tx, "tx.toml")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the certificates")
def test_a_receiver_pinning_no_peer_refuses_every_connection(tmp_path):
    from targetcli_ext.identity import ensure_certificate
    certs = {name: ensure_certificate(tmp_path / name, name) for name in ("site-a", "dr-site")}
    rx_side = TlsSide(TlsConfig(certs["dr-site"].cert, certs["dr-site"].key), server=True)
    assert rx_side.pins == () and rx_side.describe() == f"TLS, {NO_PEER_PAIRED}"
    out = connect(side(certs, "site-a", ["dr-site"], server=False), rx_side)
    kind, line = out["rx"]
    assert kind == "failed", out
    assert line.startswith(f"the primary presented certificate {certs['site-a'].fingerprint}, "
                           f"which is not pinned here (pinned: none: {NO_PEER_PAIRED})"), line
    assert out["tx"][0] == "dropped", out
