"""TLS contexts for the replication link: mutual certificates, TLS 1.2+ only.

Each appliance has a certificate whose subject CN (or a DNS subjectAltName) is its appliance
identity. The peer's certificate is trusted one of two ways (``[tls]`` has exactly one):

- ``ca``: a CA both sites trust signs the certificates;
- ``peers``: the paired appliances' own certificates (self-signed, as
  targetcli_ext/identity.py makes them) are pinned, as with SSH host keys. They are the only
  trust anchors (``VERIFY_X509_PARTIAL_CHAIN``: a pinned certificate needs no issuer), and
  after the handshake the SHA-256 fingerprint of the peer's DER certificate must be one of
  theirs, so only those exact certificates are accepted (not, say, one that a pinned
  certificate's key signed).

Either way the transmitter checks the receiver's name like a hostname (``peer_identity``); the
receiver requires a client certificate and then checks, in the handshake, that the identity
the primary claims is the one its certificate proves (``peer_identities``).

A refusal names the certificates: each connection has its own context (``TlsSide.handshake``)
whose message hook keeps the certificate the peer presented, even one the handshake rejects, so
the refusing side logs the fingerprint presented and those pinned, and the refused side (which
sees only a dropped connection) the fingerprint of its own certificate that was turned down.

Pre-shared keys are not supported (Python's ssl has PSK callbacks only from 3.13): ``psk`` in
the configuration is refused with a message on every version, never silently ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from appliance.config_file import ConfigError
from appliance.replication import kernel_tls

NO_PEER_PAIRED = "no peer is paired: every connection is refused"

log = logging.getLogger("appliance.replication.tls")


class TlsConfigError(ValueError):
    """The TLS settings cannot work; the message says which file or option to fix."""


class TlsRefused(Exception):
    """The peer's certificate is not accepted (or ours was not); the message says which."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path                      # this appliance's certificate (PEM)
    key: Path                       # its private key (PEM)
    ca: Path | None = None          # CA bundle that signs the peers' certificates, or
    peers: tuple[Path, ...] = ()    # the peers' own certificates, pinned (exactly one of two)
    kernel: bool = False            # the kernel encrypts where it can (kernel_tls.py)


def fingerprint(der: bytes) -> str:
    """``SHA256:AB:CD:...`` of a DER certificate: how pairing names a certificate (the shell
    shows and takes it; ``openssl x509 -noout -fingerprint -sha256`` prints it after ``=``)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def pem_certificates(text: str) -> list[bytes]:
    """The DER bytes of every certificate in a PEM text."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    ders, at = [], 0
    while (start := text.find(begin, at)) >= 0:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError("a certificate has no END line")
        ders.append(ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)]))
        at = stop + len(end)
    return ders


