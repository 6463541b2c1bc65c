"""The simulated disk itself: what survives a power cut, and what the counters say."""

import random

import pytest

from tests.support.simdisk import MachineCrashed, SimMachine


def read(f, offset, n):
    buf = bytearray(n)
    f.pread_into(offset, memoryview(buf))
    return bytes(buf)


def test_unsynced_writes_are_visible_before_a_crash_and_gone_after():
    m = SimMachine()
    f = m.open("j", 8192)
    f.pwritev(0, [b"a" * 512, memoryview(b"b" * 512)])
    assert read(f, 0, 1024) == b"a" * 512 + b"b" * 512
    m.crash(random.Random(1), tear=False)
    with pytest.raises(MachineCrashed):
        read(f, 0, 1)
    assert read(m.open("j"), 0, 1024) == bytes(1024)


def test_synced_writes_survive_and_crash_affects_every_file():
    m = SimMachine()
    a, b = m.open("a", 4096), m.open("b", 4096)
    a.pwritev(0, [b"x" * 100])
    a.sync()
    a.pwritev(100, [b"y" * 100])
    b.pwritev(0, [b"z" * 100])
    m.crash(random.Random(2), tear=False)
    assert read(m.open("a"), 0, 200) == b"x" * 100 + bytes(100)
    assert read(m.open("b"), 0, 100) == bytes(100)


def test_sync_only_covers_its_own_file():
    m = SimMachine()
    a, b = m.open("a", 4096), m.open("b", 4096)
    a.pwritev(0, [b"1" * 10])
    b.pwritev(0, [b"2" * 10])
    b.sync()
    m.crash(random.Random(3), tear=False)
    assert read(m.open("a"), 0, 10) == bytes(10)
    assert read(m.open("b"), 0, 10) == b"2" * 10


def test_tearing_keeps_whole_sectors_only_and_old_data_elsewhere():
    seen_partial = False
    for seed in range(40):
        m = SimMachine()
        f = m.open("j", 16384)
        f.pwritev(0, [b"o" * 8192])
        f.sync()
        f.pwritev(0, [b"n" * 8192])
        m.crash(random.Random(seed), tear=True)
        data = read(m.open("j"), 0, 8192)
        sectors = {data[i : i + 512] for i in range(0, 8192, 512)}
        assert sectors <= {b"o" * 512, b"n" * 512}
        seen_partial |= len(sectors) == 2
    assert seen_partial, "40 torn crashes never produced a partially written 8 KiB write"


def test_read_counters_and_bounds_and_faults():
    m = SimMachine()
    f = m.open("j", 4096)
    read(f, 0, 512)
    read(f, 512, 512)
    assert m.reads["j"] == 2 and m.read_bytes["j"] == 1024
    with pytest.raises(OSError, match="outside"):
        read(f, 4000, 512)
    m.inject_fault("j", "sync")
    with pytest.raises(OSError, match="injected sync"):
        f.sync()
    f.sync()
    with pytest.raises(FileNotFoundError):
        m.open("missing")
