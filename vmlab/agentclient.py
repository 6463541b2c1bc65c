"""Host side of the lab agent protocol (see ``vmlab.agent``): run commands in a VM."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path


class AgentError(RuntimeError):
    """The agent did not answer, or a command failed; the message says which and where."""


class AgentTimeout(AgentError):
    """No reply within the deadline (the VM hung, rebooted or the command never ended)."""


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    rc: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def describe(self) -> str:
        how = "timed out" if self.timed_out else f"exit {self.rc}"
        err = self.stderr.decode(errors="replace").strip()[-2000:]
        out = self.stdout.decode(errors="replace").strip()[-2000:]
        return f"{' '.join(self.argv)!r}: {how} after {self.seconds:.1f} s\nstdout: {out}\nstderr: {err}"


class AgentClient:
    """Talks to one VM's agent through qemu's unix socket for the virtio-serial port.

    Calls may come from several threads; a reader thread matches replies to requests by id.
    The connection survives guest reboots (qemu keeps the socket); requests in flight then
    time out."""

    def __init__(self, socket_path: Path, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(socket_path))
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[dict]]] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name=f"agent-{name}", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        buf = b""
        while not self._closed:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue  # a torn line from before a reboot
                with self._lock:
                    slot = self._waiting.get(reply.get("id"))
                if slot:
                    slot[1].append(reply)
                    slot[0].set()

    def request(self, payload: dict, timeout: float) -> dict:
        req_id = next(self._ids)
        event: threading.Event = threading.Event()
        box: list[dict] = []
        with self._lock:
            self._waiting[req_id] = (event, box)
        try:
            data = (json.dumps({"id": req_id, **payload}) + "\n").encode()
            try:
                self.sock.sendall(data)
            except OSError as err:
                raise AgentError(f"{self.name}: cannot send to the agent: {err}") from err
            if not event.wait(timeout):
                raise AgentTimeout(f"{self.name}: no reply from the agent within {timeout:.0f} s "
                                   f"to {payload.get('op')} {payload.get('argv') or payload.get('shell')!r}")
            reply = box[0]
        finally:
            with self._lock:
                self._waiting.pop(req_id, None)
        if "error" in reply:
            raise AgentError(f"{self.name}: agent refused the request: {reply['error']}")
        return reply

    def ping(self, timeout: float = 2.0) -> dict:
        return self.request({"op": "ping"}, timeout)

    def wait_ready(self, timeout: float, on_wait=None) -> dict:
        """Ping until the agent answers; raises AgentTimeout naming how long it waited."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ping(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except AgentTimeout:
                if on_wait:
                    on_wait()
                if time.monotonic() >= deadline:
                    raise AgentTimeout(f"{self.name}: agent did not come up within {timeout:.0f} s") from None

    def run(self, argv: list[str] | str, *, timeout: float = 60.0, check: bool = True,
            stdin: bytes = b"") -> CommandResult:
        """Run argv (or a shell string) in the guest, bounded by timeout (killed after it)."""
        if isinstance(argv, str):
            payload = {"op": "run", "shell": argv}
            shown = ["sh", "-c", argv]
        else:
            payload = {"op": "run", "argv": list(argv)}
            shown = list(argv)
        payload["timeout"] = timeout
        if stdin:
            payload["stdin"] = base64.b64encode(stdin).decode()
        reply = self.request(payload, timeout + 15.0)
        result = CommandResult(argv=shown, rc=reply["rc"], stdout=base64.b64decode(reply["stdout"]),
                               stderr=base64.b64decode(reply["stderr"]),
                               timed_out=reply["timed_out"], seconds=reply["seconds"])
        if check and (result.rc != 0 or result.timed_out):
            raise AgentError(f"{self.name}: command failed: {result.describe()}")
        return result

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=2)
