"""Property tests: buffer helpers over random iovec splits, and random batches of writes,
reads, UNMAP and WRITE SAME against the real Volume checked against a bytearray model
(a read must see exactly the writes before it in the batch, whatever the coalescing)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk, buffers
from tests.unit.scsi.conftest import LIMITS, SERIAL, Faults, open_volume
from tests.unit.scsi.helpers import read10, write10

BS = 512
BLOCKS = 64


def split_views(data: bytes, cuts: list[int]) -> list[memoryview]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [memoryview(bytearray(data[a:b])) for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=150, deadline=None)
@given(nblocks=st.integers(1, 8), cuts=st.lists(st.integers(0, 8 * BS), max_size=6),
       start=st.integers(0, 8 * BS), length=st.integers(0, 8 * BS))
def test_buffer_helpers_over_random_splits(nblocks, cuts, start, length):
    data = bytes((i * 7 + 3) % 256 for i in range(nblocks * BS))
    bufs = split_views(data, cuts)
    pieces = list(buffers.block_pieces(bufs, len(data), BS))
    assert b"".join(bytes(v) for _, v in pieces) == data
    assert all(len(v) % BS == 0 and first * BS == sum(len(p) for _, p in pieces[:i])
               for i, (first, v) in enumerate(pieces))
    if start + length <= len(data):
        assert bytes(buffers.region(bufs, start, length)) == data[start:start + length]
    out = split_views(bytes(len(data)), cuts)
    n = buffers.copy_in(data[:length], out)
    assert n == min(length, len(data))
    assert b"".join(bytes(b) for b in out) == data[:n] + bytes(len(data) - n)


@pytest.fixture(scope="module")
def model_disk(tmp_path_factory):
    volume = open_volume(tmp_path_factory.mktemp("model"), Faults(), num_blocks=BLOCKS)
    yield ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS)
    volume.close()


extent = st.tuples(st.integers(0, BLOCKS - 1), st.integers(1, 8)).map(
    lambda t: (t[0], min(t[1], BLOCKS - t[0])))
command = st.one_of(
    st.tuples(st.just("write"), extent, st.integers(1, 250)),
    st.tuples(st.just("read"), extent, st.just(0)),
    st.tuples(st.just("unmap"), extent, st.just(0)),
    st.tuples(st.just("same"), extent, st.integers(0, 250)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(command, min_size=1, max_size=10), min_size=1, max_size=4))
def test_random_batches_match_a_model(model_disk, batches):
    disk = model_disk
    model = bytearray(BLOCKS * BS)
    # Start from the disk's current contents (the volume is shared between examples).
    (res,) = disk.execute([ScsiCommand(read10(0, BLOCKS), [memoryview(model)])])
    assert res.good
    for batch in batches:
        cmds, expected = [], []
        for kind, (lba, n), fill in batch:
            span = slice(lba * BS, (lba + n) * BS)
            if kind == "write":
                data = bytes([fill]) * (n * BS)
                cmds.append(ScsiCommand(write10(lba, n), [memoryview(bytearray(data))]))
                model[span] = data
                expected.append(None)
            elif kind == "read":
                cmds.append(ScsiCommand(read10(lba, n), [memoryview(bytearray(n * BS))]))
                expected.append(bytes(model[span]))
            elif kind == "unmap":
                params = struct.pack(">HH4xQI4x", 22, 16, lba, n)
                cdb = bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(params), 0])
                cmds.append(ScsiCommand(cdb, [memoryview(bytearray(params))]))
                model[span] = bytes(n * BS)
                expected.append(None)
            else:
                cdb = struct.pack(">BBIBHB", 0x41, 0x08, lba, 0, n, 0)   # WRITE SAME + UNMAP
                block = bytes([fill]) * BS
                cmds.append(ScsiCommand(cdb, [memoryview(bytearray(block))]))
                model[span] = block * n
                expected.append(None)
        results = disk.execute(cmds)
        for cmd, result, want in zip(cmds, results, expected, strict=True):
            assert result.good, result
            if want is not None:
                assert bytes(cmd.data[0]) == want
