"""The fast route for READ/WRITE (10)/(16) (appliance/scsi/fastpath.py) must be invisible:
for any CDB and any buffers, the same status, sense, READ_LEN, Data-In bytes and medium
contents as the generic route (rw.py), which a second disk with the fast table emptied runs."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk, fastpath
from appliance.scsi import disk as disk_module
from tests.unit.scsi.conftest import BLOCK, LIMITS, NUM_BLOCKS, SERIAL, Faults, open_volume

MAX_BLOCKS = LIMITS.max_transfer_bytes // BLOCK
OPCODES = {0x28: 10, 0x2A: 10, 0x88: 16, 0x8A: 16}


class GenericDisk:
    """A ScsiDisk that never takes the fast route. A wrapper, not a subclass: compiled
    (docs/compiled.md), ScsiDisk admits no interpreted subclass; its fast table is a module
    global, which the compiled code looks up at every command as the interpreted code does."""

    def __init__(self, *args):
        self.disk = ScsiDisk(*args)
        self.volume = self.disk.volume

    def execute(self, cmds):
        saved = disk_module.FAST_HANDLERS
        disk_module.FAST_HANDLERS = {}
        try:
            return self.disk.execute(cmds)
        finally:
            disk_module.FAST_HANDLERS = saved


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """(fast, generic): two disks over two volumes that start equal and must stay equal."""
    volumes = [open_volume(tmp_path_factory.mktemp(name), Faults()) for name in ("f", "g")]
    yield (ScsiDisk(volumes[0], DiskIdentity(SERIAL), LIMITS),
           GenericDisk(volumes[1], DiskIdentity(SERIAL), LIMITS))
    for vol in volumes:
        vol.close()


def rw_cdb(opcode: int, flags: int, lba: int, nblocks: int) -> bytes:
    if OPCODES[opcode] == 10:
        return struct.pack(">BBIBHB", opcode, flags, lba & 0xFFFFFFFF, 0, nblocks & 0xFFFF, 0)
    return struct.pack(">BBQIBB", opcode, flags, lba, nblocks & 0xFFFFFFFF, 0, 0)


lbas = st.one_of(st.sampled_from([0, 1, NUM_BLOCKS - MAX_BLOCKS, NUM_BLOCKS - 1, NUM_BLOCKS,
                                  NUM_BLOCKS + 7, 0xFFFFFFFF]),
                 st.integers(0, NUM_BLOCKS + 16))
lengths = st.one_of(st.sampled_from([0, 1, 8, MAX_BLOCKS, MAX_BLOCKS + 1, 0xFFFF]),
                    st.integers(0, MAX_BLOCKS + 2))
flag_bytes = st.one_of(st.sampled_from([0x00, 0x08, 0x10, 0x18, 0x20, 0xE0, 0x02]),
                       st.integers(0, 255))
# How the Data-In/Out buffers relate to the transfer: exact in one or several block-multiple
# pieces, split mid-block, short, long, a non-byte format, or arbitrary sizes.
layouts = st.sampled_from(["exact", "pieces", "mid-block", "short", "long", "words", "empty",
                           "random"])


def make_buffers(layout: str, nbytes: int, rnd: random.Random) -> list[memoryview]:
    if layout == "exact":
        sizes = [nbytes]
    elif layout == "pieces":
        blocks = nbytes // BLOCK
        cut = rnd.randint(0, blocks) * BLOCK
        sizes = [cut, nbytes - cut]
    elif layout == "mid-block":
        cut = rnd.randint(0, nbytes)
        sizes = [cut, nbytes - cut]
    elif layout == "short":
        sizes = [max(nbytes - BLOCK, 0)]
    elif layout == "long":
        sizes = [nbytes + BLOCK]
    elif layout == "empty":
        sizes = [0, nbytes]
    elif layout == "words":
        return ([memoryview(bytearray(rnd.randbytes(nbytes))).cast("I")] if nbytes % 4 == 0
                else [memoryview(bytearray(rnd.randbytes(nbytes)))])
    else:
        sizes = [rnd.randint(0, 3 * BLOCK) for _ in range(rnd.randint(0, 3))]
    return [memoryview(bytearray(rnd.randbytes(n))) for n in sizes]


def outcome(disk: ScsiDisk, cdb: bytes, bufs: list[memoryview]):
    (result,) = disk.execute([ScsiCommand(cdb, bufs)])
    data = b"".join(bytes(b.cast("B")) if b.format != "B" else bytes(b) for b in bufs)
    return result.status, result.sense, result.read_len, data


def medium(disk: ScsiDisk, lba: int, nblocks: int) -> bytes:
    lba = min(lba, NUM_BLOCKS - 1)
    nblocks = max(1, min(nblocks, NUM_BLOCKS - lba, MAX_BLOCKS))
    buf = bytearray(nblocks * BLOCK)
    disk.volume.read_into(lba, nblocks, [memoryview(buf)])
    return bytes(buf)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(opcode=st.sampled_from(sorted(OPCODES)), flags=flag_bytes, lba=lbas, nblocks=lengths,
       layout=layouts, truncate=st.one_of(st.none(), st.integers(1, 15)), seed=st.integers(0, 99))
def test_fast_and_generic_routes_agree(disks, opcode, flags, lba, nblocks, layout, truncate,
                                       seed):
    fast, generic = disks
    cdb = rw_cdb(opcode, flags, lba, nblocks)
    if truncate is not None:
        cdb = cdb[:truncate]
    wanted = nblocks * BLOCK if nblocks <= MAX_BLOCKS + 2 else BLOCK
    got = [outcome(disk, cdb, make_buffers(layout, wanted, random.Random(seed)))
           for disk in (fast, generic)]
    assert got[0] == got[1]
    assert medium(fast, lba, nblocks) == medium(generic, lba, nblocks)


def test_plain_write_and_read_take_the_fast_route(disks, monkeypatch):
    """The commands the hot path is for really go through fastpath (not silently declined)."""
    fast, _ = disks
    taken: list[int] = []

    def recording(handler):
        def run(ctx, cmd, fmt):
            taken.append(cmd.cdb[0])
            return handler(ctx, cmd, fmt)
        return run

    table = {op: (recording(handler), fmt)
             for op, (handler, fmt) in fastpath.FAST_HANDLERS.items()}
    monkeypatch.setattr(disk_module, "FAST_HANDLERS", table)
    payload = random.Random(1).randbytes(8 * BLOCK)
    for write_op, read_op in ((0x2A, 0x28), (0x8A, 0x88)):
        results = fast.execute([ScsiCommand(rw_cdb(write_op, 0x08, 64, 8),
                                            [memoryview(bytearray(payload))])])
        assert results[0].status == 0
        into = memoryview(bytearray(8 * BLOCK))
        (result,) = fast.execute([ScsiCommand(rw_cdb(read_op, 0, 64, 8), [into])])
        assert result.status == 0 and bytes(into) == payload
    assert taken == [0x2A, 0x28, 0x8A, 0x88]


def test_unit_attention_is_not_skipped_by_the_fast_route(disks):
    fast, _ = disks
    fast.resized()
    into = memoryview(bytearray(BLOCK))
    (first,) = fast.execute([ScsiCommand(rw_cdb(0x28, 0, 0, 1), [into])])
    assert first.status == 0x02
    assert (first.sense[2], first.sense[12], first.sense[13]) == (0x6, 0x2A, 0x09)
    (second,) = fast.execute([ScsiCommand(rw_cdb(0x28, 0, 0, 1), [into])])
    assert second.status == 0


def test_fast_read_of_a_failing_mirror_is_medium_error(tmp_path):
    faults = Faults()
    volume = open_volume(tmp_path, faults)
    try:
        disk = ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS)
        faults.reads = True
        (result,) = disk.execute([ScsiCommand(rw_cdb(0x28, 0, 8, 2),
                                              [memoryview(bytearray(2 * BLOCK))])])
        assert result.status == 0x02
        assert (result.sense[2], result.sense[12], result.sense[13]) == (0x3, 0x11, 0x00)
    finally:
        faults.reads = False
        volume.close()
