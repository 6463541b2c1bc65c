"""Certificate pinning between live daemons ([tls] peers = the paired appliances' own
self-signed certificates, made as targetcli_ext/identity.py makes them): pinned on both sides
replicates; a peer presenting another certificate is refused on both sides, both logs name
the certificates, the transmitter's status says why and nothing reaches the replica."""

from __future__ import annotations

import pytest
from repl_harness import converge, pinned_tls_toml, status, use_tls_table, wait_for

pytestmark = pytest.mark.integration


def start(pair, site_certs, *, rx_pins: str, tx_pins: str, ops: int = 200):
    """Site site-a and the DR, each with its own certificate, pinning the one named."""
    site = pair.site("site-a")
    use_tls_table(site.tx_config, pinned_tls_toml(site_certs["site-a"], site_certs[tx_pins]))
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    use_tls_table(pair.rx_config, pinned_tls_toml(site_certs["dr-site"], site_certs[rx_pins]))
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, ops).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    assert w.popen.returncode == 0, w.output()[-3000:]
    return site, rx, pair.transmitter(site).start()


def refused_status(site, words: str) -> dict:
    def refused():
        st = status(site.control)
        return (st["link"]["state"] == "refused:certificate" and
                words in (st["link"]["last_error"] or "") and st)
    return wait_for(refused, 20, f"the transmitter's status to say {words!r}")


def assert_nothing_applied(pair, site) -> None:
    vol = pair.rx_status()["volumes"][str(site.uuid)]
    assert vol["records_received"] == 0 and vol["link"]["connects"] == 0, vol
    assert not (pair.replica_dir(site.uuid) / "journal").exists()


def test_pinned_on_both_sides_replicates_and_converges(pair, site_certs):
    site, rx, tx = start(pair, site_certs, rx_pins="site-a", tx_pins="dr-site")
    converge(pair, site, timeout=60)
    st = status(site.control)
    assert st["link"]["state"] == "replicating", st["link"]
    assert pair.rx_status()["refusals"] == 0
    assert "1 pinned peer certificate(s)" in rx.output()


def test_the_receiver_pinning_another_primary_certificate_refuses_it(pair, site_certs):
    site, rx, tx = start(pair, site_certs, rx_pins="other-site-a", tx_pins="dr-site")
    ours, pinned = site_certs["site-a"].fingerprint, site_certs["other-site-a"].fingerprint
    line = (f"TLS handshake failed: the primary presented certificate {ours}, which is not "
            f"pinned here (pinned: {pinned}): ")
    try:
        wait_for(lambda: line in rx.output(), 20, "the receiver's refusal naming both")
        st = refused_status(site, f"the receiver dropped the connection after receiving our "
                                  f"certificate {ours}: it most likely does not pin it")
        wait_for(lambda: f"TLS: the receiver dropped the connection after receiving our "
                         f"certificate {ours}" in tx.output(), 10, "the transmitter's log")
    except AssertionError:
        print(pair.logs())
        raise
    assert st["records_sent"] == 0, st
    assert_nothing_applied(pair, site)
    assert pair.rx_status()["refusals"] >= 1
    assert rx.running() and tx.running()
    print("receiver:", next(ln for ln in rx.output().splitlines() if line in ln))
    print("transmitter:", next(ln for ln in tx.output().splitlines() if "TLS: " in ln))


def test_the_transmitter_pinning_another_receiver_certificate_refuses_it(pair, site_certs):
    site, rx, tx = start(pair, site_certs, rx_pins="site-a", tx_pins="other-dr-site")
    theirs, pinned = site_certs["dr-site"].fingerprint, site_certs["other-dr-site"].fingerprint
    words = (f"the receiver presented certificate {theirs}, which is not pinned here "
             f"(pinned: {pinned}): ")
    try:
        st = refused_status(site, words)
        wait_for(lambda: f"TLS: {words}" in tx.output(), 10, "the transmitter's log")
        rx_line = (f"TLS handshake failed: the primary dropped the connection after receiving "
                   f"our certificate {theirs}: it most likely does not pin it")
        wait_for(lambda: rx_line in rx.output(), 20, "the receiver's log")
    except AssertionError:
        print(pair.logs())
        raise
    assert st["records_sent"] == 0, st
    assert_nothing_applied(pair, site)
    assert rx.running() and tx.running()
    print("transmitter:", next(ln for ln in tx.output().splitlines() if words in ln))
    print("receiver:", next(ln for ln in rx.output().splitlines() if "TLS handshake" in ln))


def test_a_certificate_signed_by_a_pinned_one_is_still_refused(pair, site_certs, tmp_path):
    """OpenSSL accepts a certificate that a pinned (self-signed, CA:TRUE) certificate's key
    signed; the fingerprint check after the handshake refuses it, and the receiver says so
    in a REFUSE the transmitter's status shows."""
    import subprocess

    from targetcli_ext.identity import SiteCertificate, fingerprint_of_pem

    a = site_certs["site-a"]
    d = tmp_path / "child"
    d.mkdir()
    (d / "ext").write_text("subjectAltName=DNS:site-a\n")
    for args in (["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=site-a"],
                 ["x509", "-req", "-in", "site.csr", "-CA", str(a.cert), "-CAkey", str(a.key),
                  "-CAcreateserial", "-out", "site.pem", "-days", "2", "-extfile", "ext"]):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    child = SiteCertificate(d / "site.pem", d / "site.key",
                            fingerprint_of_pem((d / "site.pem").read_text()))
    site = pair.site("site-a")
    use_tls_table(site.tx_config, pinned_tls_toml(child, site_certs["dr-site"]))
    pair.volumes = [(site.uuid, site.blocks)]
    pair.write_rx_config()
    use_tls_table(pair.rx_config, pinned_tls_toml(site_certs["dr-site"], a))
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    w = pair.writer(site, 50).start()
    wait_for(lambda: w.popen.poll() is not None, 30, "the writer")
    tx = pair.transmitter(site).start()
    words = (f"the primary presented certificate {child.fingerprint}, which is not pinned "
             f"here (pinned: {a.fingerprint})")
    try:
        wait_for(lambda: f"TLS handshake failed: {words}" in rx.output(), 20, "the receiver")

        def refused():
            st = status(site.control)
            return (st["link"]["state"] == "refused:certificate" and
                    f"peer refused: certificate: {words}" in (st["link"]["last_error"] or "")
                    and st)
        st = wait_for(refused, 20, "the transmitter's status to show the REFUSE")
    except AssertionError:
        print(pair.logs())
        raise
    assert st["records_sent"] == 0, st
    assert_nothing_applied(pair, site)
    assert rx.running() and tx.running()
