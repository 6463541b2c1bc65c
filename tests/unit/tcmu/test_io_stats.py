"""The handler's per-volume I/O counters: opcode classes, the latency histogram, the device loop
counting on the simulated ring (ring reset keeps them, a new open starts at zero), consistent
snapshots while the loop counts, and the `io` entry of the manager's status."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tcmu_helpers import MemDisk, ScsiCommand, Served, rw10
from test_manager import CFG, FakeBackend, RecordingControl

from appliance.scsi import disk as scsi_disk
from appliance.scsi import rw as scsi_rw
from appliance.tcmu import device as device_module
from appliance.tcmu import io_stats
from appliance.tcmu.io_stats import OTHER, READ, WRITE, IoStats, classify
from appliance.tcmu.manager import DeviceManager
from appliance.tcmu.sim import SAM_STAT_BUSY, SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio

SPEC_READS = {0x08: "READ(6)", 0x28: "READ(10)", 0xA8: "READ(12)", 0x88: "READ(16)"}
SPEC_WRITES = {0x0A: "WRITE(6)", 0x2A: "WRITE(10)", 0xAA: "WRITE(12)", 0x8A: "WRITE(16)",
               0x2E: "WRITE AND VERIFY(10)", 0xAE: "WRITE AND VERIFY(12)",
               0x8E: "WRITE AND VERIFY(16)", 0x41: "WRITE SAME(10)", 0x93: "WRITE SAME(16)",
               0x42: "UNMAP", 0x89: "COMPARE AND WRITE", 0x9C: "WRITE ATOMIC(16)"}
SOME_OTHERS = {0x00: "TEST UNIT READY", 0x03: "REQUEST SENSE", 0x12: "INQUIRY",
               0x1A: "MODE SENSE(6)", 0x5A: "MODE SENSE(10)", 0x15: "MODE SELECT(6)",
               0x1B: "START STOP UNIT", 0x25: "READ CAPACITY(10)",
               0x9E: "SERVICE ACTION IN(16)", 0x35: "SYNCHRONIZE CACHE(10)",
               0x91: "SYNCHRONIZE CACHE(16)", 0x2F: "VERIFY(10)", 0xAF: "VERIFY(12)",
               0x8F: "VERIFY(16)", 0xA0: "REPORT LUNS", 0x53: "XDWRITEREAD(10)",
               0x7F: "variable length (WRITE(32) is not in the spec's list)"}
BOUNDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0]


@pytest.mark.parametrize("opcode", sorted(SPEC_READS))
def test_every_read_opcode_of_the_spec_is_a_read(opcode: int) -> None:
    assert classify(bytes([opcode]) + bytes(9)) == READ, SPEC_READS[opcode]


@pytest.mark.parametrize("opcode", sorted(SPEC_WRITES))
def test_every_write_opcode_of_the_spec_is_a_write(opcode: int) -> None:
    assert classify(bytes([opcode]) + bytes(15)) == WRITE, SPEC_WRITES[opcode]


@pytest.mark.parametrize("opcode", sorted(SOME_OTHERS))
def test_everything_else_is_other(opcode: int) -> None:
    assert classify(bytes([opcode]) + bytes(9)) == OTHER, SOME_OTHERS[opcode]


def test_classes_match_what_the_scsi_layer_serves() -> None:
    """The opcodes the SCSI layer reads and writes with are counted as such, and no other
    opcode of the whole byte range is (the table is exactly the spec's lists)."""
    assert set(scsi_rw.READ_OPCODES) == set(SPEC_READS)
    served_writes = {*scsi_rw.WRITE_OPCODES, *scsi_rw.WRITE_AND_VERIFY_OPCODES,
                     0x41, 0x93, 0x42, 0x89}
    assert served_writes <= set(SPEC_WRITES) and served_writes <= set(scsi_disk.HANDLERS)
    by_kind = {kind: {op for op in range(256) if io_stats.KIND_BY_OPCODE[op] == kind}
               for kind in (READ, WRITE, OTHER)}
    assert by_kind[READ] == set(SPEC_READS) and by_kind[WRITE] == set(SPEC_WRITES)
    assert len(by_kind[OTHER]) == 256 - len(SPEC_READS) - len(SPEC_WRITES)


def test_histogram_bucket_edges_and_the_inf_bucket() -> None:
    assert tuple(BOUNDS) == io_stats.LATENCY_BOUNDS_S
    stats = IoStats()
    one_ns = 1e-9
    cases = [  # (service time in ns, bucket index)
        (0, 0), (1, 0),
        (100_000, 0), (100_001, 1),                 # exactly 0.1 ms is `le 0.0001`
        (250_000, 1), (250_001, 2),
        (1_000_000, 3), (1_000_001, 4),
        (10_000_000_000, 15),                       # exactly 10 s: the last finite bucket
        (10_000_000_001, 16), (3600 * 10**9, 16),   # above every bound: the +Inf bucket
    ]
    for elapsed_ns, index in cases:
        assert io_stats.latency_bucket(elapsed_ns) == index, elapsed_ns
        if index < len(BOUNDS):
            assert elapsed_ns * one_ns <= BOUNDS[index] + one_ns / 2
        if index > 0:
            assert elapsed_ns * one_ns > BOUNDS[index - 1]
    for elapsed_ns, _ in cases:
        stats.add_batch([1, 0, 0], [512, 0, 0], 1, elapsed_ns)
    snap = stats.snapshot()
    expected = [0] * 17
    for _, index in cases:
        expected[index] += 1
    assert snap["latency_counts"] == expected
    assert snap["latency_count"] == len(cases) == sum(snap["latency_counts"])
    assert snap["latency_sum_s"] == pytest.approx(sum(ns for ns, _ in cases) / 1e9)


def test_a_batch_gives_every_command_its_service_time() -> None:
    stats = IoStats()
    stats.add_batch([3, 2, 1], [12288, 8192, 36], 6, 2_000_000)       # 2 ms: `le 0.0025`
    stats.add_batch([0, 1, 0], [0, 4096, 0], 1, 20_000_000)           # 20 ms: `le 0.025`
    snap = stats.snapshot()
    assert snap == {
        "read_ops": 3, "read_bytes": 12288, "write_ops": 3, "write_bytes": 12288,
        "other_ops": 1,
        "latency_bounds_s": BOUNDS,
        "latency_counts": [0, 0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "latency_sum_s": pytest.approx(6 * 0.002 + 0.02), "latency_count": 7,
    }
    # A snapshot is a copy: the caller may keep or change it.
    snap["latency_counts"][0] = 99
    snap["latency_bounds_s"].clear()
    assert stats.snapshot()["latency_counts"][0] == 0
    assert stats.snapshot()["latency_bounds_s"] == BOUNDS


def _unstarted(tmp_path: Path, executor, config: SimConfig) -> Served:
    """A Served whose loop thread never runs: the test calls process() itself."""
    s = Served(tmp_path / "d", executor, config)
    s.thread.start = None       # type: ignore[method-assign]  # nobody starts it by mistake
    return s


def _close_unstarted(s: Served) -> None:
    s.device.close()
    s.uio.close()
    s.kernel.close()


def test_device_loop_counts_ops_bytes_and_latency(served: Served) -> None:
    kernel = served.kernel
    with kernel.plugged():
        tickets = [kernel.submit(rw10(0x2A, i * 8, 8), bytes([i]) * 4096) for i in range(3)]
        tickets += [kernel.submit(rw10(0x28, i * 8, 4), data_in_len=2048) for i in range(5)]
        tickets += [kernel.submit(bytes(6)), kernel.submit(b"\x12\0\0\0\x24\0", data_in_len=36)]
    assert all(r.status == 0 for r in kernel.wait_for(tickets))
    (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, 100, 1), b"z" * 512)])
    assert res.status == 0
    io = served.device.io.snapshot()
    assert (io["read_ops"], io["read_bytes"]) == (5, 5 * 2048)
    assert (io["write_ops"], io["write_bytes"]) == (4, 3 * 4096 + 512)
    assert io["other_ops"] == 2
    assert io["latency_count"] == 11 == sum(io["latency_counts"])
    assert io["latency_sum_s"] > 0


