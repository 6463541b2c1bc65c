"""A consistency group served as the handler serves it (appliance/tcmu/groups.py: the group
registry over a groups directory, one device per member), with a random workload over its
members logged like repl_writer.py's (``index kind lba nblocks``, the LBA in the group's
address space, logged before it is submitted; a restart submits the last logged op again).

A new group's layout is made as '/replication/groups create' makes it; with ``--promoted`` it
is made over the members of a promoted group replica, as '/replication/groups create
promoted=' does (appliance/volume/promoted_group.py). After the ops the process lingers like
an idle handler (the transmitter's resync requests are taken by the volume's service loop)
until SIGTERM.

    python group_site_writer.py --groups-dir G --uuid U --member log=/v/log.img:8192 \
        --member data=/v/data.img:8192 --log L --ops 200 --seed 1 [--promoted P]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repl_harness import LoggedOp, random_op, read_log
from repl_writer import to_write_op

from appliance.tcmu.cfgstring import MirrorConfig
from appliance.tcmu.groups import GroupRegistry
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout
from appliance.volume.promoted_group import serve_promoted_group

NAME = "db"
BS = 512
ALIGN = 128                     # 64 KiB chunks
JOURNAL = 8 << 20


def member_arg(text: str) -> tuple[str, str, int]:
    name, rest = text.split("=", 1)
    path, blocks = rest.rsplit(":", 1)
    return name, path, int(blocks)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--groups-dir", type=Path, required=True)
    p.add_argument("--uuid", type=uuid.UUID, required=True)
    p.add_argument("--member", type=member_arg, action="append", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--ops", type=int, required=True, help="stop after the log has this many")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--promoted", type=Path, default=None)
    ns = p.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    layout_path = ns.groups_dir / f"{NAME}{group_layout.SUFFIX}"
    if not layout_path.exists():
        ns.groups_dir.mkdir(parents=True, exist_ok=True)
        if ns.promoted is not None:
            serve_promoted_group(ns.promoted, layout_path, name=NAME, group_uuid=ns.uuid,
                                 journal_size=JOURNAL)
        else:
            group_layout.save(layout_path, GroupLayout(NAME, ns.uuid, BS, ALIGN,
                                                       journal_size=JOURNAL))
    reg = GroupRegistry(ns.groups_dir)
    group = None
    members = []
    for name, path, blocks in ns.member:
        group, member = reg.attach(name, MirrorConfig(path, None, group=NAME), blocks * BS,
                                   64 * 1024)
        members.append(member)
    assert group is not None
    vol = group.volume
    done = read_log(ns.log)
    ns.log.write_text("".join(f"{o.index} {o.kind} {o.lba} {o.nblocks}\n" for o in done))
    rng = random.Random(ns.seed * 7919 + len(done))
    try:
        if done:
            vol.submit([to_write_op(done[-1])], fua=True)   # may not have been submitted
        with open(ns.log, "a", buffering=1) as log:
            for index in range(len(done) + 1, ns.ops + 1):
                m = rng.choice(members)
                op = random_op(rng, index, m.num_blocks)
                op = LoggedOp(op.index, op.kind, op.lba + m.offset_blocks, op.nblocks)
                log.write(f"{op.index} {op.kind} {op.lba} {op.nblocks}\n")
                log.flush()
                vol.submit([to_write_op(op)])
                if index % 20 == 0:
                    vol.flush()
        vol.flush()
        print("writer: ops done", flush=True)
        while not stop:
            vol.service()
            time.sleep(0.02)
    finally:
        for name, _, _ in ns.member:
            reg.stopping(group, name)
            reg.detach(group, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
