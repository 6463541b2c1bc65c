"""A group whose second member joins at run time with data already on it (docs/groups.md):
the handler's group registry (appliance/tcmu/groups.py) serves member ``log`` and writes it;
then member ``extra``, whose mirror holds data, joins; then the process lingers as a handler
does (the transmitter's resync requests are taken by the volume's service loop).

    python join_writer.py --groups-dir D --data-dir V --uuid U --ops 200 --log DONE
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from appliance.journal import OpKind, WriteOp
from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.groups import GroupRegistry
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout

BS = 512
MEMBER_BYTES = 256 * 1024
stop = False


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--groups-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--uuid", type=uuid.UUID, required=True)
    p.add_argument("--ops", type=int, required=True)
    p.add_argument("--log", type=Path, required=True, help="'joined' once extra is a member")
    ns = p.parse_args()

    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    layout_path = ns.groups_dir / f"db{group_layout.SUFFIX}"
    if not layout_path.exists():        # what /replication/groups create writes
        group_layout.save(layout_path, GroupLayout("db", ns.uuid, BS, 128))
    reg = GroupRegistry(ns.groups_dir)
    opened = []
    log_cfg = MirrorConfig(str(ns.data_dir / "log.img"), None, group="db")
    group, log_member = reg.attach("log", log_cfg, MEMBER_BYTES, 64 * 1024)
    opened.append("log")
    for i in range(1, ns.ops + 1):
        lba = log_member.offset_blocks + i % (MEMBER_BYTES // BS)
        group.volume.submit([WriteOp(OpKind.WRITE, lba, 1, bytes([i % 251 + 1]) * BS)])
    group.volume.flush()
    # The new member's mirror already holds data (an existing disk taken into the group).
    extra = ns.data_dir / "extra.img"
    if not extra.exists():
        extra.write_bytes(os.urandom(MEMBER_BYTES))
    extra_cfg = MirrorConfig(str(extra), None, group="db")
    group, _ = reg.attach("extra", extra_cfg, MEMBER_BYTES, 64 * 1024)
    opened.append("extra")
    ns.log.write_text("joined")
    try:
        while not stop:
            group.volume.service()
            time.sleep(0.02)
    finally:
        for device in opened:
            reg.stopping(group, device)
            reg.detach(group, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
