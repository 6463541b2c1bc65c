"""The handler keeps the C heap's freed pages (appliance/tcmu/heap.py): the pattern of the
write cache (thousands of 4 KiB copies held, then freed together, again and again) takes a
page fault per copy with glibc's defaults and next to none once keep_freed_heap ran. Each
case runs in a fresh interpreter: the thresholds are the whole process's."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

PATTERN = """
import resource, sys
from appliance.tcmu.heap import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
src = bytes(range(256)) * 16
def rounds(n):
    for _ in range(n):
        held = [bytes(bytearray(src)) for _ in range(4000)]
        del held
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40000)
"""


def faults_per_copy(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="glibc mallopt only")
def test_freed_pages_are_kept_instead_of_faulted_in_again():
    default, kept = faults_per_copy("default"), faults_per_copy("keep")
    assert default > 0.5, f"glibc's defaults should fault about once per copy, got {default}"
    assert kept < 0.05, f"with the freed pages kept: {kept} faults per copy"
