"""Random CDBs and buffers never raise and always produce a well-formed status + sense."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk
from appliance.scsi.disk import HANDLERS
from tests.unit.scsi.conftest import LIMITS, SERIAL, Faults, open_volume

KNOWN = sorted(HANDLERS)
SENSE_KEYS = {0x5, 0xE}   # no I/O faults injected: HARDWARE ERROR would be a bug

cdbs = st.one_of(
    st.binary(min_size=0, max_size=16),
    # Implemented opcodes with random fields reach the handlers' decoding paths.
    st.tuples(st.sampled_from(KNOWN), st.binary(min_size=0, max_size=15))
      .map(lambda t: bytes([t[0]]) + t[1]),
)
buffers = st.lists(st.integers(min_value=0, max_value=3000), max_size=4)


def check(result, buf_total: int) -> None:
    assert result.status in (0x00, 0x02)
    if result.status == 0x02:
        s = result.sense
        assert len(s) == 18 and s[0] & 0x7F == 0x70 and s[7] == 10
        assert s[2] in SENSE_KEYS
        assert result.read_len is None
    else:
        assert result.sense == b""
        assert result.read_len is None or 0 <= result.read_len <= buf_total


@pytest.fixture(scope="module")
def shared_disk(tmp_path_factory):
    """One real volume for all examples (opening one per example would dominate the run)."""
    volume = open_volume(tmp_path_factory.mktemp("fuzz"), Faults())
    yield ScsiDisk(volume, DiskIdentity(SERIAL), LIMITS)
    volume.close()


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cdb=cdbs, sizes=buffers)
def test_random_cdbs_never_raise(shared_disk, cdb, sizes):
    disk = shared_disk
    bufs = [memoryview(bytearray(n)) for n in sizes]
    (result,) = disk.execute([ScsiCommand(cdb, bufs)])
    check(result, sum(sizes))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(cdbs, buffers), min_size=1, max_size=12))
def test_random_batches_give_one_result_per_command(shared_disk, batch):
    disk = shared_disk
    cmds = [ScsiCommand(cdb, [memoryview(bytearray(n)) for n in sizes]) for cdb, sizes in batch]
    results = disk.execute(cmds)
    assert len(results) == len(cmds)
    for cmd, result in zip(cmds, results, strict=True):
        check(result, sum(len(b) for b in cmd.data))
