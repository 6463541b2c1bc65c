"""The user-side ring against the simulated kernel: PAD, wrap, TMR, out-of-order, aliasing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tcmu_helpers import rw10

from appliance.tcmu import layout
from appliance.tcmu.ring import CommandRing, Completion, RingError
from appliance.tcmu.sim import RingBroken, RingFull, SimConfig, SimKernel
from appliance.tcmu.sim_uio import DeviceBusy, SimUio


@pytest.fixture
def sim(tmp_path: Path):
    kernel = SimKernel(tmp_path / "dev", SimConfig(ring_bytes=4096, data_blocks=32))
    uio = SimUio(tmp_path / "dev")
    ring = CommandRing(uio.region)
    yield kernel, uio, ring
    ring.close()
    uio.close()
    kernel.close()


def test_single_opener(sim, tmp_path: Path) -> None:
    with pytest.raises(DeviceBusy):
        SimUio(tmp_path / "dev")


def test_fill_ring_one_byte_gap_and_pad_on_wrap(sim) -> None:
    kernel, _, ring = sim
    # TEST UNIT READY entries are 120 bytes; cmdr_size 3968 holds 33 (3960) with 8 bytes left,
    # but the kernel keeps one byte free, so the 33rd does not fit... 32 then fill.
    tickets = []
    with pytest.raises(RingFull, match="command ring full"):
        for _ in range(100):
            tickets.append(kernel.submit(bytes(6)))
    assert len(tickets) == (kernel.cmdr_size - 1) // 120
    requests = ring.fetch()
    assert len(requests) == len(tickets)
    # complete all: the ring drains and the next entry does not fit before the end → PAD
    ring.complete(Completion(r.cmd_id, 0) for r in requests)
    kernel.handle_completions()
    assert all(kernel.results[t].status == 0 for t in tickets)
    head_before = kernel.cmd_head
    to_end = kernel.cmdr_size - head_before
    big = kernel.submit(rw10(0x2A, 0, 8), os.urandom(4096))  # 128-byte entry
    assert to_end < 128
    pad = layout.read_header(kernel.region, kernel.cmdr_off + head_before)
    assert (pad.op, pad.length, pad.cmd_id) == (layout.OP_PAD, to_end, 0)
    assert kernel.cmd_head == 128
    (req,) = ring.fetch()  # PAD skipped
    assert req.cdb[0] == 0x2A
    ring.complete([Completion(req.cmd_id, 0)])
    kernel.handle_completions()
    assert kernel.results[big].status == 0 and kernel.cmd_tail == kernel.cmd_head == 128


def test_out_of_order_completion_steals_slots(sim) -> None:
    kernel, _, ring = sim
    payloads = [os.urandom(4096) for _ in range(5)]
    tickets = [kernel.submit(rw10(0x2A, i * 8, 8), p) for i, p in enumerate(payloads)]
    requests = ring.fetch()
    # The CDBs and iovecs were copied out: completing in reverse overwrites the ring slots
    # of commands still in flight, yet their requests stay intact.
    for req in reversed(requests):
        (base, length), = req.iovecs
        assert bytes(kernel.region[base: base + length]) == payloads[requests.index(req)]
        ring.complete([Completion(req.cmd_id, 0x02 if req is requests[0] else 0,
                                  sense=b"\x70\0\x03" + bytes(15))])
        assert kernel.handle_completions() == 1
    assert not kernel.broken
    assert [kernel.results[t].status for t in tickets] == [2, 0, 0, 0, 0]
    assert kernel.results[tickets[0]].sense[:3] == b"\x70\0\x03"
    assert kernel.outstanding == 0


def test_tmr_entries_get_unknown_op_and_are_passed(sim) -> None:
    kernel, _, ring = sim
    first = kernel.submit(bytes(6))
    kernel.queue_tmr(1, [1])
    second = kernel.submit(bytes(6))
    requests = ring.fetch()
    assert len(requests) == 2
    tmr_off = kernel.cmdr_off + layout.cmd_entry_size(0, 6)
    assert layout.read_header(kernel.region, tmr_off).uflags & layout.UFLAG_UNKNOWN_OP
    ring.complete(Completion(r.cmd_id, 0) for r in requests)
    kernel.handle_completions()
    assert kernel.results[first].status == kernel.results[second].status == 0
    assert kernel.cmd_tail == kernel.cmd_head


def test_trailing_tmr_does_not_hold_the_tail(sim) -> None:
    kernel, _, ring = sim
    kernel.submit(bytes(6))
    (req,) = ring.fetch()
    kernel.queue_tmr(5, [req.cmd_id])
    assert ring.fetch() == []
    ring.complete([Completion(req.cmd_id, 0)])
    assert kernel.cmd_tail == kernel.cmd_head


def test_completing_more_than_fetched_is_refused(sim) -> None:
    _, _, ring = sim
    with pytest.raises(RingError, match="none outstanding"):
        ring.complete([Completion(9, 0)])


def test_kernel_marks_ring_broken_on_unknown_cmd_id(sim) -> None:
    kernel, _, ring = sim
    kernel.submit(bytes(6))
    (req,) = ring.fetch()
    ring.complete([Completion(req.cmd_id + 100, 0)])  # a buggy handler's id
    with pytest.raises(RingBroken, match="not found"):
        kernel.handle_completions()
    later = kernel.submit(bytes(6))
    assert kernel.results[later].status == 0x02
    kernel.reset_ring(1)
    assert not kernel.broken and kernel.cmd_head == kernel.cmd_tail == 0


def test_read_len_shortens_data_in(sim) -> None:
    kernel, _, ring = sim
    t = kernel.submit(b"\x12\0\0\0\xff\0", data_in_len=255)
    (req,) = ring.fetch()
    (base, _), = req.iovecs
    kernel.region[base: base + 4] = b"ABCD"
    ring.complete([Completion(req.cmd_id, 0, read_len=4)])
    kernel.handle_completions()
    assert kernel.results[t].data_in == b"ABCD"


def test_malformed_head_is_a_ring_error(sim) -> None:
    kernel, _, ring = sim
    kernel._words[layout.MB_CMD_HEAD // 4] = kernel.cmdr_size + 8
    with pytest.raises(RingError, match="outside"):
        ring.fetch()


def test_describe_reports_what_a_stuck_io_report_needs(sim) -> None:
    """The line the handler logs on SIGUSR1: a fetched but uncompleted command shows as
    pending, with the cursor past it and the tail still before it."""
    kernel, _, ring = sim
    assert ring.describe() == "cmd_head 0 cmd_tail 0 cursor 0 pending 0"
    kernel.submit(rw10(0x2A, 0, 8), os.urandom(4096))
    (req,) = ring.fetch()
    head = ring.cmd_head
    assert head > 0
    assert ring.describe() == f"cmd_head {head} cmd_tail 0 cursor {head} pending 1"
    ring.complete([Completion(req.cmd_id, 0)])
    assert ring.describe() == f"cmd_head {head} cmd_tail {head} cursor {head} pending 0"
