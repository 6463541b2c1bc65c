"""The CRC32C choice: both implementations agree, and the faster one is kept."""

from __future__ import annotations

import os

import crc32c as library
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import checksum

needs_instruction = pytest.mark.skipif(
    not library.hardware_based or "CRC32C_SW_MODE" in os.environ,
    reason="the CPU has no crc32 instruction (or CRC32C_SW_MODE is set): nothing to choose")


def test_known_check_value():
    assert checksum.crc32c(b"123456789") == 0xE3069283     # the CRC-32C check value


@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_software_module_agrees_with_the_library(data, seed):
    software = checksum._software_module()
    assert not software.hardware_based
    assert software.crc32c(data, seed) == library.crc32c(data, seed)


def test_loading_the_software_module_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv("CRC32C_SW_MODE", raising=False)
    checksum._software_module()
    assert "CRC32C_SW_MODE" not in os.environ
    monkeypatch.setenv("CRC32C_SW_MODE", "auto")
    checksum._software_module()
    assert os.environ["CRC32C_SW_MODE"] == "auto"


@needs_instruction
def test_an_emulated_instruction_loses_to_the_table_code():
    # What TCG does: the instruction exists but runs slower than the library's table code.
    fn, name = checksum.choose(timer=lambda f: 3.0 if f is library.crc32c else 1.0)
    assert name == "software" and fn is not library.crc32c
    assert fn(b"abc") == library.crc32c(b"abc")


@needs_instruction
def test_a_real_instruction_is_kept():
    fn, name = checksum.choose(timer=lambda f: 0.1 if f is library.crc32c else 1.0)
    assert (fn, name) == (library.crc32c, "hardware")


@needs_instruction
def test_on_this_machine_the_instruction_is_measured_faster():
    # Natively the instruction is 10x faster; the measured choice must see that.
    assert checksum.choose() == (library.crc32c, "hardware"), (
        "the library's table code timed faster than the crc32 instruction: is this CPU "
        "emulated (qemu TCG)? There the software choice is right and this test does not apply")


def test_an_explicit_library_setting_is_obeyed(monkeypatch):
    monkeypatch.setenv("CRC32C_SW_MODE", "auto")
    assert checksum.choose(timer=lambda f: 1 / 0)[0] is library.crc32c