class SlowDisk(MemDisk):
    """Takes `delay` seconds per batch: the service time the histogram must show."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def execute(self, cmds: list[ScsiCommand]) -> list:
        time.sleep(self.delay)
        return super().execute(cmds)


def test_latency_is_the_batch_service_time_for_every_command(tmp_path: Path) -> None:
    s = _unstarted(tmp_path, SlowDisk(0.03), SimConfig(ring_bytes=8192, data_blocks=16))
    kernel, device = s.kernel, s.device
    try:
        with kernel.plugged():
            tickets = [kernel.submit(rw10(0x2A, i, 1), b"s" * 512) for i in range(4)]
        started = time.monotonic()
        assert device.process() == 4                                    # one batch
        spent = time.monotonic() - started
        assert all(r.status == 0 for r in kernel.wait_for(tickets))
        io = device.io.snapshot()
        assert io["latency_count"] == 4
        # 30 ms of executor time: nothing at or below the 25 ms bound (index 7), all four in
        # one bucket, each with the batch's time, which lies within process()'s.
        assert io["latency_counts"][:8] == [0] * 8
        assert sorted(io["latency_counts"])[-1] == 4
        assert 4 * 0.03 <= io["latency_sum_s"] <= 4 * spent
    finally:
        _close_unstarted(s)


def test_several_iovecs_of_one_command_are_all_counted(tmp_path: Path) -> None:
    """A data area with a hole hands a command two iovecs (new_block_to_iov)."""
    s = _unstarted(tmp_path, MemDisk(), SimConfig(ring_bytes=8192, data_blocks=8))
    kernel, device = s.kernel, s.device
    try:
        a = kernel.submit(rw10(0x2A, 0, 8), b"a" * 4096)               # data block 0
        assert device.process() == 1                                    # done, not reaped
        b = kernel.submit(rw10(0x2A, 8, 8), b"b" * 4096)               # data block 1
        kernel.handle_completions()                                     # frees block 0 only
        c = kernel.submit(rw10(0x2A, 16, 16), b"c" * 8192)             # blocks 0 and 2
        assert device.process() == 2
        assert all(r.status == 0 for r in kernel.wait_for([a, b, c]))
        assert s.device.executor.disk[16 * 512: 32 * 512] == b"c" * 8192
        io = device.io.snapshot()
        assert (io["write_ops"], io["write_bytes"], io["latency_count"]) == (3, 16384, 3)
    finally:
        _close_unstarted(s)


def test_snapshots_never_go_backwards_while_the_loop_counts(served: Served) -> None:
    kernel, io = served.kernel, served.device.io
    snaps: list[dict] = []
    done = threading.Event()

    def reader() -> None:
        while not done.wait(0.0002):    # as often as a busy control socket, not a GIL hog
            snaps.append(io.snapshot())

    thread = threading.Thread(target=reader)
    thread.start()
    rounds, deadline = 0, time.monotonic() + 30
    try:
        while rounds < 100 or len(snaps) < 100:
            assert time.monotonic() < deadline, f"{len(snaps)} snapshots in {rounds} rounds"
            with kernel.plugged():
                tickets = [kernel.submit(rw10(0x2A, rounds % 64, 1), b"w" * 512),
                           kernel.submit(rw10(0x28, rounds % 64, 1), data_in_len=512),
                           kernel.submit(bytes(6))]
            assert all(r.status == 0 for r in kernel.wait_for(tickets))
            rounds += 1
    finally:
        done.set()
        thread.join(timeout=10)
    snaps.append(io.snapshot())
    assert len({snap["latency_count"] for snap in snaps}) > 10, "the reader never ran beside"
    keys = ("read_ops", "read_bytes", "write_ops", "write_bytes", "other_ops",
            "latency_count", "latency_sum_s")
    for before, after in zip(snaps, snaps[1:], strict=False):
        for key in keys:
            assert after[key] >= before[key], key
        assert all(x <= y for x, y in zip(before["latency_counts"], after["latency_counts"],
                                          strict=True))
    for snap in snaps:  # never half a batch: the histogram always adds up to the ops
        assert snap["latency_count"] == sum(snap["latency_counts"])
        assert snap["latency_count"] == snap["read_ops"] + snap["write_ops"] + snap["other_ops"]
        assert snap["read_bytes"] == 512 * snap["read_ops"]
    assert (snaps[-1]["read_ops"], snaps[-1]["write_ops"], snaps[-1]["other_ops"]) == \
        (rounds, rounds, rounds)


class GateDisk(MemDisk):
    """Holds the loop inside a WRITE to block 999 until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()

    def execute(self, cmds: list[ScsiCommand]) -> list:
        if any(cmd.cdb[:6] == rw10(0x2A, 999, 1)[:6] for cmd in cmds):
            self.entered.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return super().execute(cmds)


