"""The device loop on the simulated ring: batching, one poke per batch, READ_LEN, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tcmu_helpers import MemDisk, ScsiCommand, ScsiResult, Served, rw10

from appliance.tcmu.sim import SimConfig


def test_write_then_read_back(served: Served) -> None:
    data = os.urandom(8192)
    w = served.kernel.submit(rw10(0x2A, 10, 16), data)
    (res,) = served.kernel.wait_for([w])
    assert res.status == 0
    r = served.kernel.submit(rw10(0x28, 10, 16), data_in_len=8192)
    (res,) = served.kernel.wait_for([r])
    assert res.data_in == data


def test_one_wakeup_drains_a_plugged_batch_with_one_poke(served: Served) -> None:
    kernel = served.kernel
    served.device.stop()
    served.thread.join(timeout=5)
    with kernel.plugged():
        tickets = [kernel.submit(rw10(0x2A, i, 1), bytes([i]) * 512) for i in range(20)]
    assert served.device.process() == 20
    assert served.device.stats.batches == 1 and served.device.stats.pokes == 1
    assert all(r.status == 0 for r in kernel.wait_for(tickets))


class ShortReader:
    """Answers every command with `read_len` valid bytes of 0x11."""

    def __init__(self, read_len: int) -> None:
        self.read_len = read_len

    def execute(self, cmds: list[ScsiCommand]) -> list[ScsiResult]:
        for cmd in cmds:
            for buf in cmd.data:
                buf[: self.read_len] = b"\x11" * min(len(buf), self.read_len)
        return [ScsiResult(0, read_len=self.read_len) for _ in cmds]


def _one_read(tmp_path: Path, executor, config: SimConfig) -> bytes:
    s = Served(tmp_path / "d", executor, config)
    try:
        # dirty the data block first so stale bytes (the sim's poison) would show
        s.thread.start()
        s.kernel.wait_for([s.kernel.submit(rw10(0x2A, 0, 8), b"\xEE" * 4096)])
        t = s.kernel.submit(b"\x12\0\0\x00\xff\0", data_in_len=255)
        return s.kernel.wait_for([t])[0].data_in
    finally:
        s.close()


def test_short_read_uses_read_len(tmp_path: Path) -> None:
    assert _one_read(tmp_path, ShortReader(36), SimConfig(ring_bytes=4096, data_blocks=2)) == b"\x11" * 36


def test_zero_read_len_zero_fills_instead_of_leaking_stale_bytes(tmp_path: Path) -> None:
    # the kernel reads read_len == 0 as "the whole buffer"
    assert _one_read(tmp_path, ShortReader(0), SimConfig(ring_bytes=4096, data_blocks=2)) == bytes(255)


class Exploding:
    def execute(self, cmds):
        raise RuntimeError("bug in the SCSI layer")


def test_executor_failure_becomes_hardware_error(tmp_path: Path) -> None:
    s = Served(tmp_path / "d", Exploding(), SimConfig(ring_bytes=4096, data_blocks=2)).start()
    try:
        (res,) = s.kernel.wait_for([s.kernel.submit(bytes(6))])
        assert res.status == 0x02
        assert (res.sense[2], res.sense[12], res.sense[13]) == (0x04, 0x44, 0x00)
        (res,) = s.kernel.wait_for([s.kernel.submit(bytes(6))])  # the loop survived
        assert res.status == 0x02
    finally:
        s.close()


_GUARDED = textwrap.dedent("""
    import os, sys, threading
    sys.path[:0] = [{helpers!r}]
    from pathlib import Path
    from tcmu_helpers import MemDisk, ScsiResult, Served, rw10
    from appliance.tcmu.sim import SimConfig

    class Snooper(MemDisk):
        # touches the data block right after its own buffer: outside every live iovec
        def execute(self, cmds):
            if {snoop}:
                view = cmds[0].data[0]
                size = len(view.obj)
                bytes(view.obj[size - 4096 * 30: size - 4096 * 29])
            return super().execute(cmds)

    s = Served(Path({dir!r}), Snooper(), SimConfig(ring_bytes=8192, data_blocks=32))
    s.uio.guard_with(s.kernel)
    s.start()
    for i in range(200):
        data = os.urandom(4096)
        t = s.kernel.submit(rw10(0x2A, i * 8, 8), data)
        r = s.kernel.submit(rw10(0x28, i * 8, 8), data_in_len=4096)
        a, b = s.kernel.wait_for([t, r])
        assert a.status == 0 and b.data_in == data
    s.close()
    print("clean")
