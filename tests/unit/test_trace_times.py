"""bench/iscsi_compare's CPU accounting from the kernel's trace (vmlab/proc_counters.py
`parse_trace_times`): time on a CPU per thread, and per system call the time on a CPU inside
it, with the spans the thread was switched off taken out."""

from __future__ import annotations

import pytest

from vmlab.proc_counters import parse_trace_times


def switch(now: float, prev: int, nxt: int) -> str:
    return (f"{prev} {now:.6f} sched_switch: prev_comm=a prev_pid={prev} prev_prio=120 "
            f"prev_state=S ==> next_comm=b next_pid={nxt} next_prio=120")


TRACE = "\n".join([
    "10 0.000000 sys_enter: NR 328 (3, 7f00, 2, 0, 0, 0)",      # pwritev2, thread 10 running
    switch(0.100000, 10, 0),                                    # blocks inside the call
    "11 0.150000 sys_enter: NR 1 (1, 0, 4)",                    # another process: not counted
    switch(0.300000, 0, 10),                                    # back on, still inside
    "10 0.350000 sys_exit: NR 328 = 8192",
    "10 0.400000 sys_enter: NR 1 (5, 7f00, 4)",                 # write (the poke)
    "10 0.410000 sys_exit: NR 1 = 4",
    switch(0.500000, 10, 0),                                    # user time until here
    "garbage that is not an event",
])


def test_on_cpu_and_inside_each_call_leave_out_the_time_switched_off():
    out = parse_trace_times(TRACE, {10})
    assert set(out) == {"10"}
    # On a CPU: 0.0-0.1 and 0.3-0.5; inside pwritev2 0.35 s less the 0.2 s switched off.
    assert out["10"]["on_cpu_us"] == pytest.approx(300_000, abs=0.2)
    assert out["10"]["calls"] == {"pwritev2": [1, pytest.approx(150_000, abs=0.2)],
                                  "write": [1, pytest.approx(10_000, abs=0.2)]}
    # What is left is user time: 300 000 - 160 000 µs outside any call.


def test_a_thread_not_asked_for_is_not_reported():
    assert parse_trace_times(TRACE, {12}) == {}


def test_an_exit_without_its_enter_counts_nothing():
    out = parse_trace_times("10 1.000000 sys_exit: NR 328 = 0\n" + switch(1.5, 10, 0), {10})
    assert out["10"]["calls"] == {}
    assert out["10"]["on_cpu_us"] == pytest.approx(500_000, abs=0.2)
