"""What the kernel counts for one guest process around a benchmark run, without extra tools.

Used by bench/iscsi_compare to say where a TCMU handler's system time per command goes.
Every figure comes from /proc (Documentation/filesystems/proc.rst):

  /proc/<pid>/stat            utime, stime, minflt of the whole process (live and dead threads)
  /proc/<pid>/io              syscr, syscw: read- and write-class system calls of the whole
                              process (read/readv/pread*/recv*, write/writev/pwrite*/send*;
                              not select, poll, futex, ioctl)
  /proc/<pid>/task/<tid>/stat, status
                              per thread: utime, stime, minflt, voluntary_ctxt_switches
                              (the thread slept: futex wait, select/poll, blocking I/O) and
                              nonvoluntary_ctxt_switches (preempted)

Context switches exist only per thread; a thread that exits between two samples takes its
count with it (`threads_gone` says how many did).

System calls by name: `strace -c -f -p` where the guest has strace, otherwise the kernel's own
raw_syscalls:sys_enter tracepoint through tracefs (Documentation/trace/events.rst), filtered
to the process's threads and counted inside the guest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol


class Guest(Protocol):
    def run(self, argv: list[str] | str, *, timeout: float = ..., check: bool = ...,
            stdin: bytes = ...) -> object: ...


@dataclass(frozen=True)
class Task:
    comm: str
    utime: int
    stime: int
    minflt: int
    vcsw: int
    nvcsw: int


@dataclass(frozen=True)
class Sample:
    busy: int                               # the guest's busy ticks, every CPU
    utime: int = 0
    stime: int = 0
    minflt: int = 0
    syscr: int = 0
    syscw: int = 0
    tasks: dict[int, Task] = field(default_factory=dict)
    total: int = 0                          # the guest's ticks, every CPU, idle included
    uptime_s: float = 0.0                   # the guest's clock (/proc/uptime) at the sample


def _sample_script(pid: int | None) -> str:
    script = "head -1 /proc/stat; echo U $(cut -d' ' -f1 /proc/uptime)"
    if pid:
        script += (f"; echo P $(cat /proc/{pid}/stat); cat /proc/{pid}/io"
                   f"; for t in /proc/{pid}/task/*; do echo T ${{t##*/}} $(cat $t/stat) "
                   "$(grep ctxt_switches $t/status | tr '\\t\\n' '  '); done")
    return script + "; true"


def _stat_fields(line: str) -> tuple[str, list[str]]:
    """(comm, the fields after it): comm may hold spaces and parentheses."""
    head, tail = line.rsplit(")", 1)
    return head.split("(", 1)[1], tail.split()


def parse_sample(text: str) -> Sample:
    lines = text.splitlines()
    fields = [int(x) for x in lines[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]          # less idle and iowait
    utime = stime = minflt = syscr = syscw = 0
    uptime_s = 0.0
    tasks: dict[int, Task] = {}
    for line in lines[1:]:
        if line.startswith("U "):
            uptime_s = float(line.split()[1])
        elif line.startswith("P "):
            _, rest = _stat_fields(line)
            # Fields after comm start at field 3 (state): minflt 10, utime 14, stime 15.
            minflt, utime, stime = int(rest[7]), int(rest[11]), int(rest[12])
        elif line.startswith("syscr:"):
            syscr = int(line.split()[1])
        elif line.startswith("syscw:"):
            syscw = int(line.split()[1])
        elif line.startswith("T ") and ")" in line:     # else the thread ended meanwhile
            tid = int(line.split()[1])
            comm, rest = _stat_fields(line)
            switches = dict(zip(rest[50::2], rest[51::2], strict=False))
            tasks[tid] = Task(comm, int(rest[11]), int(rest[12]), int(rest[7]),
                              int(switches.get("voluntary_ctxt_switches:", 0)),
                              int(switches.get("nonvoluntary_ctxt_switches:", 0)))
    return Sample(busy, utime, stime, minflt, syscr, syscw, tasks, sum(fields), uptime_s)


def sample(vm: Guest, pid: int | None) -> Sample:
    return parse_sample(vm.run(_sample_script(pid)).text)  # type: ignore[attr-defined]


def per_command(before: Sample, after: Sample, commands: float, clk_tck: int) -> dict:
    """The process's counters per command between two samples (µs for CPU time), with the
    threads that did anything, busiest first."""
    us = 1e6 / clk_tck / commands
    out: dict = {
        "process_user_us_per_cmd": round((after.utime - before.utime) * us, 1),
        "process_sys_us_per_cmd": round((after.stime - before.stime) * us, 1),
        "syscr_per_cmd": round((after.syscr - before.syscr) / commands, 2),
        "syscw_per_cmd": round((after.syscw - before.syscw) / commands, 2),
        "minflt_per_cmd": round((after.minflt - before.minflt) / commands, 3),
    }
    threads = []
    zero = Task("", 0, 0, 0, 0, 0)
    for tid, now in after.tasks.items():
        then = before.tasks.get(tid, zero)
        delta = {"tid": tid, "comm": now.comm,
                 "user_us": round((now.utime - then.utime) * us, 1),
                 "sys_us": round((now.stime - then.stime) * us, 1),
                 "vcsw": round((now.vcsw - then.vcsw) / commands, 3),
                 "nvcsw": round((now.nvcsw - then.nvcsw) / commands, 3),
                 "minflt": round((now.minflt - then.minflt) / commands, 3)}
        if any(delta[k] for k in ("user_us", "sys_us", "vcsw", "nvcsw", "minflt")):
            threads.append(delta)
    threads.sort(key=lambda t: -(t["user_us"] + t["sys_us"] + t["vcsw"]))
    out["vcsw_per_cmd"] = round(sum(t["vcsw"] for t in threads), 3)
    out["nvcsw_per_cmd"] = round(sum(t["nvcsw"] for t in threads), 3)
    out["threads_per_cmd"] = threads
    out["threads_gone"] = len(set(before.tasks) - set(after.tasks))
    return out


# --------------------------------------------------------------------------- syscalls by name

# x86-64 numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls a storage daemon makes;
# any other is shown as its number.
SYSCALL_NAMES = {
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 7: "poll", 8: "lseek",
    9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
    14: "rt_sigprocmask", 16: "ioctl", 17: "pread64", 18: "pwrite64", 19: "readv",
    20: "writev", 23: "select", 24: "sched_yield", 28: "madvise", 35: "nanosleep",
    39: "getpid", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 72: "fcntl",
    74: "fsync", 75: "fdatasync", 186: "gettid", 202: "futex", 208: "io_getevents",
    209: "io_submit", 213: "epoll_create", 228: "clock_gettime", 230: "clock_nanosleep",
    232: "epoll_wait", 257: "openat", 262: "newfstatat", 270: "pselect6", 271: "ppoll",
    281: "epoll_pwait", 284: "eventfd", 290: "eventfd2", 295: "preadv", 296: "pwritev",
    318: "getrandom", 327: "preadv2", 328: "pwritev2", 425: "io_uring_setup",
    426: "io_uring_enter", 441: "epoll_pwait2",
}
# futex(2) ops (include/uapi/linux/futex.h), private flag (128) and clock flag (256) masked.
FUTEX_OPS = {0: "WAIT", 1: "WAKE", 5: "WAKE_OP", 6: "LOCK_PI", 7: "UNLOCK_PI",
             9: "WAIT_BITSET", 10: "WAKE_BITSET"}

TRACEFS = "/sys/kernel/tracing"
# An instance of our own: its buffer, events and filter leave the global trace alone.
INSTANCE = f"{TRACEFS}/instances/bench-syscalls"
_EVENT = f"{INSTANCE}/events/raw_syscalls/sys_enter"
# x86 page faults (arch/x86/include/asm/trace/exceptions.h): from user code, and from the
# kernel touching user memory for the process (copy_to/from_user in read/write calls).
_FAULTS = [f"{INSTANCE}/events/exceptions/page_fault_user",
           f"{INSTANCE}/events/exceptions/page_fault_kernel"]
_EXIT = f"{INSTANCE}/events/raw_syscalls/sys_exit"
_SWITCH = f"{INSTANCE}/events/sched/sched_switch"
_TRACE_BUFFER_KB = 32768            # per CPU: a 5 s job at qd32 makes ~10^5 events
STRACE_OUT = "/var/tmp/bench-strace.txt"


def has_strace(vm: Guest) -> bool:
    return vm.run("command -v strace", check=False).rc == 0  # type: ignore[attr-defined]


class SyscallCounter:
    """Counts the system calls of one process's threads over a span, by thread and name.

    start() before the run, stop() after it: returns {"by_name": {...}, "by_thread": {...},
    "method": ..., "lost": N}, or {"error": why} when the guest offers no way."""

    def __init__(self, vm: Guest, pid: int, use_strace: bool) -> None:
        self.vm, self.pid, self.use_strace = vm, pid, use_strace
        self.tids: list[int] = []

    def start(self) -> str | None:
        """None when counting, else why not."""
        vm = self.vm
        if self.use_strace:
            vm.run(f"rm -f {STRACE_OUT}; setsid strace -c -f -p {self.pid} -o {STRACE_OUT} "
                   "</dev/null >/dev/null 2>&1 & echo $! > /var/tmp/bench-strace.pid")
            return None
        ready = vm.run(f"mountpoint -q {TRACEFS} || mount -t tracefs nodev {TRACEFS}; "
                       f"rmdir {INSTANCE} 2>/dev/null; mkdir {INSTANCE} && test -w {_EVENT}/filter",
                       check=False)
        if ready.rc != 0:  # type: ignore[attr-defined]
            return f"no {_EVENT} in the guest (tracefs)"
        self.tids = [int(t) for t in vm.run(f"ls /proc/{self.pid}/task").text.split()]  # type: ignore[attr-defined]
        flt = " || ".join(f"common_pid == {t}" for t in self.tids)
        faults = "".join(f" && if [ -w {ev}/filter ]; then echo '{flt}' > {ev}/filter && "
                         f"echo 1 > {ev}/enable; fi" for ev in _FAULTS)
        # For the time spent in each call: its exit, and the thread's switches off and onto
        # a CPU (a call that sleeps or is preempted is not on a CPU all along).
        switch = " || ".join(f"prev_pid == {t} || next_pid == {t}" for t in self.tids)
        faults += (f" && echo '{flt}' > {_EXIT}/filter && echo 1 > {_EXIT}/enable"
                   f" && if [ -w {_SWITCH}/filter ]; then echo '{switch}' > {_SWITCH}/filter"
                   f" && echo 1 > {_SWITCH}/enable; fi")
        vm.run(f"cd {INSTANCE} && echo 0 > tracing_on && "
               f"echo {_TRACE_BUFFER_KB} > buffer_size_kb && echo '{flt}' > {_EVENT}/filter && "
               f"echo 1 > {_EVENT}/enable{faults} && echo 1 > tracing_on", timeout=120)
        return None

    def stop(self) -> dict:
        if self.use_strace:
            return self._stop_strace()
        vm = self.vm
        # Count in the guest (coreutils and sed only: the image may have no awk): one line
        # `count tid nr arg1` per distinct triple; arg1 is futex's op.
        counted = vm.run(
            f"cd {INSTANCE} && echo 0 > tracing_on && echo 0 > {_EVENT}/enable && "
            "grep -h overrun per_cpu/cpu*/stats; "
            "sed -n 's/^.*-\\([0-9][0-9]*\\) *\\[[0-9]*\\].*sys_enter: NR \\([0-9][0-9]*\\) "
            "([0-9a-f]*, \\([0-9a-f]*\\).*/\\1 \\2 \\3/p' trace | sort | uniq -c; "
            # faults: `count F user|kernel page-address`
            "sed -n 's/^.*page_fault_\\(user\\|kernel\\): address=0x\\([0-9a-f]*\\)[0-9a-f]\\{3\\} .*/F \\1 \\2/p' "
            "trace | sort | uniq -c; "
            f"echo MAPS; cat /proc/{self.pid}/maps; echo TIMES; "
            # the events a call's time is reckoned from, shortened to what the parser reads
            "sed -n 's/^.*-\\([0-9][0-9]*\\) *\\[[0-9]*\\][^:]* \\([0-9][0-9]*\\.[0-9]*\\): "
            "\\(sys_enter: NR [0-9]*\\|sys_exit: NR [0-9]*\\|sched_switch: .*\\).*$/\\1 \\2 \\3/p' trace; "
            f"cd /; echo 0 > {INSTANCE}/events/enable; rmdir {INSTANCE}",
            timeout=600).text  # type: ignore[attr-defined]
        counted, _, timed = counted.partition("\nTIMES\n")
        counts = parse_trace_counts(counted, "tracefs raw_syscalls:sys_enter")
        counts["faults"] = parse_fault_counts(counted)
        counts["times"] = parse_trace_times(timed, set(self.tids))
        return counts

    def _stop_strace(self) -> dict:
        text = self.vm.run(
            "kill -INT $(cat /var/tmp/bench-strace.pid); "
            f"for i in $(seq 1 100); do [ -s {STRACE_OUT} ] && grep -q total {STRACE_OUT} && "
            f"break; sleep 0.2; done; cat {STRACE_OUT}", timeout=60, check=False).text  # type: ignore[attr-defined]
        by_name: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                by_name[parts[-1]] = int(parts[3])
        if not by_name:
            return {"error": f"strace -c gave no counts: {text[-300:]!r}"}
        return {"method": "strace -c -f", "by_name": by_name, "by_thread": {}, "lost": 0}


def parse_trace_counts(text: str, method: str) -> dict:
    """Lines `count tid nr arg1` (and `overrun: N` per CPU) → counts by name and thread."""
    by_name: dict[str, int] = {}
    by_thread: dict[str, dict[str, int]] = {}
    lost = 0
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["overrun:"]:
            lost += int(parts[1])
            continue
        if parts == ["MAPS"]:
            break
        if len(parts) != 4 or not parts[0].isdigit() or parts[1] == "F":
            continue
        count, tid, nr = int(parts[0]), parts[1], int(parts[2])
        name = SYSCALL_NAMES.get(nr, f"NR{nr}")
        if nr == 202:                               # futex: its op (hex, as the event prints)
            op = int(parts[3], 16) & ~(128 | 256)
            name = f"{name}:{FUTEX_OPS.get(op, op)}"
        by_name[name] = by_name.get(name, 0) + count
        mine = by_thread.setdefault(tid, {})
        mine[name] = mine.get(name, 0) + count
    return {"method": method, "by_name": by_name, "by_thread": by_thread, "lost": lost}


def parse_trace_times(text: str, tids: set[int]) -> dict:
    """Lines `tid seconds event` (sys_enter: NR n, sys_exit: NR n, sched_switch: ...) →
    per thread: µs on a CPU in all (between being switched on and off), and per system
    call µs on a CPU inside it (its enter to its exit, less the spans the thread was
    switched off), with the count. What is on a CPU outside the calls is user time (and
    the interrupts that came meanwhile). The span is from the thread's first event on."""
    on_cpu: dict[int, float] = {}
    since: dict[int, float] = {}           # switched on at
    off_since: dict[int, float] = {}       # switched off at (inside a call)
    inside: dict[int, tuple[int, float, float]] = {}   # nr, entered, off-CPU so far
    calls: dict[int, dict[str, list[float]]] = {}
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        tid, now, event, rest = int(parts[0]), float(parts[1]), parts[2], parts[3]
        if event == "sched_switch:":
            fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
            prev, nxt = int(fields.get("prev_pid", -1)), int(fields.get("next_pid", -1))
            if prev in tids:
                if prev in since:
                    on_cpu[prev] = on_cpu.get(prev, 0.0) + now - since.pop(prev)
                off_since[prev] = now
            if nxt in tids:
                since[nxt] = now
                if nxt in off_since and nxt in inside:
                    nr, entered, off = inside[nxt]
                    inside[nxt] = (nr, entered, off + now - off_since.pop(nxt))
                off_since.pop(nxt, None)
            continue
        if tid not in tids or not rest.startswith("NR "):
            continue
        since.setdefault(tid, now)         # running: it makes a call
        nr = int(rest[3:].split()[0])
        if event == "sys_enter:":
            inside[tid] = (nr, now, 0.0)
        elif event == "sys_exit:" and tid in inside and inside[tid][0] == nr:
            _, entered, off = inside.pop(tid)
            name = SYSCALL_NAMES.get(nr, f"NR{nr}")
            slot = calls.setdefault(tid, {}).setdefault(name, [0, 0.0])
            slot[0] += 1
            slot[1] += max(0.0, now - entered - off)
    out = {}
    for tid in sorted(set(on_cpu) | set(calls)):
        by_call = calls.get(tid, {})
        out[str(tid)] = {"on_cpu_us": round(on_cpu.get(tid, 0.0) * 1e6, 1),
                         "calls": {name: [int(n), round(t * 1e6, 1)]
                                   for name, (n, t) in sorted(by_call.items(),
                                                              key=lambda kv: -kv[1][1])}}
    return out