def _pem_fingerprints(label: str, path: Path) -> list[str]:
    try:
        ders = pem_certificates(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise TlsConfigError(f"tls {label} file {path} unusable: {err}") from err
    if not ders:
        raise TlsConfigError(f"tls {label} file {path} holds no PEM certificate")
    return [fingerprint(der) for der in ders]


def _load(ctx: ssl.SSLContext, cfg: TlsConfig, *, may_pin_none: bool = False) -> None:
    """``may_pin_none``: the receiver may pin no certificate yet (no appliance paired): the
    context then trusts nothing and every client certificate is refused."""
    files = [("cert", cfg.cert), ("key", cfg.key)]
    files += [("ca", cfg.ca)] if cfg.ca is not None else [("peers", p) for p in cfg.peers]
    if cfg.ca is not None and cfg.peers or (cfg.ca is None and not cfg.peers
                                             and not may_pin_none):
        raise TlsConfigError("tls needs exactly one of ca (a CA both sites trust) and peers "
                             "(the pinned certificates of the paired appliances)")
    for label, path in files:
        if not Path(path).is_file():
            raise TlsConfigError(f"tls {label} file {path} does not exist")
    try:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except (ssl.SSLError, OSError) as err:
        raise TlsConfigError(f"tls cert {cfg.cert} / key {cfg.key} unusable: {err}") from err
    for label, path in files[2:]:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (ssl.SSLError, OSError) as err:
            raise TlsConfigError(f"tls {label} file {path} unusable: {err}") from err
    if cfg.ca is None:
        # A pinned certificate is a trust anchor on its own: no issuer above it is looked for.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Receiver side: present our certificate, require and verify the primary's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(ctx, cfg, may_pin_none=True)
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


class TlsSide:
    """One end's TLS settings, checked once (TlsConfigError before anything starts); each
    connection then gets its own ``Handshake``."""

    def __init__(self, cfg: TlsConfig, *, server: bool) -> None:
        self.cfg = cfg
        self.server = server
        self.peer = "primary" if server else "receiver"
        self.context()                  # every file loads, or TlsConfigError now
        self.own = _pem_fingerprints("cert", cfg.cert)[0]
        # Pinned fingerprints (none: no peer paired yet, a receiver only), or None when a CA
        # vouches for the peers.
        self.pins: tuple[str, ...] | None = None
        if cfg.ca is None:
            self.pins = tuple(dict.fromkeys(
                fp for path in cfg.peers for fp in _pem_fingerprints("peers", path)))
        # Why connections stay in user space although ``kernel`` is set (None: they go to
        # the kernel): found at start, or after a connection the kernel took only in part.
        self.kernel_unused: str | None = (kernel_tls.kernel_module_missing() if cfg.kernel
                                          else None)

    @property
    def in_kernel(self) -> bool:
        """Whether the next connection's handshake hands its session to the kernel."""
        return self.cfg.kernel and self.kernel_unused is None

    def kernel_incomplete(self, err: kernel_tls.KernelTlsIncomplete, who: str) -> None:
        """A connection came out of the handshake with a direction missing in the kernel:
        the next ones use asyncio's TLS (a restart tries the kernel again). `who` names the
        daemon's side in the log ("volume UUID", "receiver NAME")."""
        self.kernel_unused = f"{err}; user space from then on"
        log.warning("%s: kernel TLS: %s", who, err)

    def user_space(self, ssl_object) -> str:
        """How a connection on asyncio's TLS is encrypted, for the status."""
        what = "user space"
        if ssl_object is not None:
            cipher = ssl_object.cipher()
            what += f", {ssl_object.version()} {cipher[0] if cipher else '?'}"
        if self.cfg.kernel:
            what += f" (kernel TLS: {self.kernel_unused})"
        return what

    def context(self) -> ssl.SSLContext:
        return server_context(self.cfg) if self.server else client_context(self.cfg)

    def describe(self) -> str:
        if self.pins is None:
            text = f"TLS, peers signed by {self.cfg.ca}"
        elif not self.pins:
            text = f"TLS, {NO_PEER_PAIRED}"
        else:
            text = f"TLS, {len(self.pins)} pinned peer certificate(s)"
        if self.in_kernel:
            return text + ", in the kernel (TLS 1.2)"
        if self.cfg.kernel:
            return text + f", in user space (kernel TLS: {self.kernel_unused})"
        return text

    def handshake(self) -> Handshake:
        return Handshake(self)


def check_tls_files(cfg: TlsConfig | None, *, server: bool, config_path: str) -> None:
    """Every [tls] file loads, or ConfigError naming the configuration file: the daemons run
    this when they read their file, so ``--check`` refuses what the start would (exit 2)."""
    if cfg is None:
        return
    try:
        TlsSide(cfg, server=server)
    except TlsConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from err


class Handshake:
    """One connection's TLS: a context of its own whose message hook keeps the certificate the
    peer presented (also when verification rejects it) and notes when ours went out."""

    def __init__(self, side: TlsSide) -> None:
        self.side = side
        self.presented: bytes | None = None     # the peer's certificate (DER)
        self.sent_ours = False
        self.context = side.context()
        if side.in_kernel:
            kernel_tls.configure(self.context)
        # (A debugging hook of Python's ssl, the only way to see a certificate the handshake
        # rejects. Without it a refusal just names no fingerprint.)
        with contextlib.suppress(AttributeError, TypeError):
            self.context._msg_callback = self._message  # type: ignore[attr-defined]

    def _message(self, conn, direction, version, content_type, msg_type, data) -> None:
        if (content_type != ssl._TLSContentType.HANDSHAKE            # type: ignore[attr-defined]
                or msg_type != ssl._TLSMessageType.CERTIFICATE):     # type: ignore[attr-defined]
            return
        if direction == "write":
            self.sent_ours = True
        elif self.presented is None:
            self.presented = _first_certificate(bytes(data), version == ssl.TLSVersion.TLSv1_3)

    def presented_fingerprint(self) -> str | None:
        return fingerprint(self.presented) if self.presented else None

    def _not_pinned(self, fp: str) -> str:
        pins = ", ".join(self.side.pins or ()) or f"none: {NO_PEER_PAIRED}"
        return (f"the {self.side.peer} presented certificate {fp}, which is not pinned here "
                f"(pinned: {pins})")

    def finished(self) -> None:
        """The handshake is over: drop the message hook. OpenSSL calls it for every record
        header and content type of the whole connection, not just the handshake's, and
        Python's wrapper turns each call into enum objects: with 16 KiB records that cost
        about as much CPU per GiB as the AES itself (docs/protocol.md, "Data path"). With the
        context's hook gone, CPython's C callback returns at once for this connection."""
        with contextlib.suppress(AttributeError, TypeError):
            self.context._msg_callback = None  # type: ignore[attr-defined]

    def check(self, ssl_object) -> None:
        """After the handshake: with pins, the peer's certificate must be one of them.
        (Called once the handshake succeeded, on both sides: the hook goes first.)"""
        self.finished()
        if self.side.pins is None:
            return
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise TlsRefused(f"the {self.side.peer} presented no certificate")
        fp = fingerprint(der)
        if fp not in self.side.pins:
            raise TlsRefused(self._not_pinned(fp))

    def _ours_dropped(self, err: BaseException) -> bool:
        return self.presented is None and self.sent_ours and (
            isinstance(err, ConnectionError | ssl.SSLEOFError) or "ALERT" in str(err).upper())

    def refused(self, err: BaseException) -> bool:
        """Whether a failed handshake is about a certificate (the peer's or ours)."""
        return isinstance(err, ssl.SSLCertVerificationError) or self._ours_dropped(err)

    def failure(self, err: BaseException) -> str:
        """A failed handshake in words, naming the certificates that crossed."""
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        fp = self.presented_fingerprint()
        if isinstance(err, ssl.SSLCertVerificationError) and fp is not None:
            if self.side.pins is not None and fp not in self.side.pins:
                return f"{self._not_pinned(fp)}: {err.verify_message}"
            return f"{detail} (the {self.side.peer} presented certificate {fp})"
        if self._ours_dropped(err):
            return self.ours_refused(detail)
        if fp is not None:
            return f"{detail} (the {self.side.peer} presented certificate {fp})"
        return detail

    def ours_refused(self, detail: str) -> str:
        """The peer dropped the connection once it had our certificate: most likely it does
        not pin (or trust) it."""
        trust = "pin" if self.side.pins is not None else "trust"
        return (f"the {self.side.peer} dropped the connection after receiving our certificate "
                f"{self.side.own}: it most likely does not {trust} it (its log names the "
                f"certificate it saw and those it pins) ({detail})")


def _first_certificate(msg: bytes, tls13: bool) -> bytes | None:
    """The first (leaf) certificate of a TLS Certificate handshake message, header included;
    None if it holds none or does not parse."""
    try:
        at = 4                                  # type (1), length (3)
        if tls13:
            at += 1 + msg[at]                   # certificate_request_context
        at += 3                                 # certificate_list length
        size = int.from_bytes(msg[at:at + 3], "big")
        der = msg[at + 3:at + 3 + size]
        return der if size and len(der) == size else None
    except IndexError:
        return None
