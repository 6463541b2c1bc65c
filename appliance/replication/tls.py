"""TLS contexts for the replication link: mutual certificates, TLS 1.2+ only.

Each appliance has a certificate whose subject CN (or a DNS subjectAltName) is its appliance
identity, signed by a CA both sites trust. The transmitter checks the receiver's name like a
hostname; the receiver requires a client certificate and then checks, in the handshake, that
the identity the primary claims is the one its certificate proves.

Pre-shared keys are not supported (Python's ssl has PSK callbacks only from 3.13): ``psk`` in
the configuration is refused with a message on every version, never silently ignored.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsConfigError(ValueError):
    """The TLS settings cannot work; the message says which file or option to fix."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path          # this appliance's certificate (PEM)
    key: Path           # its private key (PEM)
    ca: Path            # CA bundle that signs the peers' certificates


def _load(ctx: ssl.SSLContext, cfg: TlsConfig) -> None:
    for label, path in (("cert", cfg.cert), ("key", cfg.key), ("ca", cfg.ca)):
        if not Path(path).is_file():
            raise TlsConfigError(f"tls {label} file {path} does not exist")
    try:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except (ssl.SSLError, OSError) as err:
        raise TlsConfigError(f"tls cert {cfg.cert} / key {cfg.key} unusable: {err}") from err
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca))
    except (ssl.SSLError, OSError) as err:
        raise TlsConfigError(f"tls ca {cfg.ca} unusable: {err}") from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Receiver side: present our certificate, require and verify the primary's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(ctx, cfg)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Transmitter side: present our certificate, verify the receiver's against its name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load(ctx, cfg)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def peer_identities(peercert: dict | None) -> set[str]:
    """Names a verified peer certificate proves: its subject CNs and DNS subjectAltNames."""
    if not peercert:
        return set()
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn
             if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names