def parse_fault_counts(text: str) -> dict[str, int]:
    """`count F user|kernel page` lines and the process's maps (after `MAPS`) → faults by
    `user|kernel mapping` (the mapping's file, [heap], [stack] or anon)."""
    head, _, maps_text = text.partition("\nMAPS\n")
    maps = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) >= 5 and "-" in parts[0]:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append((lo, hi, parts[5].strip() if len(parts) == 6 else "anon"))
    out: dict[str, int] = {}
    for line in head.splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[1] != "F":
            continue
        address = int(parts[3], 16) << 12
        where = next((name for lo, hi, name in maps if lo <= address < hi), "unmapped now")
        key = f"{parts[2]} {where}"
        out[key] = out.get(key, 0) + int(parts[0])
    return out


def scale(counts: dict, commands: float) -> dict:
    """The counts of SyscallCounter.stop() per command, largest first."""
    if "error" in counts:
        return counts

    def per(d: dict[str, int]) -> dict[str, float]:
        return {k: round(v / commands, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])
                if v / commands >= 0.005}
    times = {tid: {"on_cpu_us": round(t["on_cpu_us"] / commands, 1),
                   "in_calls_us": {name: round(us / commands, 1)
                                   for name, (_, us) in t["calls"].items()
                                   if us / commands >= 0.5}}
             for tid, t in counts.get("times", {}).items() if t["on_cpu_us"] / commands >= 1}
    return {"method": counts["method"], "lost_events": counts["lost"],
            "cpu_per_cmd_by_thread": times,
            "total_per_cmd": round(sum(counts["by_name"].values()) / commands, 2),
            "by_name_per_cmd": per(counts["by_name"]),
            "faults_per_cmd": per(counts.get("faults", {})),
            "by_thread_per_cmd": {tid: per(d) for tid, d in counts["by_thread"].items()
                                  if sum(d.values()) / commands >= 0.01}}


