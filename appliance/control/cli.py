"""appliancectl: query and command the appliance daemons through their control sockets.

    appliancectl status                  every local daemon, one block per volume (human form)
    appliancectl --socket /run/appliance/receiver.sock status
    appliancectl --socket /run/appliance/transmitter-<name>.sock status --json
    appliancectl --socket /run/appliance/transmitter-<name>.sock help
    appliancectl --socket /run/appliance/transmitter-<name>.sock call verify '{"repair": false}'

"status" prints what `targetcli /replication status` prints (docs/shell.md): without --socket
for every daemon of this appliance (the handler's, the receiver's and each transmitter's
socket), with --socket for that daemon alone; --json prints the daemon's raw status instead
(docs/protocol.md, "Status"), for scripts. "help" lists the commands a daemon offers. Both
replication daemons answer "status"; "verify" (an online compare of the DR mirror with the
primary's, optional "repair" and "region_bytes") is a transmitter command, since the primary
drives it (docs/protocol.md, "Online verify").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from appliance.control.client import ControlError, call
from appliance.daemon_entry import add_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliancectl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", help="control socket of the daemon (status: optional)")
    parser.add_argument("--timeout", type=float, default=10.0)
    add_version(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    status_parser = sub.add_parser("status", help="print the replication status (human form)")
    status_parser.add_argument("--json", action="store_true",
                               help="print the daemon's raw status as JSON")
    sub.add_parser("help", help="list the daemon's commands")
    call_parser = sub.add_parser("call", help="run any command with JSON arguments")
    call_parser.add_argument("cmd")
    call_parser.add_argument("args", nargs="?", default="{}")
    ns = parser.parse_args(argv)
    if ns.socket is None and not (ns.action == "status" and not ns.json):
        parser.error(f"{ns.action}{' --json' if ns.action == 'status' else ''} needs --socket")
    try:
        if ns.action == "status" and not ns.json:
            print(_status_text(ns.socket, ns.timeout), end="")
            return 0
        if ns.action == "call":
            try:
                args = json.loads(ns.args)
            except json.JSONDecodeError as err:
                print(f"appliancectl: arguments are not JSON: {err}", file=sys.stderr)
                return 2
            result = call(ns.socket, ns.cmd, args, timeout=ns.timeout)
        else:
            result = call(ns.socket, ns.action, timeout=ns.timeout)
    except ControlError as err:
        print(f"appliancectl: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _status_text(socket: str | None, timeout: float) -> str:
    """The human status of one daemon, or of every daemon of this appliance."""
    from targetcli_ext import daemons, status_text
    from targetcli_ext.config import ShellConfig
    from targetcli_ext.model import ModelError, SiteStore

    config = ShellConfig.from_env()
    if socket is None:
        snapshot = daemons.collect(config.sockets, timeout=timeout)
    else:
        result = call(socket, "status", timeout=timeout)
        if isinstance(result, dict) and result.get("role") == "exporter":   # alerts only
            return status_text.render_alerts(result, now=time.time()) + "\n"
        try:
            snapshot = daemons.snapshot_of(result, Path(socket))
        except ValueError as err:
            print(f"appliancectl: {err}", file=sys.stderr)
            return json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
    try:
        peers = {p.address: p.name for p in SiteStore(config.state_dir).load().peers.values()}
    except (ModelError, OSError):
        peers = {}          # peer names are a courtesy: the status shows without them
    return status_text.render_status(snapshot, now=time.time(), peer_names=peers)


if __name__ == "__main__":
    sys.exit(main())
