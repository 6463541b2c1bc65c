"""Pairing: fetch the certificate a peer's receiver presents, to pin it by its fingerprint.

The admin gives the peer's address and the fingerprint its ``/replication info`` shows; the
shell connects to that address as a TLS client *without* a certificate of its own and without
verifying the peer's against any CA (there is none: it is self-signed), takes the certificate
the peer presented and compares its SHA-256 fingerprint with the one given. Only an equal
fingerprint makes it pinned; the comparison is the trust, as with SSH host keys.

The receiver requires a client certificate, so it refuses this connection (and logs that the
client presented none), but only after it has sent its own: with TLS 1.3 the client's side of
the handshake completes before the server judges the client's certificate; with TLS 1.2 the
server's alert ends the handshake, and the certificate is taken from the handshake message
itself (the same message hook as ``tls.Handshake``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from appliance.replication.tls import _first_certificate, fingerprint

__all__ = ["CertificateFetchError", "fetch_certificate", "fingerprint", "split_address"]


class CertificateFetchError(OSError):
    """The peer's certificate could not be fetched; the message says why (unreachable,
    refused, no TLS there)."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (as ``targetcli_ext.model.parse_address`` made it)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_certificate(address: str, timeout: float = 5.0) -> bytes:
    """The DER certificate the TLS server at ``address`` presents (unverified: the caller
    compares its fingerprint). Raises CertificateFetchError."""
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    seen: list[bytes] = []

    def message(conn, direction, version, content_type, msg_type, data) -> None:
        if (direction == "read" and content_type == ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]
                and msg_type == ssl._TLSMessageType.CERTIFICATE):  # type: ignore[attr-defined]
            der = _first_certificate(bytes(data), version == ssl.TLSVersion.TLSv1_3)
            if der:
                seen.append(der)

    with contextlib.suppress(AttributeError, TypeError):
        ctx._msg_callback = message  # type: ignore[attr-defined]
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise CertificateFetchError(f"cannot connect to {address}: {_why(err)}") from err
    try:
        with ctx.wrap_socket(raw, do_handshake_on_connect=False) as tls:
            try:
                tls.do_handshake()
                der = tls.getpeercert(binary_form=True)
            except (ssl.SSLError, OSError) as err:
                if seen:            # TLS 1.2: it sent its certificate, then refused ours
                    return seen[0]
                raise CertificateFetchError(
                    f"{address} answered but presented no TLS certificate ({_why(err)}): "
                    f"is it the peer's replication receiver (its listen address in "
                    f"'/replication info')?") from err
    finally:
        raw.close()
    if not der:
        raise CertificateFetchError(f"{address} presented no certificate")
    return der


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