class StatusBackend(FakeBackend):
    def __init__(self, log: list[str]) -> None:
        super().__init__(log)
        self.executor = GateDisk()

    def status(self) -> dict:
        return {"state": "journaling"}


def test_manager_status_has_io_kept_across_a_ring_reset_and_zero_after_reopen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    from appliance.tcmu import layout

    monkeypatch.setattr(device_module, "_scsi_command_class", lambda: ScsiCommand)
    kernel = SimKernel(tmp_path / "dev", SimConfig(ring_bytes=8192, data_blocks=32))
    log: list[str] = []
    manager = DeviceManager(backend_factory=lambda name, config, control: StatusBackend(log),
                            open_transport=lambda minor, uio_name: SimUio(tmp_path / "dev"),
                            control_for=lambda name: RecordingControl(kernel, log),
                            poll_interval=0.05, ring_spin_us=300)
    name = f"tcm-user/1/vol1/{CFG}"
    try:
        assert manager.add(3, name) == 0
        before = manager.status()["vol1"]
        assert set(before) == {"uio", "cfgstring", "state", "io", "ring"}
        assert before["ring"]["spin_us"] == 300 and before["ring"]["commands"] == 0
        assert before["io"]["latency_count"] == 0
        tickets = [kernel.submit(rw10(0x2A, i, 2), b"x" * 1024) for i in range(4)]
        assert all(r.status == 0 for r in kernel.wait_for(tickets))

        # A corrupt entry: the ring is reset (its command comes back BUSY), the device stays.
        # It is corrupted while the loop is held inside the command before it (not fetched).
        device = manager.devices[3].device
        executor = manager.devices[3].backend.executor
        held = kernel.submit(rw10(0x2A, 999, 1), b"h" * 512)
        assert executor.entered.wait(10), "the loop never took the gated command"
        head, entry = kernel.cmd_head, layout.cmd_entry_size(1, 10)
        bad = kernel.submit(rw10(0x28, 0, 1), data_in_len=512)
        pos = head if kernel.cmdr_size - head >= entry else 0          # else after a PAD
        # point its iovec at the ring itself: the SCSI layer must never get that buffer
        struct.pack_into("<Q", kernel.region, kernel.cmdr_off + pos + layout.REQ_IOV,
                         kernel.cmdr_off)
        executor.gate.set()
        assert kernel.wait_for([held])[0].status == 0
        deadline = time.monotonic() + 10
        while bad not in kernel.results:
            assert time.monotonic() < deadline, "the corrupt entry was never reset"
            time.sleep(0.02)
        assert kernel.results[bad].status == SAM_STAT_BUSY
        assert "reset_ring=1" in log and manager.devices[3].device is device
        (res,) = kernel.wait_for([kernel.submit(rw10(0x28, 0, 2), data_in_len=1024)])
        assert res.status == 0
        io = manager.status()["vol1"]["io"]
        assert (io["write_ops"], io["write_bytes"], io["read_ops"], io["read_bytes"]) == \
            (5, 4096 + 512, 1, 1024)
        assert io["latency_count"] == 6

        # The same device opened again (a new TcmuDevice): counting starts over.
        assert manager.remove(3) == 0
        assert manager.add(3, name) == 0
        io = manager.status()["vol1"]["io"]
        assert (io["write_ops"], io["read_ops"], io["other_ops"], io["latency_count"]) == \
            (0, 0, 0, 0)
    finally:
        manager.close_all()
        kernel.close()


def test_a_snapshot_taken_while_batches_are_added_never_shows_half_a_batch() -> None:
    """The writer takes no lock (a sequence lock): a reader on another thread still sees
    whole batches only, every counter agreeing with the others."""
    stats = IoStats()
    batches = 20_000
    done = threading.Event()
    snaps: list[dict] = []

    def read() -> None:
        while not done.is_set():
            snaps.append(stats.snapshot())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(batches):
            # 3 commands: 2 reads of 4 KiB and 1 write of 512 bytes, 1 ms each
            stats.add_batch([2, 1, 0], [8192, 512, 0], 3, 1_000_000 + i % 2)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive(), "the reader did not stop within 30 s"
    snaps.append(stats.snapshot())
    assert len(snaps) > 1
    for snap in snaps:
        whole = snap["latency_count"] // 3
        assert snap["latency_count"] == 3 * whole == sum(snap["latency_counts"])
        assert (snap["read_ops"], snap["write_ops"]) == (2 * whole, whole)
        assert (snap["read_bytes"], snap["write_bytes"]) == (8192 * whole, 512 * whole)
    assert snaps[-1]["latency_count"] == 3 * batches
    counts = [snap["latency_count"] for snap in snaps]
    assert counts == sorted(counts)         # counters only grow
