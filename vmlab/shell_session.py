"""An interactive targetcli session through a pseudo-terminal inside a VM, as an admin at the
console types it: readline's Tab completion, the coloured prompt and ``help`` work only on a
terminal, so a pipe would not test them.

The guest side (``PTY_DRIVER``, stdlib only) forks the command on a pty (200 columns), sends
each step's keystrokes and reads until the step's pattern matches in the output (ANSI escapes
and carriage returns removed), bounded by the step's timeout; it returns the transcript as
JSON. A step that does not match ends the session (the command is killed) and says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from vmlab.machine import Machine, MachineError

PTY_DRIVER = r"""
import fcntl, json, os, pty, re, select, signal, struct, sys, termios, time
steps, argv = json.loads(sys.argv[1]), sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.environ["TERM"] = "xterm"
    os.execvp(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>()][0-9A-B]?|\r|\x07")
def read_until(pattern, timeout):
    buf, deadline = b"", time.monotonic() + timeout
    while True:
        text = ANSI.sub("", buf.decode(errors="replace"))
        if re.search(pattern, text, re.S):
            return text, True
        left = deadline - time.monotonic()
        if left <= 0:
            return text, False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return text, False   # EIO: the command ended
        if not chunk:
            return text, False
        buf += chunk
transcript = []
for step in steps:
    if step.get("send"):
        os.write(fd, step["send"].encode())
    text, ok = read_until(step["until"], step.get("timeout", 60))
    transcript.append({"send": step.get("send", ""), "until": step["until"], "output": text,
                       "matched": ok})
    if not ok:
        break
if not all(t["matched"] for t in transcript) or len(transcript) < len(steps):
    os.kill(pid, signal.SIGKILL)
try:
    _, status = os.waitpid(pid, 0)
except ChildProcessError:
    status = None
print(json.dumps({"transcript": transcript, "status": status}))
"""


@dataclass(frozen=True)
class Step:
    send: str            # keystrokes ("\t" is Tab, "\r" Enter, "\x15" clears the line)
    until: str           # regular expression the output after them must match
    timeout: float = 60.0


@dataclass(frozen=True)
class Exchange:
    send: str
    output: str


def pty_session(machine: Machine, argv: list[str], steps: list[Step], *,
                timeout: float = 300.0) -> list[Exchange]:
    """Run argv on a terminal in the VM and play steps; raises naming the step whose
    pattern never appeared, with everything the terminal showed up to then."""
    payload = json.dumps([{"send": s.send, "until": s.until, "timeout": s.timeout} for s in steps])
    result = machine.run(["python3", "-c", PTY_DRIVER, payload, *argv], timeout=timeout, check=False)
    if result.rc != 0 or result.timed_out:
        raise MachineError(f"{machine.name}: the pty session did not run: {result.describe()}")
    transcript = json.loads(result.text)["transcript"]
    exchanges = [Exchange(t["send"], t["output"]) for t in transcript]
    if len(transcript) < len(steps) or not transcript[-1]["matched"]:
        shown = "".join(f"\n>>> {t['send']!r}\n{t['output']}" for t in transcript)
        failed = steps[len(transcript) - 1] if transcript else steps[0]
        raise MachineError(f"{machine.name}: after typing {failed.send!r} the terminal never showed "
                           f"{failed.until!r} within {failed.timeout:.0f} s; session:{shown}")
    return exchanges


def prompt(path: str) -> str:
    """targetcli's prompt at path, at the end of the output (a pattern)."""
    return re.escape(f"{path}> ") + r"$"
