"""appliancectl: query and command the appliance daemons through their control sockets.

    appliancectl --socket /run/appliance/receiver.sock status
    appliancectl --socket /run/appliance/transmitter-<name>.sock status
    appliancectl --socket /run/appliance/transmitter-<name>.sock help
    appliancectl --socket /run/appliance/transmitter-<name>.sock call verify '{"repair": false}'

"help" lists the commands a daemon offers. Both daemons answer "status"; "verify" (an online
compare of the DR mirror with the primary's, optional "repair" and "region_bytes") is a
transmitter command, since the primary drives it (docs/protocol.md, "Online verify").
"""

from __future__ import annotations

import argparse
import json
import sys

from appliance.control.client import ControlError, call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="appliancectl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", required=True, help="control socket of the daemon")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("status", help="print the daemon's status as JSON")
    sub.add_parser("help", help="list the daemon's commands")
    c = sub.add_parser("call", help="run any command with JSON arguments")
    c.add_argument("cmd")
    c.add_argument("args", nargs="?", default="{}")
    ns = p.parse_args(argv)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
