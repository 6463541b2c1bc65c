"""CRC32C, the checksum of every journal record, wire frame, bitmap and undo entry.

The `crc32c` library uses the CPU's crc32 instruction when the CPU advertises SSE 4.2 (or
ARMv8 CRC), else its own table code. Advertised is not fast: qemu's TCG emulates the
instruction one bit at a time, and in the appliance VM (`-cpu max`, no KVM) the "hardware"
CRC ran at 128 MiB/s against 435 MiB/s for the library's software code. A 1 MiB host write
is checksummed once when journaled and again by each replication step, so this matters.

So when the instruction is there, both implementations are loaded (the library's module
can be instantiated twice, its mode read from CRC32C_SW_MODE each time) and timed once on
64 KiB, and the faster is kept. Natively that is the instruction, by 10x or more. Setting
CRC32C_SW_MODE yourself skips the choice: the library then does what you asked.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from types import ModuleType

import crc32c as _library

_SAMPLE = os.urandom(64 * 1024)
_ROUNDS = 5


def _software_module() -> ModuleType:
    """A second instance of the library's C module, loaded in its software mode."""
    spec = importlib.util.find_spec("crc32c._crc32c")
    if spec is None or spec.loader is None:
        raise ImportError("the crc32c package has no C module crc32c._crc32c to load in "
                          "software mode; reinstall crc32c")
    saved = os.environ.get("CRC32C_SW_MODE")
    os.environ["CRC32C_SW_MODE"] = "force"
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["CRC32C_SW_MODE"]
        else:
            os.environ["CRC32C_SW_MODE"] = saved
    return module


def seconds_per_sample(fn: Callable[[bytes], int]) -> float:
    """Best of a few timings of `fn` over the 64 KiB sample (the minimum: noise only adds)."""
    best = float("inf")
    for _ in range(_ROUNDS):
        start = time.perf_counter()
        fn(_SAMPLE)
        best = min(best, time.perf_counter() - start)
    return best


def choose(timer: Callable[[Callable[[bytes], int]], float] = seconds_per_sample
           ) -> tuple[Callable[..., int], str]:
    """The faster CRC32C function on this CPU, and "hardware" or "software"."""
    if not _library.hardware_based or "CRC32C_SW_MODE" in os.environ:
        return _library.crc32c, "hardware" if _library.hardware_based else "software"
    software = _software_module()
    if software.hardware_based:                   # the library ignored the request
        return _library.crc32c, "hardware"
    if timer(software.crc32c) < timer(_library.crc32c):
        return software.crc32c, "software"
    return _library.crc32c, "hardware"


crc32c, IMPLEMENTATION = choose()
