"""Certificate pinning ([tls] peers): the fingerprint helper, and real TLS handshakes on
loopback between contexts built like the daemons' (appliance/replication/tls.py) with
self-signed certificates made the way targetcli_ext/identity.py makes them."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest

from appliance.replication.tls import (
    TlsConfig,
    TlsConfigError,
    TlsRefused,
    TlsSide,
    fingerprint,
    peer_identities,
    pem_certificates,
)
from targetcli_ext.identity import ensure_certificate, fingerprint_of_pem

DEADLINE = 10.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl CLI makes the test certificates")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict:
    """Site certificates as the appliance makes them: site-a, site-b (primaries), dr-site and
    a second dr-site (same name, other key); and 'child': a site-a certificate signed by
    site-a's own (CA:TRUE, as openssl req -x509 makes it) key."""
    root = tmp_path_factory.mktemp("sites")
    made = {name: ensure_certificate(root / name, cn) for name, cn in
            (("site-a", "site-a"), ("site-b", "site-b"), ("dr-site", "dr-site"),
             ("dr-other", "dr-site"))}
    a = made["site-a"]
    d = root / "child"
    d.mkdir()
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=site-a"],
                   cwd=d, check=True, capture_output=True, timeout=60)
    (d / "ext").write_text("subjectAltName=DNS:site-a\n")
    subprocess.run(["openssl", "x509", "-req", "-in", "site.csr", "-CA", str(a.cert), "-CAkey",
                    str(a.key), "-CAcreateserial", "-out", "site.pem", "-days", "2",
                    "-extfile", "ext"], cwd=d, check=True, capture_output=True, timeout=60)
    made["child"] = type(a)(d / "site.pem", d / "site.key",
                            fingerprint_of_pem((d / "site.pem").read_text()))
    return made


def test_fingerprint_is_the_sha256_of_the_der_as_openssl_and_identity_show_it(certs):
    site = certs["site-a"]
    pem = site.cert.read_text()
    (der,) = pem_certificates(pem)
    assert fingerprint(der) == site.fingerprint == fingerprint_of_pem(pem)
    out = subprocess.run(["openssl", "x509", "-in", str(site.cert), "-noout", "-fingerprint",
                          "-sha256"], check=True, capture_output=True, text=True).stdout
    assert fingerprint(der) == "SHA256:" + out.strip().split("=", 1)[1]
    assert fingerprint(b"") == ("SHA256:E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:"
                                "41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55")
    assert len(pem_certificates(pem + certs["site-b"].cert.read_text())) == 2
    assert pem_certificates("no certificate here") == []


def side(certs, me: str, pins: list[str], *, server: bool) -> TlsSide:
    return TlsSide(TlsConfig(certs[me].cert, certs[me].key,
                             peers=tuple(certs[p].cert for p in pins)), server=server)


def test_side_knows_its_pins_and_refuses_unusable_files(certs, tmp_path):
    s = side(certs, "dr-site", ["site-a", "site-b", "site-a"], server=True)
    assert s.pins == (certs["site-a"].fingerprint, certs["site-b"].fingerprint)
    assert s.own == certs["dr-site"].fingerprint
    assert s.context().verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=f"tls peers file {missing} does not exist"):
        TlsSide(TlsConfig(certs["dr-site"].cert, certs["dr-site"].key, peers=(missing,)),
                server=True)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=f"tls peers file {junk}"):
        TlsSide(TlsConfig(certs["dr-site"].cert, certs["dr-site"].key, peers=(junk,)),
                server=True)
    with pytest.raises(TlsConfigError, match="exactly one of ca"):   # a receiver may pin none
        TlsSide(TlsConfig(certs["site-a"].cert, certs["site-a"].key), server=False)


