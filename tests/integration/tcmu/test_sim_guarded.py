"""The real stack (ScsiDisk + Volume) never touches ring data outside live iovecs: every data
block not owned by a pending command is PROT_NONE in the handler's mapping while a mixed
workload of every command kind runs. A stray access kills the child process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_SCRIPT = textwrap.dedent("""
    import random, struct, sys
    from pathlib import Path
    sys.path.insert(0, {here!r})
    from tcmu_stack import open_stack
    from appliance.tcmu.sim import RingFull, SimConfig

    s = open_stack(Path({tmp!r}), num_blocks=4096, guard=True,
                   sim=SimConfig(ring_bytes=16384, data_blocks=128))
    rng = random.Random(5)
    k = s.kernel
    def submit(*args, **kwargs):
        for _ in range(500):
            try:
                return k.submit(*args, **kwargs)
            except RingFull:  # the kernel's qfull wait
                k.process_pokes(0.05)
        raise TimeoutError("ring stayed full")
    def rw(op, lba, n):
        return struct.pack(">BBIBHB", op, 0, lba, 0, n, 0)
    tickets = []
    for i in range(400):
        lba, n = rng.randrange(0, 4000), rng.randint(1, 8)
        kind = rng.randrange(9)
        if kind == 0:
            tickets.append(submit(rw(0x2A, lba, n), rng.randbytes(n * 512)))
        elif kind == 1:
            tickets.append(submit(rw(0x28, lba, n), data_in_len=n * 512))
        elif kind == 2:
            tickets.append(submit(b"\\x12\\x00\\x00\\x00\\xff\\x00", data_in_len=255))
        elif kind == 3:
            tickets.append(submit(b"\\x12\\x01\\x83\\x00\\xff\\x00", data_in_len=255))
        elif kind == 4:
            tickets.append(submit(b"\\x41\\x00" + struct.pack(">I", lba) + b"\\x00"
                                    + struct.pack(">H", n) + b"\\x00", rng.randbytes(512)))
        elif kind == 5:
            params = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", lba, n)
            tickets.append(submit(b"\\x42" + bytes(6) + struct.pack(">H", 24) + b"\\x00",
                                    params))
        elif kind == 6:
            tickets.append(submit(b"\\x89" + bytes(1) + struct.pack(">Q", lba) + bytes(3)
                                    + b"\\x01" + bytes(2), rng.randbytes(1024)))
        elif kind == 7:
            tickets.append(submit(b"\\x1a\\x00\\x3f\\x00\\xff\\x00", data_in_len=255))
        else:
            tickets.append(submit(b"\\x9e\\x10" + bytes(8) + b"\\x00\\x00\\x00\\x20"
                                    + bytes(2), data_in_len=32))
        if i % 7 == 0:
            k.process_pokes(0)
    results = k.wait_for(tickets, timeout=60)
    assert all(r.status in (0, 2) for r in results)
    assert sum(r.status == 0 for r in results) > 300
    assert s.device.stats.unreleased_views == 0
    s.close()
    print("clean")
""")


def test_real_stack_stays_inside_live_iovecs(tmp_path: Path) -> None:
    code = _SCRIPT.format(here=str(Path(__file__).parent), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parents[3])
    assert proc.returncode == 0 and "clean" in proc.stdout, (proc.returncode, proc.stderr[-3000:])
