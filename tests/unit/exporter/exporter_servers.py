"""Loopback servers for the exporter's tests: a webhook receiver (a real http.server), a dead
webhook (accepts TCP, never answers) and a journald stand-in (a datagram socket)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class WebhookReceiver:
    """Records each JSON body POSTed; ``answers`` gives the status codes to send in turn
    (then 200)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.bodies: list[dict] = []
        self.answers = list(answers or [])
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer._lock:
                    code = outer.answers.pop(0) if outer.answers else 200
                    if code == 200:
                        outer.bodies.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DeadWebhook:
    """Accepts connections and never answers (a hung webhook)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def parse_entry(data: bytes) -> dict[str, str]:
    """A native-protocol datagram back to its fields."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 9
            fields[line.decode()] = data[start:start + size].decode()
            assert data[start + size:start + size + 1] == b"\n"
            i = start + size + 1
    return fields


class FakeJournal:
    """A datagram socket where journald's would be; ``entries()`` drains what arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self._entries: list[dict[str, str]] = []

    def entries(self) -> list[dict[str, str]]:
        while True:
            try:
                self._entries.append(parse_entry(self.sock.recv(1 << 16)))
            except BlockingIOError:
                return list(self._entries)

    def close(self) -> None:
        self.sock.close()


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class RunningExporter:
    """An Exporter (appliance.exporter.daemon) served by its own event loop in a thread,
    stopped by ``close``; ``url`` is its metrics endpoint."""

    def __init__(self, exporter) -> None:
        import asyncio

        self.exporter = exporter
        self._asyncio = asyncio
        self._loop = None
        self._stop = None
        self.error: BaseException | None = None
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            started.set()
            await exporter.run(self._stop)

        def body() -> None:
            try:
                asyncio.run(main())
            except BaseException as err:    # surfaced by wait_ready / close
                self.error = err
                started.set()

        self.thread = threading.Thread(target=body, name="exporter", daemon=True)
        self.thread.start()
        started.wait(10)

    def wait_ready(self, timeout: float = 10) -> RunningExporter:
        wait_until(lambda: self.error is not None or (
            self.exporter.http is not None and self.exporter.cfg.control_socket.exists()),
            timeout, "the exporter's endpoint and control socket")
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        host, port = self.exporter.http.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def scrape(self) -> str:
        import urllib.request
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            return resp.read().decode()

    def close(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(15)
        assert not self.thread.is_alive(), "the exporter did not stop within 15 s"