""")


def _run_guarded(tmp_path: Path, snoop: bool) -> subprocess.CompletedProcess:
    code = _GUARDED.format(helpers=str(Path(__file__).parent), snoop=snoop,
                           dir=str(tmp_path / "g"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[3])


def test_loop_never_touches_data_outside_live_iovecs(tmp_path: Path) -> None:
    """Unallocated data blocks are PROT_NONE (as reclaimed pages SIGBUS on a real device)."""
    proc = _run_guarded(tmp_path, snoop=False)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr


def test_guard_catches_a_stray_access(tmp_path: Path) -> None:
    """Control: the guard is real, a handler that snoops outside its iovecs dies."""
    proc = _run_guarded(tmp_path, snoop=True)
    assert proc.returncode < 0, (proc.returncode, proc.stdout, proc.stderr)


def test_many_outstanding_commands(tmp_path: Path) -> None:
    s = Served(tmp_path / "d", MemDisk(), SimConfig(ring_bytes=64 * 1024, data_blocks=512))
    kernel = s.kernel
    with kernel.plugged():
        tickets = [kernel.submit(rw10(0x2A, i, 1), bytes([i % 256]) * 512) for i in range(300)]
    assert kernel.outstanding == 300
    s.start()
    try:
        assert all(r.status == 0 for r in kernel.wait_for(tickets))
        assert s.device.stats.max_batch == 300
    finally:
        s.close()


def test_timed_out_and_aborted_commands(served: Served) -> None:
    """cmd_time_out fails a command to the initiator while it stays in the ring; an ABORT TASK
    notification (TMR entry) arrives; the handler completes both late and the ring stays sane."""
    kernel = served.kernel
    served.device.stop()
    served.thread.join(timeout=5)
    slow = kernel.submit(rw10(0x2A, 3, 1), b"\x42" * 512)
    aborted = kernel.submit(rw10(0x2A, 4, 1), b"\x43" * 512)
    kernel.time_out(slow)
    assert kernel.results[slow].status == 0x02 and kernel.results[slow].sense[12] == 0x08
    kernel.queue_tmr(1, [kernel.cmd_id_of(aborted)])  # ABORT_TASK
    assert served.device.process() == 2
    kernel.handle_completions()
    assert not kernel.broken and kernel.outstanding == 0
    assert kernel.late_completions == 1
    assert kernel.results[slow].sense[12] == 0x08           # the initiator's answer stands
    assert kernel.results[aborted].status == 0              # completed normally after all
    assert kernel.cmd_tail == kernel.cmd_head
    r = kernel.submit(rw10(0x28, 3, 2), data_in_len=1024)
    served.device.process()
    kernel.handle_completions()
    # the late write still landed: a write can reach the disk after the initiator saw it fail
    assert kernel.results[r].data_in == b"\x42" * 512 + b"\x43" * 512


class Garbage:
    def execute(self, cmds):
        return [object() if i % 2 else ScsiResult(0x1FF) for i, _ in enumerate(cmds)]


def test_unusable_results_still_complete_every_command(tmp_path: Path) -> None:
    s = Served(tmp_path / "d", Garbage(), SimConfig(ring_bytes=4096, data_blocks=2))
    with s.kernel.plugged():
        tickets = [s.kernel.submit(bytes(6)) for _ in range(4)]
    s.start()
    try:
        for res in s.kernel.wait_for(tickets):
            assert res.status == 0x02 and res.sense[2] == 0x04  # HARDWARE ERROR, not a hang
    finally:
        s.close()
