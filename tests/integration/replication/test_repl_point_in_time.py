"""Point in time on loopback (issue 18; docs/failover.md, "Point in time"): a DR replica with
a retention window; recovered images at random points, by seq while the workload streams in
and by the primary's time afterwards, are byte for byte the image the write log gives for
that point; the window ages out, and a point outside it is refused with the range.

The writer submits every op alone, so op #n is the primary journal's seq n: checked against
the primary's journal at the end, which also gives each seq's primary timestamp."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from repl_harness import (
    PY,
    REPO,
    appliancectl,
    converge,
    image_after,
    read_log,
    wait_for,
)

from appliance.control.client import ControlError, call
from appliance.journal import Journal

pytestmark = pytest.mark.integration

RETAIN_S = 8            # the window by age; segments roll every RETAIN_S / 16
OPS = 1500


def rx_call(pair, cmd: str, **args) -> dict:
    return appliancectl(pair.rx_control, "call", cmd, json.dumps(args))


def dr_tool(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "appliance.replication.dr.dr_tool", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def window(pair, site) -> dict:
    return pair.rx_status()["volumes"][str(site.uuid)]["retention"]


def iso_ns(ts_ns: int) -> str:
    import time
    whole, frac = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac:09d}Z"


def check_image(path: Path, site, seq: int) -> None:
    ops = read_log(site.log)
    assert len(ops) >= seq, f"the write log has {len(ops)} ops, the point is seq {seq}"
    want = bytes(image_after(ops[:seq], site.blocks * 512))
    got = path.read_bytes()
    if got != want:
        bad = next(i for i in range(0, len(want), 512) if got[i:i + 512] != want[i:i + 512])
        raise AssertionError(f"{path}: not the image after op #{seq}: first differing block "
                             f"{bad // 512}")
    path.unlink()           # (read-only file: its directory allows it)


def test_recover_points_of_the_window_by_seq_and_time_and_the_window_ages(pair):
    rng = random.Random(18)
    site = pair.site("site-a", blocks=4096)
    rx = pair.serve(site)
    vol = str(site.uuid)
    # Refused naming the key; then a window of RETAIN_S seconds, before the first contact.
    with pytest.raises(ControlError, match="retain_s='soon' does not parse"):
        call(pair.rx_control, "set-retention", {"volume": vol, "retain_s": "soon"})
    set_to = rx_call(pair, "set-retention", volume=vol, retain_s=RETAIN_S)
    assert set_to["retention"]["retain_s"] == RETAIN_S and set_to["retention"]["enabled"]

    w = pair.writer(site, OPS, pause=0.003, journal_size=32 << 20).start()
    pair.transmitter(site).start()
    replica_dir = pair.replica_dir(site.uuid)

    # While the workload streams in: recover by seq at random points of the window.
    recovered_live = 0
    while w.popen.poll() is None or recovered_live < 2:
        win = wait_for(lambda: (x := window(pair, site))["oldest"] and x["newest"]["seq"] > 20
                       and x, 30, "a window of some records")
        lo, hi = win["oldest"]["seq"], win["newest"]["seq"]
        seq = rng.randint(max(lo, hi - 400), hi)
        out = rx_call(pair, "recover", volume=vol, at=f"seq:{seq}")
        assert out["seq"] == seq and out["path"] == str(replica_dir / f"recovered-{seq}.img")
        assert out["mirror_seq_at_copy"] >= seq
        assert "/backstores/block create name=recovered-" in out["next_steps"]
        check_image(Path(out["path"]), site, seq)
        recovered_live += 1
        if recovered_live >= 6:
            break
    wait_for(lambda: w.popen.poll() is not None, 60, "the writer to finish")
    assert w.popen.returncode == 0, w.output()
    converge(pair, site)

    # The primary's journal: op #n is seq n, and each seq's primary timestamp.
    for p in pair.procs:
        if p.name.startswith("transmitter"):
            p.stop()
    ops = read_log(site.log)
    assert len(ops) == OPS
    j = Journal.open(site.journal, volume_uuid=site.uuid)
    try:
        records = list(j.records(1))
    finally:
        j.close()
    assert [(r.seq, r.op.lba, r.op.nblocks) for r in records] == [
        (op.index, op.lba, op.nblocks) for op in ops]
    stamp = {r.seq: r.timestamp_ns for r in records}

    # By the primary's time: the image after the last write at or before it.
    win = window(pair, site)
    lo, hi = win["oldest"]["seq"], win["newest"]["seq"]
    assert hi == OPS
    for _ in range(4):
        seq = rng.randint(max(lo + 1, hi - 300), hi - 1)
        gap = stamp[seq + 1] - stamp[seq]
        at = stamp[seq] + rng.randrange(gap) if gap > 0 else stamp[seq]
        out = rx_call(pair, "recover", volume=vol, at=iso_ns(at))
        assert out["seq"] == seq, (out, at, stamp[seq], stamp[seq + 1])
        check_image(Path(out["path"]), site, seq)

    # The window ages: RETAIN_S after the last write, the oldest points are gone, and every
    # point of the last RETAIN_S seconds stays recoverable.
    def aged():
        x = window(pair, site)
        return x["oldest"] and x["oldest"]["seq"] > lo and x
    win = wait_for(aged, RETAIN_S + 10, "the oldest points of the window to age out")
    oldest = win["oldest"]
    import time
    assert oldest["time"] <= time.time() - RETAIN_S, (oldest, time.time())
    with pytest.raises(ControlError) as refused:
        call(pair.rx_control, "recover", {"volume": vol, "at": f"seq:{lo}"})
    said = str(refused.value)
    assert f"seq {lo} is outside the retention window; recoverable: seq {oldest['seq']} (" in said
    assert f"to seq {OPS} (" in said and said.endswith("nothing changed")
    out = rx_call(pair, "recover", volume=vol, at=f"seq:{oldest['seq']}")
    check_image(Path(out["path"]), site, oldest["seq"])

    # appliance-dr: refused while the receiver runs; with it stopped, the window from the
    # files, a recovery, and retention turned off.
    refused = dr_tool(pair.rx_config, "recover", vol, "--at", f"seq:{OPS - 1}")
    assert refused.returncode == 1 and "the receiver is running" in refused.stderr, refused
    rx.stop()
    state = json.loads(dr_tool(pair.rx_config, "state").stdout)[0]["retention"]
    assert state["enabled"] and state["retain_s"] == RETAIN_S, state
    assert state["newest"]["seq"] == OPS and state["oldest"]["seq"] >= oldest["seq"], state
    done = dr_tool(pair.rx_config, "recover", vol, "--at", f"seq:{OPS - 1}")
    assert done.returncode == 0, done.stderr
    assert "losetup --find --show --read-only" in done.stderr
    check_image(Path(json.loads(done.stdout)["path"]), site, OPS - 1)
    off = dr_tool(pair.rx_config, "retention", vol, "--retain", "none", "--max", "none")
    assert off.returncode == 0, off.stderr
    assert not (replica_dir / "retention").exists()
    state = json.loads(dr_tool(pair.rx_config, "state").stdout)[0]["retention"]
    assert state["enabled"] is False and state["oldest"] is None, state
