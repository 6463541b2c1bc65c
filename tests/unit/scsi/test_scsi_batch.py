"""execute(): ordering, write coalescing into group commits, unit attention, the small
commands (TEST UNIT READY, REQUEST SENSE, START STOP UNIT, SYNCHRONIZE CACHE), opcodes."""

from __future__ import annotations

import struct

import pytest

from appliance.scsi import ScsiCommand
from tests.unit.scsi.conftest import NUM_BLOCKS, medium
from tests.unit.scsi.helpers import assert_check, pattern, read10, run, views, write10

BS = 512


def w(lba: int, n: int = 1, seed: int = 0, flags: int = 0) -> ScsiCommand:
    return ScsiCommand(write10(lba, n, flags), views(pattern(n * BS, seed=seed or lba + 1)))


def r(lba: int, n: int = 1) -> ScsiCommand:
    return ScsiCommand(read10(lba, n), views(bytes(n * BS)))


def unmap(lba: int, n: int) -> ScsiCommand:
    params = struct.pack(">HH4xQI4x", 22, 16, lba, n)
    return ScsiCommand(bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(params), 0]), views(params))


def write_same(lba: int, n: int) -> ScsiCommand:
    return ScsiCommand(struct.pack(">BBIBHB", 0x41, 0, lba, 0, n, 0), views(pattern(BS)))


TUR = ScsiCommand(bytes(6))


def test_consecutive_writes_are_one_group_commit(disk, volume, calls):
    cmds = [w(i * 4) for i in range(10)] + [unmap(100, 8), write_same(200, 4)]
    results = disk.execute(cmds)
    assert all(res.good for res in results)
    assert len(calls.submits) == 1 and disk.group_commits == 1
    ops, fua = calls.submits[0]
    assert len(ops) == 12 and fua is False


def test_fua_of_any_write_makes_the_group_durable(disk, volume, calls):
    disk.execute([w(0), w(1, flags=0x08), w(2)])
    assert calls.submits == [(calls.submits[0][0], True)]


def test_read_after_write_in_the_same_batch_sees_it(disk, volume, calls):
    read_back = r(5, 2)
    results = disk.execute([w(5, 2, seed=3), read_back, w(5, 2, seed=4), w(9)])
    assert all(res.good for res in results)
    assert bytes(read_back.data[0]) == pattern(2 * BS, seed=3)
    assert len(calls.submits) == 2          # the overlapping read split the group
    assert medium(volume, 5, 2) == pattern(2 * BS, seed=4)


def test_non_overlapping_reads_and_control_commands_do_not_split_groups(disk, volume, calls):
    inquiry = ScsiCommand(bytes([0x12, 0, 0, 0, 36, 0]), views(bytes(36)))
    results = disk.execute([w(0), r(100), TUR, inquiry, w(1), r(50), w(2)])
    assert all(res.good for res in results)
    assert len(calls.submits) == 1


def test_sync_cache_commits_queued_writes_then_flushes(disk, volume, calls):
    results = disk.execute([w(0), ScsiCommand(bytes([0x35] + [0] * 9)), w(1)])
    assert all(res.good for res in results)
    assert len(calls.submits) == 2 and calls.flushes == 1


def test_failed_group_fails_each_of_its_writes_only(disk, volume, faults):
    cmds = [w(0), w(1), r(100)]
    faults.writes = True
    results = disk.execute(cmds)
    for res in results[:2]:
        assert_check(res, 3, 0x0C, 0)
    assert results[2].good


def test_invalid_command_in_a_batch_does_not_disturb_others(disk, volume, calls):
    results = disk.execute([w(0), w(NUM_BLOCKS), ScsiCommand(b"\xff" * 10), w(2)])
    assert results[0].good and results[3].good
    assert_check(results[1], 5, 0x21, 0)
    assert_check(results[2], 5, 0x20, 0)
    assert len(calls.submits) == 1 and len(calls.submits[0][0]) == 2


def test_resize_unit_attention_reported_once(disk):
    disk.resized()
    assert run(disk, bytes([0x12, 0, 0, 0, 36, 0]), in_len=36)[0].good   # INQUIRY exempt
    assert_check(run(disk, bytes(6))[0], 6, 0x2A, 0x09)
    assert run(disk, bytes(6))[0].good


def test_request_sense_returns_and_clears_the_unit_attention(disk):
    disk.resized()
    result, data = run(disk, bytes([0x03, 0, 0, 0, 252, 0]), in_len=252)
    assert result.good and result.read_len == 18
    assert data == bytes([0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x09, 0, 0, 0, 0])
    result, data = run(disk, bytes([0x03, 0, 0, 0, 252, 0]), in_len=252)
    assert data == bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10)
    assert run(disk, bytes(6))[0].good


def test_request_sense_descriptor_format_refused(disk):
    assert_check(run(disk, bytes([0x03, 1, 0, 0, 252, 0]), in_len=252)[0], 5, 0x24, 0,
                 cdb_field=(1, 0))


@pytest.mark.parametrize("byte4,ok,field", [(0x01, True, None), (0x00, False, (4, 0)),
                                            (0x03, False, (4, 1)), (0x11, False, (4, 7))])
def test_start_stop_unit(disk, byte4, ok, field):
    result, _ = run(disk, bytes([0x1B, 1, 0, 0, byte4, 0]))
    if ok:
        assert result.good
    else:
        assert_check(result, 5, 0x24, 0, cdb_field=field)


@pytest.mark.parametrize("cdb", [bytes([0x35] + [0] * 9),
                                 bytes([0x91]) + bytes(15),
                                 struct.pack(">BBIBHB", 0x35, 2, 10, 0, 20, 0)])
def test_synchronize_cache(disk, volume, cdb, calls):
    assert run(disk, cdb)[0].good and calls.flushes == 1


def test_synchronize_cache_errors(disk, volume, faults):
    cdb = struct.pack(">BBIBHB", 0x35, 0, NUM_BLOCKS - 1, 0, 2, 0)
    assert_check(run(disk, cdb)[0], 5, 0x21, 0)
    assert run(disk, write10(0, 1), out=bytes(BS))[0].good      # cached: WCE=1, no FUA
    faults.writes = True
    assert_check(run(disk, bytes([0x35] + [0] * 9))[0], 3, 0x0C, 0)


@pytest.mark.parametrize("opcode", [0x04, 0x1D, 0x37, 0x5E, 0x83, 0xA3, 0xC0, 0xFF])
def test_unimplemented_opcodes(disk, opcode):
    assert_check(run(disk, bytes([opcode]) + bytes(15))[0], 5, 0x20, 0)


def test_empty_cdb(disk):
    assert_check(run(disk, b"")[0], 5, 0x24, 0, cdb_field=(0, None))


def test_unexpected_exception_becomes_hardware_error(disk, volume, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")
    monkeypatch.setattr(volume, "read_into", broken)
    assert_check(run(disk, read10(0, 1), in_len=BS)[0], 4, 0x44, 0)