# --------------------------------------------------------------------------- the guest's clock

# What one call costs in the guest, from its own Python: the clock every lock acquire of
# CPython 3.11 reads (PyThread_acquire_lock_timed computes a deadline even for a lock that is
# free), a plain system call, and an uncontended threading.Lock.
_CALL_COST = """
import json, os, threading, time
n = 20000
lock = threading.Lock()
def cost(fn):
    t0, w0 = os.times(), time.perf_counter()
    for _ in range(n):
        fn()
    t1, w1 = os.times(), time.perf_counter()
    return [round((w1 - w0) / n * 1e6, 2), round((t1.user - t0.user) / n * 1e6, 2),
            round((t1.system - t0.system) / n * 1e6, 2)]
def locked():
    with lock:
        pass
pages = bytearray(256 * 4096)
def touch():
    for i in range(0, 256 * 4096, 4096):
        pages[i]
def getppid_touch():
    os.getppid()
    touch()
facts = {"monotonic_ns": cost(time.monotonic_ns), "getppid": cost(os.getppid),
         "lock_acquire_release": cost(locked), "nothing": cost(lambda: None)}
n = 1000
facts["touch_256_pages"] = cost(touch)
facts["getppid_then_touch_256_pages"] = cost(getppid_touch)
print(json.dumps(facts))
"""


def clock_facts(vm: Guest) -> dict:
    """The guest's clocksource and what a clock read, a system call and a free lock cost
    there (µs per call: wall, user, system)."""
    base = "/sys/devices/system/clocksource/clocksource0"
    current = vm.run(f"cat {base}/current_clocksource").text.strip()  # type: ignore[attr-defined]
    available = vm.run(f"cat {base}/available_clocksource").text.strip()  # type: ignore[attr-defined]
    costs = vm.run(["python3", "-c", _CALL_COST], timeout=300).text.strip()  # type: ignore[attr-defined]
    # Page table isolation switches page tables on every system call; qemu's TCG keeps one
    # software TLB that such a switch empties, so the user code after each call pays its
    # page walks again (the touch rows: 256 pages alone, and right after a system call).
    meltdown = vm.run("cat /sys/devices/system/cpu/vulnerabilities/meltdown",  # type: ignore[attr-defined]
                      check=False).text.strip()
    return {"clocksource": current, "available": available, "meltdown": meltdown,
            "us_per_call_wall_user_sys": json.loads(costs)}
