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
