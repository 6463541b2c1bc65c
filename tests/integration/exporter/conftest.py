"""Fixtures of the exporter's integration tier (exporter_chain.py): the handler on a simulated
ring, the real transmitter and receiver, the exporter, torn down in reverse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
for sub in ("integration/replication", "integration/tcmu", "unit/exporter",
            "integration/exporter"):
    sys.path.insert(0, str(TESTS / sub))

from exporter_chain import Chain, make_chain  # noqa: E402


@pytest.fixture
def chain_factory(tmp_path):
    made: list[Chain] = []

    def make(**kw) -> Chain:
        chain = make_chain(tmp_path, **kw)
        made.append(chain)
        return chain
    try:
        yield make
    finally:
        for chain in made:
            for running in chain.exporters:
                running.close()
            for proc in reversed(chain.procs):
                proc.stop()
            chain.handler.close()
            if chain.journal is not None:
                chain.journal.close()
