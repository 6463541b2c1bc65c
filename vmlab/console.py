"""Reach a running lab VM from a terminal.

    python -m vmlab.console DIR              interactive serial console (root shell; Ctrl-] quits)
    python -m vmlab.console DIR -- CMD ...   run CMD in the VM through the agent, print its output

DIR is the VM's lab directory (the demo prints it), holding console.sock and agent.sock.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import termios
import tty
from pathlib import Path

from vmlab.agentclient import AgentClient, AgentError

ESCAPE = b"\x1d"  # Ctrl-]


def interactive(console_sock: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(console_sock))
    except OSError as err:
        print(f"cannot connect to {console_sock}: {err} (is the VM running? is another "
              "console attached?)", file=sys.stderr)
        return 1
    print("connected to the serial console; press Enter for a prompt, Ctrl-] to quit",
          file=sys.stderr)
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setraw(stdin)
        while True:
            ready, _, _ = select.select([stdin, sock], [], [])
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    return 0
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data or ESCAPE in data:
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
        print("\r\ndisconnected", file=sys.stderr)


def run_remote(agent_sock: Path, argv: list[str], timeout: float) -> int:
    try:
        client = AgentClient(agent_sock, agent_sock.parent.name)
    except OSError as err:
        print(f"cannot connect to {agent_sock}: {err}", file=sys.stderr)
        return 1
    try:
        result = client.run(argv, timeout=timeout, check=False)
    except AgentError as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        client.close()
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return 124 if result.timed_out else result.rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmlab.console", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the VM's lab directory")
    parser.add_argument("--timeout", type=float, default=120.0, help="for a command (seconds)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        return run_remote(args.dir / "agent.sock", command, args.timeout)
    return interactive(args.dir / "console.sock")


if __name__ == "__main__":
    sys.exit(main())
