"""Guest side of the VM lab: runs commands sent over a virtio-serial port.

Runs inside the appliance (``python -m vmlab.agent /dev/virtio-ports/org.drappliance.lab``,
started by udev only when the lab attaches that port). Stdlib only.

Protocol: one JSON object per line in each direction.

- request  ``{"id": 7, "op": "run", "argv": [...], "timeout": 30, "stdin": "<base64>"}``
  (``"shell": "..."`` instead of ``argv`` runs ``/bin/sh -c``)
- reply    ``{"id": 7, "rc": 0, "stdout": "<base64>", "stderr": "<base64>",
  "timed_out": false, "seconds": 0.12}``
- request  ``{"id": 8, "op": "ping"}`` → ``{"id": 8, "boot_id": "...", "uptime": 12.3}``

Each request runs in its own thread, so a long command does not block a ping. A command
that outlives its timeout is killed with its whole process group and reported as
``timed_out``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

IDLE_POLL_SECONDS = 0.5
MAX_LINE = 64 * 2**20


class Port:
    """The virtio-serial character device, reopened when the host side goes away."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.write_lock = threading.Lock()

    def send(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with self.write_lock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    select.select([], [self.fd], [], IDLE_POLL_SECONDS)
                    continue
                view = view[n:]

    def lines(self):
        """Yield request lines forever; waits out host disconnects (POLLHUP)."""
        buf = b""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            events = poller.poll(IDLE_POLL_SECONDS * 1000)
            if not events:
                continue
            _, mask = events[0]
            if not mask & select.POLLIN:
                time.sleep(IDLE_POLL_SECONDS)  # host not connected
                continue
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                time.sleep(IDLE_POLL_SECONDS)
                continue
            buf += chunk
            if len(buf) > MAX_LINE:
                buf = b""  # garbage; the host's request will time out and say so
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield line


def run_command(req: dict) -> dict:
    argv = req.get("argv") or ["/bin/sh", "-c", req["shell"]]
    stdin = base64.b64decode(req["stdin"]) if req.get("stdin") else b""
    timeout = float(req.get("timeout", 60))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as err:
        return {"rc": 127, "stdout": "", "stderr": base64.b64encode(str(err).encode()).decode(),
                "timed_out": False, "seconds": 0.0}
    timed_out = False
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return {"rc": proc.returncode, "stdout": base64.b64encode(out).decode(),
            "stderr": base64.b64encode(err).decode(), "timed_out": timed_out,
            "seconds": round(time.monotonic() - started, 3)}


def ping() -> dict:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return {"boot_id": boot_id, "uptime": uptime}


def handle(port: Port, line: bytes) -> None:
    try:
        req = json.loads(line)
        op = req.get("op")
        if op == "ping":
            reply = ping()
        elif op == "run":
            reply = run_command(req)
        else:
            reply = {"error": f"unknown op {op!r}"}
        reply["id"] = req.get("id")
    except (ValueError, KeyError, TypeError) as err:
        reply = {"id": None, "error": f"bad request: {err}"}
    port.send(reply)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vmlab.agent /dev/virtio-ports/<name>", file=sys.stderr)
        return 2
    port = Port(args[0])
    for line in port.lines():
        threading.Thread(target=handle, args=(port, line), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
