"""The image cache keeps what another session may still boot from."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("image_build", REPO / "image" / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules["image_build"] = build     # its dataclasses look their module up
_spec.loader.exec_module(build)


def make(cache: Path, name: str, age_s: float, now: float) -> Path:
    d = cache / name
    d.mkdir()
    os.utime(d, (now - age_s, now - age_s))
    return d


def test_prune_keeps_newest_recent_and_in_use_builds(tmp_path):
    now = 1_000_000.0
    hour = 3600
    newest = make(tmp_path, "image-a", 0, now)
    second = make(tmp_path, "image-b", 1 * hour, now)
    recent = make(tmp_path, "image-c", 2 * hour, now)        # another session's, still young
    in_use = make(tmp_path, "image-d", 30 * hour, now)
    stale = make(tmp_path, "image-e", 20 * hour, now)
    failed = make(tmp_path, "image-f.tmp", 0, now)
    base = make(tmp_path, "base-a", 50 * hour, now)          # the only base: kept
    build.prune(tmp_path, {in_use}, now=now)
    assert {p.name for p in tmp_path.iterdir()} == {
        newest.name, second.name, recent.name, in_use.name, base.name}
    assert not stale.exists() and not failed.exists()
