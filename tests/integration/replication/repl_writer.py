"""The primary's writer for the integration tests: a random workload through the real Volume.

Each op is appended to the write log (and flushed to the OS, which survives kill -9) *before*
it is submitted, so the log is always the submitted sequence or one op longer. After a restart
the last logged op is submitted again (same data, same place: idempotent) and numbering
continues.

    python repl_writer.py --volume-dir D --uuid U --blocks N --log L --ops 500 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repl_harness import LoggedOp, random_op, read_log

from appliance.journal import OpKind, WriteOp
from appliance.tcmu.backend import AckListener
from appliance.volume import ResizeRefused, Volume, VolumeConfig
from appliance.volume.sync_mode import SyncSettings

KIND = {"W": OpKind.WRITE, "S": OpKind.WRITE_SAME, "U": OpKind.UNMAP}


def volume_config(volume_dir: Path, vol_uuid: uuid.UUID, blocks: int,
                  journal_size: int) -> VolumeConfig:
    return VolumeConfig(uuid=vol_uuid, num_blocks=blocks, block_size=512,
                        journal_size=journal_size, max_transfer_bytes=64 * 1024,
                        mirror_path=volume_dir / "mirror", journal_path=volume_dir / "journal",
                        bitmap_path=volume_dir / "bitmap")


def to_write_op(op: LoggedOp) -> WriteOp:
    return WriteOp(KIND[op.kind], op.lba, op.nblocks, op.data())


def resize(vol: Volume, blocks: int, timeout: float = 30.0) -> None:
    """Resize; a shrink is refused until the peer holds every record beyond the new end, so
    retry it (like an admin would) until the transmitter has caught up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            vol.resize(blocks)
            return
        except ResizeRefused:
            if time.monotonic() > deadline:
                raise
            vol.service()
            time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--volume-dir", type=Path, required=True)
    p.add_argument("--uuid", type=uuid.UUID, required=True)
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--journal-size", type=int, default=8 << 20)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--ops", type=int, required=True, help="stop after the log has this many")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between ops")
    p.add_argument("--full-resync", action="store_true",
                   help="mark the whole volume dirty first (initial sync / failback)")
    p.add_argument("--resize-to", type=int, default=None,
                   help="resize the volume (from --blocks) to this many blocks first, online "
                        "like a DEV_SIZE reconfiguration; the ops then address the new size")
    p.add_argument("--sync-mode", default=None,
                   help="set the volume's replication mode first (async, sync, "
                        "sync-on-flush); the writer then listens for the transmitter's "
                        "acknowledgements like the handler")
    p.add_argument("--fallback", type=float, default=2.0, help="with --sync-mode: seconds")
    p.add_argument("--done-log", type=Path, default=None,
                   help="append 'index kind' once an op (W/S/U) or a flush (F) completed")
    p.add_argument("--flush-every", type=int, default=0,
                   help="a SYNCHRONIZE CACHE after every N ops (else at random, 5%%)")
    p.add_argument("--fua-share", type=float, default=0.1, help="share of FUA writes")
    p.add_argument("--linger", action="store_true",
                   help="after the ops, keep servicing the volume (resync clear requests, "
                        "return to journaling) until SIGTERM, like an idle handler")
    ns = p.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    done = read_log(ns.log) if ns.log.exists() else []
    # Drop a torn last line (kill -9 in the middle of writing it).
    ns.log.write_text("".join(f"{o.index} {o.kind} {o.lba} {o.nblocks}\n" for o in done))
    rng = random.Random(ns.seed * 7919 + len(done))
    vol = Volume.open(volume_config(ns.volume_dir, ns.uuid, ns.blocks, ns.journal_size))
    acks = None
    if ns.sync_mode:
        vol.set_sync(SyncSettings.parse(ns.sync_mode, ns.fallback))
        acks = AckListener.start(vol)
    done_log = open(ns.done_log, "a", buffering=1) if ns.done_log else None  # noqa: SIM115
    try:
        if ns.full_resync:
            vol.start_full_resync()
        if done:
            vol.submit([to_write_op(done[-1])], fua=True)   # may not have been submitted
        blocks = ns.blocks
        if ns.resize_to:
            resize(vol, ns.resize_to)
            blocks = ns.resize_to
        with open(ns.log, "a", buffering=1) as log:
            for index in range(len(done) + 1, ns.ops + 1):
                op = random_op(rng, index, blocks)
                log.write(f"{op.index} {op.kind} {op.lba} {op.nblocks}\n")
                log.flush()
                fua = rng.random() < ns.fua_share
                vol.submit([to_write_op(op)], fua=fua)
                if done_log:
                    done_log.write(f"{op.index} {'FUA' if fua else op.kind}\n")
                if (index % ns.flush_every == 0) if ns.flush_every else rng.random() < 0.05:
                    vol.flush()
                    if done_log:
                        done_log.write(f"{op.index} F\n")
                if ns.pause:
                    time.sleep(ns.pause)
        vol.flush()
        shown = None
        while ns.linger and not stop:
            vol.service()
            state = vol.status()["state"]
            if state != shown:      # tests wait on this (e.g. back to journaling after a resync)
                print("writer: status " + json.dumps(vol.status(), default=str), flush=True)
                shown = state
            time.sleep(0.02)
        print("writer: status " + json.dumps(vol.status(), default=str), flush=True)
    finally:
        if acks is not None:
            acks.stop()
        vol.close()
    print(f"writer: log holds {ns.ops} ops", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