async def _connect(tx: TlsSide, rx: TlsSide) -> dict:
    """One connection as the daemons make it; what each side saw and said."""
    out: dict = {}
    done = asyncio.Event()

    async def accept(reader, writer):
        hs = rx.handshake()
        try:
            await writer.start_tls(hs.context, ssl_handshake_timeout=DEADLINE)
            hs.check(writer.get_extra_info("ssl_object"))
            out["rx"] = ("ok", peer_identities(writer.get_extra_info("peercert")))
            writer.write(b"welcome")
            await writer.drain()
        except TlsRefused as err:
            out["rx"] = ("refused", str(err))
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as err:
            out["rx"] = ("failed", hs.failure(err))
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hs = tx.handshake()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=hs.context, server_hostname="dr-site"), DEADLINE)
        try:
            hs.check(writer.get_extra_info("ssl_object"))
            got = await asyncio.wait_for(reader.read(7), DEADLINE)
            out["tx"] = ("ok", got) if got else ("dropped", hs.ours_refused("closed"))
        except TlsRefused as err:
            out["tx"] = ("refused", str(err))
        except ConnectionError as err:
            out["tx"] = ("dropped", hs.ours_refused(str(err)))
        writer.close()
    except (ssl.SSLError, ConnectionError) as err:
        out["tx"] = ("refused" if hs.refused(err) else "failed", hs.failure(err))
    await asyncio.wait_for(done.wait(), DEADLINE)
    server.close()
    await server.wait_closed()
    return out


def connect(tx: TlsSide, rx: TlsSide) -> dict:
    return asyncio.run(asyncio.wait_for(_connect(tx, rx), 3 * DEADLINE))


def test_pinned_on_both_sides_connects_and_names_still_count(certs):
    out = connect(side(certs, "site-a", ["dr-site"], server=False),
                  side(certs, "dr-site", ["site-a", "site-b"], server=True))
    assert out == {"rx": ("ok", {"site-a"}), "tx": ("ok", b"welcome")}


def test_the_receiver_refuses_a_primary_it_does_not_pin(certs):
    a, b = certs["site-a"], certs["site-b"]
    out = connect(side(certs, "site-a", ["dr-site"], server=False),
                  side(certs, "dr-site", ["site-b"], server=True))
    kind, line = out["rx"]
    assert kind == "failed"
    assert line.startswith(f"the primary presented certificate {a.fingerprint}, which is not "
                           f"pinned here (pinned: {b.fingerprint}): "), line
    kind, line = out["tx"]
    assert kind == "dropped" and f"our certificate {a.fingerprint}" in line, out


def test_the_transmitter_refuses_a_receiver_it_does_not_pin(certs):
    dr, other = certs["dr-site"], certs["dr-other"]
    out = connect(side(certs, "site-a", ["dr-site"], server=False),
                  side(certs, "dr-other", ["site-a"], server=True))
    kind, line = out["tx"]
    assert kind == "refused"
    assert line.startswith(f"the receiver presented certificate {other.fingerprint}, which is "
                           f"not pinned here (pinned: {dr.fingerprint}): "), line
    kind, line = out["rx"]
    assert kind == "failed" and f"after receiving our certificate {other.fingerprint}" in line


def test_a_pinned_certificate_with_another_name_is_refused_by_the_hostname_check(certs):
    out = connect(side(certs, "site-a", ["site-b"], server=False),
                  side(certs, "site-b", ["site-a"], server=True))
    kind, line = out["tx"]
    assert kind == "refused" and "Hostname mismatch" in line, out
    assert certs["site-b"].fingerprint in line


def test_only_the_exact_pinned_certificate_passes_not_one_its_key_signed(certs):
    """OpenSSL trusts a certificate that a pinned (CA:TRUE) one signed; the fingerprint check
    after the handshake refuses it."""
    out = connect(side(certs, "child", ["dr-site"], server=False),
                  side(certs, "dr-site", ["site-a"], server=True))
    kind, line = out["rx"]
    assert kind == "refused", out
    assert line == (f"the primary presented certificate {certs['child'].fingerprint}, which "
                    f"is not pinned here (pinned: {certs['site-a'].fingerprint})")


def test_ca_mode_still_verifies_and_names_a_refused_certificate(certs):
    # site-a's certificate as the CA: child verifies (site-a signed it), site-b does not.
    rx = TlsSide(TlsConfig(certs["dr-site"].cert, certs["dr-site"].key,
                           ca=certs["site-a"].cert), server=True)
    tx_ok = TlsSide(TlsConfig(certs["child"].cert, certs["child"].key, ca=certs["dr-site"].cert),
                    server=False)
    assert connect(tx_ok, rx) == {"rx": ("ok", {"site-a"}), "tx": ("ok", b"welcome")}
    tx_bad = TlsSide(TlsConfig(certs["site-b"].cert, certs["site-b"].key,
                               ca=certs["dr-site"].cert), server=False)
    kind, line = connect(tx_bad, rx)["rx"]
    assert kind == "failed" and "CERTIFICATE_VERIFY_FAILED" in line
    assert f"the primary presented certificate {certs['site-b'].fingerprint}" in line
