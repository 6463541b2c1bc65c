"""Recorded daemon states (states/*.json): what the shell would collect from the daemons."""

from __future__ import annotations

import json
from pathlib import Path

STATES = Path(__file__).parent / "states"


def recorded(name: str) -> dict:
    """A recorded daemon state: the snapshot the shell would collect, and its moment."""
    return json.loads((STATES / f"{name}.json").read_text())
