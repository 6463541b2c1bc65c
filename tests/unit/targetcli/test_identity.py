"""The site's identity, key and certificate: made on first use, key 0600, the fingerprint the
one openssl prints (and the form 'peers create fingerprint=' takes)."""

from __future__ import annotations

import socket
import stat
import subprocess

import pytest

from targetcli_ext.identity import IdentityError, ensure_certificate, load_certificate
from targetcli_ext.model import SiteStore, parse_fingerprint


def openssl_fingerprint(cert) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
                          str(cert)], check=True, capture_output=True, text=True).stdout
    return "SHA256:" + out.strip().partition("=")[2]


def test_info_creates_the_identity_key_and_certificate(sh):
    out = sh.run("/replication info")
    d = sh.state_dir
    key, cert = d / "site.key", d / "site.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "site.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    fingerprint = openssl_fingerprint(cert)
    host = socket.gethostname().split(".")[0]
    assert out.splitlines()[:3] == [f"identity:    {host}", "listen:      0.0.0.0:7700",
                                    f"fingerprint: {fingerprint}"]
    assert parse_fingerprint(fingerprint) == fingerprint      # what a peer pastes back
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext",
                              "subjectAltName", "-in", str(cert)], check=True,
                             capture_output=True, text=True).stdout
    assert f"CN = {host}" in subject and f"DNS:{host}" in subject
    key_text = subprocess.run(["openssl", "pkey", "-in", str(key), "-noout", "-text"],
                              check=True, capture_output=True, text=True).stdout
    assert "prime256v1" in key_text or "P-256" in key_text
    assert not [p for p in d.iterdir() if p.name.startswith(".newcert-")]


def test_the_identity_is_made_once(sh):
    first = sh.run("/replication info")
    pem = (sh.state_dir / "site.pem").read_bytes()
    assert sh.run("/replication info") == first
    assert (sh.state_dir / "site.pem").read_bytes() == pem


def test_a_set_identity_is_kept_and_names_the_certificate(tmp_path):
    (tmp_path / "site.json").write_text('{"version": 1, "identity": "site-a", '
                                        '"listen": "0.0.0.0:7700", "peers": {}}')
    site = SiteStore(tmp_path).ensure_identity()
    cert = ensure_certificate(tmp_path, site.identity)
    assert site.identity == "site-a"
    assert "CN = site-a" in subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                                            str(cert.cert)], capture_output=True,
                                           text=True).stdout


def test_half_a_pair_is_made_again(tmp_path):
    ensure_certificate(tmp_path, "site-a")
    (tmp_path / "site.pem").unlink()              # a crash between the two renames
    assert load_certificate(tmp_path) is None
    again = ensure_certificate(tmp_path, "site-a")
    assert again.fingerprint == openssl_fingerprint(tmp_path / "site.pem")


def test_a_key_readable_by_others_is_refused_saying_what_to_do(tmp_path):
    ensure_certificate(tmp_path, "site-a")
    (tmp_path / "site.key").chmod(0o644)
    with pytest.raises(IdentityError, match=r"must be 0600; run 'chmod 600 .*site.key'"):
        load_certificate(tmp_path)
