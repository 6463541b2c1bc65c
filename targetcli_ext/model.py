"""The site's persistent replication model: its identity, listen address and paired peers.

One small JSON file (``site.json``, 0600, replaced atomically) in a state directory passed in
(default ``/var/lib/appliance/replication``), so the shell writes it and the daemons later read
the same file. Every change is validated first and applied as load-modify-save under a lock:
input that does not parse is refused with a message naming what to fix, and nothing changes.

Format (version 1)::

    {"version": 1, "identity": "site-a", "listen": "0.0.0.0:7700",
     "peers": {"dr": {"address": "192.0.2.2:7700", "fingerprint": "SHA256:AB:...:EF"}}}
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/appliance/replication")
SITE_FILE = "site.json"
FORMAT_VERSION = 1
DEFAULT_LISTEN = "0.0.0.0:7700"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_HEX = re.compile(r"[0-9A-Fa-f]{64}")


class ModelError(ValueError):
    """Input or a state file refused; the message says what to fix."""


# --- parsing ------------------------------------------------------------------------------


def parse_name(text: str, what: str = "name") -> str:
    """A peer or site name: also a node name in the shell and a certificate name."""
    if not _NAME.fullmatch(text or ""):
        raise ModelError(f"{what} {text!r} is not valid: use 1-63 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit")
    return text


def parse_address(text: str, what: str = "address") -> str:
    """``host:port`` (``[v6]:port`` for IPv6), normalised; the port is required."""
    example = f"use host:port, e.g. {what}=192.0.2.2:7700 or {what}=[2001:db8::2]:7700"
    if not text:
        raise ModelError(f"{what} is empty: {example}")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ModelError(f"{what} {text!r} does not parse: {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise ModelError(f"{what} {text!r}: {host!r} is not an IPv6 address; "
                             f"{example}") from err
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ModelError(f"{what} {text!r} has no port: {example}")
        if ":" in host:
            raise ModelError(f"{what} {text!r}: put an IPv6 address in brackets; {example}")
        if not _is_ipv4(host) and not _HOSTNAME.fullmatch(host):
            raise ModelError(f"{what} {text!r}: {host!r} is neither an IPv4 address nor a "
                             f"host name; {example}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ModelError(f"{what} {text!r}: port {port!r} is not a number from 1 to 65535; "
                         f"{example}")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def parse_fingerprint(text: str) -> str:
    """``SHA256:`` and the certificate's SHA-256 as 64 hex digits, with or without colons
    (``openssl x509 -noout -fingerprint -sha256`` prints them with); normalised to
    ``SHA256:AB:CD:...`` in upper case, the form ``/replication info`` shows."""
    how = ("use SHA256: and 64 hex digits as '/replication info' shows on the peer, or "
           "'openssl x509 -noout -fingerprint -sha256 -in <peer certificate>'")
    prefix, sep, digits = (text or "").partition(":")
    if not sep or prefix.upper() != "SHA256":
        raise ModelError(f"fingerprint {text!r} does not start with SHA256: ; {how}")
    digits = digits.replace(":", "")
    if not _HEX.fullmatch(digits):
        raise ModelError(f"fingerprint {text!r} is not 32 bytes in hex after SHA256: ; {how}")
    return "SHA256:" + ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    fingerprint: str

    def to_dict(self) -> dict:
        return {"address": self.address, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Site:
    identity: str | None = None        # None until first use: then the host name
    listen: str = DEFAULT_LISTEN
    peers: dict[str, Peer] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "identity": self.identity, "listen": self.listen,
                "peers": {n: p.to_dict() for n, p in sorted(self.peers.items())}}

    @classmethod
    def from_dict(cls, d: object, where: Path) -> Site:
        fix = f"; repair or move away {where} (it holds the site identity and peers)"
        if not isinstance(d, dict):
            raise ModelError(f"{where} is not a JSON object{fix}")
        version = d.get("version")
        if version != FORMAT_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) \
                    and version > FORMAT_VERSION:
                raise ModelError(f"{where} has format version {version}, newer than this "
                                 f"release reads ({FORMAT_VERSION}): run the release that "
                                 f"wrote it")
            raise ModelError(f"{where} has format version {version!r}, expected "
                             f"{FORMAT_VERSION}{fix}")
        try:
            identity = d.get("identity")
            if identity is not None:
                identity = parse_name(identity, "identity")
            peers = {}
            raw = d.get("peers", {})
            if not isinstance(raw, dict):
                raise ModelError("'peers' is not an object")
            for name, p in raw.items():
                if not isinstance(p, dict):
                    raise ModelError(f"peer {name!r} is not an object")
                peers[name] = Peer(parse_name(name, "peer name"),
                                   parse_address(p.get("address", "")),
                                   parse_fingerprint(p.get("fingerprint", "")))
            return cls(identity=identity, listen=parse_address(d.get("listen", ""), "listen"),
                       peers=peers)
        except ModelError as err:
            raise ModelError(f"{where}: {err}{fix}") from err


class SiteStore:
    """``site.json`` in ``state_dir``: read fresh for every question, changed under a lock."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SITE_FILE

    def load(self) -> Site:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Site()
        except OSError as err:
            raise ModelError(f"cannot read {self.path}: {err}") from err
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelError(f"{self.path} is not JSON ({err}); repair or move it away (it "
                             f"holds the site identity and peers)") from err
        return Site.from_dict(d, self.path)

    def ensure_identity(self) -> Site:
        """The site, its identity set to the host name on first use."""
        with self._locked():
            site = self.load()
            if site.identity is None:
                host = socket.gethostname().split(".")[0]
                site = replace(site, identity=parse_name(host, "host name"))
                self._save(site)
            return site

    def add_peer(self, name: str, address: str, fingerprint: str) -> Peer:
        peer = Peer(parse_name(name, "peer name"), parse_address(address),
                    parse_fingerprint(fingerprint))
        with self._locked():
            site = self.load()
            if peer.name in site.peers:
                raise ModelError(f"peer name {peer.name!r} is in use (address "
                                 f"{site.peers[peer.name].address}): choose another name, "
                                 f"or delete name={peer.name} first")
            for other in site.peers.values():
                if other.fingerprint == peer.fingerprint:
                    raise ModelError(f"fingerprint {peer.fingerprint} is already paired as "
                                     f"peer {other.name!r}: one peer, one name")
            self._save(replace(site, peers={**site.peers, peer.name: peer}))
        return peer

    def remove_peer(self, name: str) -> Peer:
        with self._locked():
            site = self.load()
            if name not in site.peers:
                known = ", ".join(sorted(site.peers)) or "none"
                raise ModelError(f"no peer named {name!r} (peers: {known})")
            peer = site.peers[name]
            self._save(replace(site, peers={n: p for n, p in site.peers.items() if n != name}))
        return peer

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / ".site.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, site: Site) -> None:
        """Write a new file beside the old one, fsync it, rename it over: a crash leaves the
        old file or the new one, never a torn one."""
        tmp = self.path.with_name(f".{SITE_FILE}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(site.to_dict(), f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dfd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
