"""A peer appliance's receiver as pairing sees it: a real TLS server on 127.0.0.1 presenting a
certificate made as '/replication info' makes one, requiring a client certificate (as the
receiver does), so the shell's fetch meets what it meets on an appliance."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

from targetcli_ext.identity import SiteCertificate, ensure_certificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerServer:
    def __init__(self, state_dir: Path, identity: str = "dr-site", port: int = 0,
                 max_version: ssl.TLSVersion | None = None) -> None:
        self.cert: SiteCertificate = ensure_certificate(state_dir, identity)
        self.identity = identity
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert.cert), str(self.cert.key))
        ctx.load_verify_locations(cafile=str(self.cert.cert))
        ctx.verify_mode = ssl.CERT_REQUIRED
        if max_version is not None:
            ctx.maximum_version = max_version
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.refused_clients = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pem(self) -> str:
        return self.cert.cert.read_text()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                self.refused_clients += 1       # no client certificate: refused, as a receiver
            finally:
                with contextlib.suppress(OSError):
                    conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)
