"""The os-based BlockIO: exact reads, complete vectored writes, sizes, locking."""

import pytest

from appliance.storage import BlockIO, StorageError, StorageLocked, open_file


def test_roundtrip_and_short_read(tmp_path):
    path = tmp_path / "f"
    with open_file(path, create_size=8192) as io:
        assert isinstance(io, BlockIO)
        assert io.size() == 8192
        io.pwritev(4096, [b"ab", memoryview(b"cd"), b""])
        io.sync()
        buf = bytearray(4)
        io.pread_into(4096, memoryview(buf))
        assert buf == b"abcd"
        with pytest.raises(StorageError, match="short read"):
            io.pread_into(8190, memoryview(bytearray(4)))


def test_create_size_extends_but_never_shrinks(tmp_path):
    path = tmp_path / "f"
    open_file(path, create_size=4096).close()
    open_file(path, create_size=8192).close()
    open_file(path, create_size=100).close()
    assert path.stat().st_size == 8192
    with pytest.raises(FileNotFoundError):
        open_file(tmp_path / "missing")


def test_many_buffers_exceeding_iov_max(tmp_path):
    bufs = [bytes([i % 256]) * 3 for i in range(5000)]
    with open_file(tmp_path / "f", create_size=0) as io:
        io.pwritev(0, bufs)
        out = bytearray(15000)
        io.pread_into(0, memoryview(out))
    assert bytes(out) == b"".join(bufs)


def test_exclusive_lock(tmp_path):
    a = open_file(tmp_path / "f", create_size=4096)
    b = open_file(tmp_path / "f")
    try:
        a.lock_exclusive()
        with pytest.raises(StorageLocked, match="locked"):
            b.lock_exclusive()
    finally:
        a.close()
        b.close()


def test_copy_range_between_files_is_exact_and_leaves_positional_io_alone(tmp_path):
    from appliance.storage import copy_range
    data = bytes(range(256)) * 4096                     # 1 MiB, no two 256-byte runs alike
    with open_file(tmp_path / "src", create_size=2 << 20) as src, \
            open_file(tmp_path / "dst", create_size=2 << 20) as dst:
        src.pwritev(4096, [data])
        copy_range(src, 4096 + 100, dst, 512, len(data) - 100)
        copy_range(src, 4096, dst, 0, 100)              # a second copy, elsewhere
        assert dst._copy_fd >= 0                         # the kernel copied (sendfile)
        dst.pwritev(len(data) + 4096, [b"after"])        # ordinary writes still land right
        assert dst.size() == 2 << 20
        copy_range(src, 4096, dst, len(data) + 8192, 3)  # size() moved no copy position
    raw = (tmp_path / "dst").read_bytes()
    assert raw[:100] == data[:100]
    assert raw[512:512 + len(data) - 100] == data[100:]
    assert raw[len(data) + 4096:len(data) + 4101] == b"after"
    assert raw[len(data) + 8192:len(data) + 8195] == data[:3]


def test_copy_range_through_a_buffer_when_one_side_is_not_a_file(tmp_path):
    from appliance.storage import copy_range
    from tests.support.simdisk import SimMachine
    machine = SimMachine()
    sim = machine.open("sim", 3 << 20)
    data = bytes(range(251)) * 9000                     # over two buffer-fulls
    with open_file(tmp_path / "f", create_size=3 << 20) as real:
        real.pwritev(7, [data])
        copy_range(real, 7, sim, 11, len(data))
        back = bytearray(len(data))
        sim.pread_into(11, memoryview(back))
        assert back == data
        copy_range(sim, 11, real, 1 << 20, len(data))
        real.pread_into(1 << 20, memoryview(back))
        assert back == data
