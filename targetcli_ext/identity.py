"""The site's key pair and self-signed certificate, created on first use in the state directory.

Peers pin each other's certificate by its SHA-256 fingerprint (``SHA256:AB:CD:...``), as
with SSH host keys, so no CA is needed; a CA-signed certificate can later replace these two
files. The key is an EC P-256 key made by the ``openssl`` command (on the image; the
``cryptography`` package is no dependency of ours), written 0600 inside a private temporary
directory and renamed into place key first, certificate last: a crash in between leaves a key
without a certificate, which is made again as a pair.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.replication.tls import fingerprint
from targetcli_ext.model import ModelError

CERT_FILE = "site.pem"
KEY_FILE = "site.key"
# Pinned by fingerprint, so expiry only gets in the way: 100 years.
VALID_DAYS = 36500


class IdentityError(ModelError):
    """The site's certificate or key cannot be made or read; the message says what to do."""


@dataclass(frozen=True)
class SiteCertificate:
    cert: Path
    key: Path
    fingerprint: str         # SHA256:AB:CD:... of the DER certificate


def fingerprint_of_pem(pem: str) -> str:
    """``SHA256:`` and the colon-separated SHA-256 of the certificate's DER bytes (what
    ``openssl x509 -noout -fingerprint -sha256`` prints after ``=``)."""
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


def load_certificate(state_dir: Path) -> SiteCertificate | None:
    """The site's certificate, or None when there is none yet (or only half of a pair)."""
    cert, key = Path(state_dir) / CERT_FILE, Path(state_dir) / KEY_FILE
    if not (cert.exists() and key.exists()):
        return None
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(f"{key} is readable by others (mode {mode:o}): the site's "
                            f"private key must be 0600; run 'chmod 600 {key}'")
    try:
        pem = cert.read_text()
        return SiteCertificate(cert, key, fingerprint_of_pem(pem))
    except (OSError, ValueError) as err:
        raise IdentityError(f"{cert} cannot be read as a PEM certificate ({err}); move "
                            f"{cert} and {key} away to make a new pair (peers must then "
                            f"pair again with the new fingerprint)") from err


def ensure_certificate(state_dir: Path, identity: str) -> SiteCertificate:
    """The site's certificate, made with ``identity`` as its name when there is none."""
    state_dir = Path(state_dir)
    found = load_certificate(state_dir)
    if found is not None:
        return found
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".newcert-", dir=state_dir))   # 0700
    try:
        key, cert = work / KEY_FILE, work / CERT_FILE
        os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(VALID_DAYS),
                 "-subj", f"/CN={identity}", "-addext", f"subjectAltName=DNS:{identity}")
        os.chmod(key, 0o600)        # openssl may have replaced the file we made
        for path in (key, cert):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.replace(key, state_dir / KEY_FILE)
        os.replace(cert, state_dir / CERT_FILE)
        dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    made = load_certificate(state_dir)
    assert made is not None
    return made


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True,
                       timeout=60)
    except FileNotFoundError as err:
        raise IdentityError("the 'openssl' command is not installed: install the openssl "
                            "package to create the site's certificate") from err
    except subprocess.CalledProcessError as err:
        raise IdentityError(f"openssl could not create the site's certificate: "
                            f"{err.stderr.strip() or err}") from err
    except subprocess.TimeoutExpired as err:
        raise IdentityError("openssl took over 60 s to create the site's certificate") \
            from err
