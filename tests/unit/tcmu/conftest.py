"""Fixtures of the TCMU unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tcmu_helpers import MemDisk, Served

from appliance.tcmu.sim import SimConfig


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "dev", MemDisk(), SimConfig(ring_bytes=8192, data_blocks=64)).start()
    yield s
    s.close()
