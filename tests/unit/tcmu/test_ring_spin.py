"""The adaptive ring spin (appliance/tcmu/spin.py): when it spins, how it backs off, and that a
device with it finds queue-depth-1 commands without sleeping for them."""

from __future__ import annotations

import time
from pathlib import Path

from tcmu_helpers import MemDisk, Served, rw10

from appliance.tcmu.sim import SimConfig
from appliance.tcmu.spin import CALM_BATCHES, MAX_SKIP, SPIN_MAX_BATCH, RingSpin


def test_it_spins_only_after_a_run_of_small_batches_and_only_when_set() -> None:
    spin = RingSpin(1_000_000)
    for _ in range(CALM_BATCHES - 1):
        spin.batch(1)
        assert not spin.wanted()
    spin.batch(SPIN_MAX_BATCH)
    assert spin.wanted()
    spin.batch(SPIN_MAX_BATCH + 1)               # a deep queue's batch: calm starts over
    assert not spin.wanted()
    for _ in range(CALM_BATCHES):
        spin.batch(1)
    assert spin.wanted()
    off = RingSpin(0)
    for _ in range(CALM_BATCHES):
        off.batch(1)
    assert not off.wanted()


def calm(spin: RingSpin) -> RingSpin:
    for _ in range(CALM_BATCHES):
        spin.batch(1)
    return spin


def test_a_spin_returns_when_the_ring_has_a_command() -> None:
    spin = RingSpin(5_000_000_000)               # 5 s: only the command can end it early
    looks = iter([False, False, False, True])
    started = time.monotonic()
    assert spin.wait(lambda: next(looks)) is True
    assert time.monotonic() - started < 1.0
    assert (spin.spins, spin.hits) == (1, 1)


def test_misses_make_spins_rarer_and_a_hit_restores_them() -> None:
    spin = calm(RingSpin(200_000))               # 0.2 ms
    skipped = []
    for _ in range(8):
        started = time.monotonic()
        assert spin.wait(lambda: False) is False
        assert time.monotonic() - started < 1.0, "a spin outlived its time"
        chances = 0
        while not spin.wanted():
            chances += 1
            assert chances <= MAX_SKIP, "the back-off never let a spin through"
        skipped.append(chances)
    assert skipped == [1, 3, 7, 15, 31, MAX_SKIP, MAX_SKIP, MAX_SKIP]
    assert spin.wait(lambda: True) is True
    assert spin.wanted() and spin.wanted(), "a hit did not reset the back-off"
    assert (spin.spins, spin.hits) == (9, 1)


def _serve_one_at_a_time(tmp_path: Path, spin_us: int, count: int) -> Served:
    served = Served(tmp_path / f"dev{spin_us}", MemDisk(), SimConfig(ring_bytes=8192,
                                                                     data_blocks=64),
                    spin_us=spin_us).start()
    for i in range(count):
        (res,) = served.kernel.wait_for([served.kernel.submit(rw10(0x2A, i, 1),
                                                               bytes([i]) * 512)])
        assert res.status == 0
    return served


def test_a_device_that_spins_finds_depth_one_commands_without_a_wakeup(tmp_path: Path) -> None:
    count = 50
    sleeping = _serve_one_at_a_time(tmp_path, 0, count)
    assert sleeping.device.spin.spins == 0 and sleeping.device.stats.wakeups >= count // 2
    sleeping.close()
    # A spin far longer than the test's next submit: once a run of small batches says the
    # depth is low, the device finds each next command (by the spin, or by the drain's second
    # look while the spin has yielded) and never sleeps for it.
    spinning = _serve_one_at_a_time(tmp_path, 200_000, count)
    device = spinning.device
    assert device.stats.wakeups <= CALM_BATCHES + 3 and device.spin.hits >= 1, device.describe()
    assert device.stats.commands == count
    spinning.close()


def _until(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.005)


def test_a_wake_up_that_finds_nothing_is_no_chance_to_spin(tmp_path: Path) -> None:
    """A command the spin found leaves its kernel event pending, so the next wait returns at
    once to an empty ring. Such a round neither spins nor uses up the back-off's skips."""
    served = Served(tmp_path / "dev", MemDisk(), SimConfig(ring_bytes=8192, data_blocks=64),
                    spin_us=50_000).start()
    kernel, device = served.kernel, served.device
    try:
        def write(lba: int) -> None:
            (res,) = kernel.wait_for([kernel.submit(rw10(0x2A, lba, 1), bytes(512))])
            assert res.status == 0

        for lba in range(CALM_BATCHES):       # one at a time: the run that allows a spin
            write(lba)
        _until(lambda: device.spin.spins >= 1 and device.spin._misses == 1,
               "the spin after the last write to miss")
        spins = device.spin.spins
        wakeups = device.stats.wakeups
        for _ in range(5):                       # stale events: nothing new in the ring
            kernel._notify()
            time.sleep(0.01)
        _until(lambda: device.stats.wakeups >= wakeups + 1, "the stale events to wake it")
        time.sleep(0.15)                         # three spins' time
        assert device.spin.spins == spins, device.describe()
        write(100)                               # uses the one skip the miss earned
        time.sleep(0.15)
        assert device.spin.spins == spins, device.describe()
        write(101)
        _until(lambda: device.spin.spins == spins + 1 and device.spin._misses == 2,
               "the spin after the next write to miss")
    finally:
        served.close()
