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
    with (open_file(tmp_path / "src", create_size=2 << 20) as src,
          open_file(tmp_path / "dst", create_size=2 << 20) as dst):
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


# --- direct writes (appliance/direct_io.py) -----------------------------------------

def aligned_buffer(data: bytes) -> memoryview:
    """`data` in page-aligned memory, as the TCMU ring's data area is."""
    import mmap
    m = mmap.mmap(-1, len(data))
    m[:] = data
    return memoryview(m)


def test_a_large_aligned_write_bypasses_the_page_cache_with_exact_bytes(tmp_path):
    from tests.support.pagecache import cached_pages
    meta, data = bytes(range(256)) * 16, bytes(reversed(range(256))) * 4096   # 4 KiB, 1 MiB
    with open_file(tmp_path / "f", create_size=4 << 20) as io:
        assert io.enable_direct(64 * 1024) and io.writes_direct
        io.pwritev(8192, [meta, aligned_buffer(data)])       # meta is bytes: bounced
        assert cached_pages(tmp_path / "f", 8192, 4096 + len(data)) == 0
        io.pwritev(2 << 20, [aligned_buffer(data[:8192])])   # below 64 KiB: buffered
        assert cached_pages(tmp_path / "f", 2 << 20, 8192) == 2
        out = bytearray(4096 + len(data))
        io.pread_into(8192, memoryview(out))
    assert out == meta + data
    raw = (tmp_path / "f").read_bytes()
    assert raw[8192:8192 + len(out)] == meta + data and raw[:8192] == bytes(8192)
    assert raw[2 << 20:(2 << 20) + 8192] == data[:8192]


@pytest.mark.parametrize("case", ["unaligned length", "unaligned offset", "large bytes"])
def test_writes_direct_io_cannot_take_go_through_the_page_cache(tmp_path, case):
    from tests.support.pagecache import cached_pages
    data = bytes(range(256)) * 1024                            # 256 KiB
    offset, bufs = {
        "unaligned length": (0, [aligned_buffer(data), b"x" * 512]),
        "unaligned offset": (512, [aligned_buffer(data)]),
        "large bytes": (0, [data]),                            # too much to bounce
    }[case]
    with open_file(tmp_path / "f", create_size=1 << 20) as io:
        assert io.enable_direct(64 * 1024)
        io.pwritev(offset, bufs)
        assert cached_pages(tmp_path / "f", 0, 512 * 1024) > 0
    want = b"".join(bytes(b) for b in bufs)
    assert (tmp_path / "f").read_bytes()[offset:offset + len(want)] == want


def test_a_direct_write_refused_by_the_file_system_is_written_buffered(tmp_path, monkeypatch):
    # No file system here refuses O_DIRECT writes (tmpfs accepts them since Linux 6.6), so
    # the refusal is injected at the system call, for the direct descriptor only.
    import errno
    import os
    data = bytes(range(256)) * 1024
    with open_file(tmp_path / "f", create_size=1 << 20) as io:
        assert io.enable_direct(64 * 1024)
        direct_fd = io._direct._fd
        real = os.pwritev

        def refusing(fd, bufs, offset):
            if fd == direct_fd:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, bufs, offset)
        monkeypatch.setattr(os, "pwritev", refusing)
        io.pwritev(4096, [aligned_buffer(data)])
        assert not io.writes_direct                              # buffered from now on
        io.pwritev(4096 + len(data), [aligned_buffer(data)])
    assert (tmp_path / "f").read_bytes()[4096:4096 + 2 * len(data)] == data * 2
