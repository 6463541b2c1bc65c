"""A dependent-write workload over two LUNs, a database's log and data (docs/groups.md):
write i goes to the log LUN, and only once it completed does write i go to the data LUN, at
the same slot (i mod SLOTS), each block holding i. A DR image where a data slot holds a newer
i than the log slot broke the write order across the LUNs.

``--group``: the two LUNs are members of one consistency group (one journal, one sequence
space, the mirror their concatenation); otherwise two separate volumes, each with its own
journal (the control: nothing orders them across).

    python group_writer.py --dir D --group --uuid U --ops 3000 --pause 0.002
    python group_writer.py --dir D --uuid U --data-uuid U2 --ops 3000
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import time
import uuid
from pathlib import Path

from appliance.journal import OpKind, WriteOp
from appliance.volume import Volume, VolumeConfig, group_layout
from appliance.volume.group_layout import GroupLayout

SLOTS = 64                     # slots per LUN, one block each
MEMBER_BLOCKS = 256            # 128 KiB per LUN: two 64 KiB chunks
CHUNK = 64 * 1024
BS = 512
JOURNAL = 64 << 20            # no overflow: the test is about the journal's order


def block(i: int) -> bytes:
    return struct.pack("<Q", i) * (BS // 8)


def index_of(raw: bytes) -> int | None:
    """The i a block holds (0: never written), None if torn or foreign."""
    (i,) = struct.unpack_from("<Q", raw)
    return i if raw == block(i) or not any(raw) else None


def slots(image: bytes) -> list[int | None]:
    return [index_of(image[s * BS:(s + 1) * BS]) for s in range(SLOTS)]


def layout(d: Path, gid: uuid.UUID, mirrors: tuple[Path, Path]) -> GroupLayout:
    g = GroupLayout("db", gid, BS, CHUNK // BS)
    g = g.with_member("log", str(mirrors[0]), MEMBER_BLOCKS)
    return g.with_member("data", str(mirrors[1]), MEMBER_BLOCKS)


def config(vid: uuid.UUID, d: Path, mirror: Path, blocks: int,
           journal_size: int = JOURNAL) -> VolumeConfig:
    d.mkdir(parents=True, exist_ok=True)
    return VolumeConfig(uuid=vid, num_blocks=blocks, block_size=BS, journal_size=journal_size,
                        max_transfer_bytes=64 * 1024, chunk_size=CHUNK, mirror_path=mirror,
                        journal_path=d / "journal", bitmap_path=d / "bitmap")


stop = False


def done(path: Path, i: int) -> None:
    """The last i written to both LUNs, replaced atomically: a writer killed mid-update must
    not restart from 1 (i would go back, which the order check reads as a violation)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(i))
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--uuid", type=uuid.UUID, required=True)
    p.add_argument("--data-uuid", type=uuid.UUID, default=None)
    p.add_argument("--group", action="store_true")
    p.add_argument("--ops", type=int, required=True)
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--log", type=Path, required=True, help="the last i completed on both")
    p.add_argument("--journal-size", type=int, default=JOURNAL)
    ns = p.parse_args()

    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    if ns.group:
        path = ns.dir / "db.group.json"
        if not path.exists():
            group_layout.save(path, layout(ns.dir, ns.uuid, (ns.dir / "log.img",
                                                             ns.dir / "data.img")))
        vol = Volume.open(config(ns.uuid, ns.dir, path, group_layout.load(path).num_blocks,
                                 ns.journal_size))
        log_vol, data_vol, data_base = vol, vol, group_layout.load(path).member("data") \
            .offset_blocks
    else:
        log_vol = Volume.open(config(ns.uuid, ns.dir / "log", ns.dir / "log.img",
                                     MEMBER_BLOCKS))
        data_vol = Volume.open(config(ns.data_uuid, ns.dir / "data", ns.dir / "data.img",
                                      MEMBER_BLOCKS))
        data_base = 0
    start = int(ns.log.read_text() or 0) + 1 if ns.log.exists() else 1
    try:
        for i in range(start, ns.ops + 1):
            if stop:
                break
            slot = i % SLOTS
            log_vol.submit([WriteOp(OpKind.WRITE, slot, 1, block(i))])     # completes first
            data_vol.submit([WriteOp(OpKind.WRITE, data_base + slot, 1, block(i))])
            done(ns.log, i)
            if i % 50 == 0:
                log_vol.flush()
                if data_vol is not log_vol:
                    data_vol.flush()
            if ns.pause:
                time.sleep(ns.pause)
        while not stop:                 # linger: the handler keeps serving its volumes
            log_vol.service()
            if data_vol is not log_vol:
                data_vol.service()
            time.sleep(0.02)
    finally:
        log_vol.close()
        if data_vol is not log_vol:
            data_vol.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
