"""The two forms of the hot path (docs/compiled.md): the fast tier runs once on the source
(`make test-fast`) and once on the mypyc build (`make test-fast-compiled`, which sets
APPLIANCE_EXPECT_FORM=compiled and puts the compiled tree first on sys.path). These tests
make sure each run really exercises the form it claims, and that the form report the
handler logs says what was imported."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from appliance import compiled

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = os.environ.get("APPLIANCE_EXPECT_FORM", compiled.INTERPRETED)
# An extension module every install has (a dependency's C module): a "compiled" module in
# either run, to show what a mixed report looks like.
ALWAYS_COMPILED = "crc32c._crc32c"


def test_the_expected_form_is_one_the_report_knows():
    assert EXPECTED in (compiled.COMPILED, compiled.INTERPRETED), (
        f"APPLIANCE_EXPECT_FORM={EXPECTED!r}: use {compiled.COMPILED!r} or "
        f"{compiled.INTERPRETED!r}")


def test_every_hot_module_is_ordinary_python_in_the_source_tree():
    for name in compiled.HOT_MODULES:
        path = ROOT / (name.replace(".", "/") + ".py")
        assert path.is_file(), f"{name}: no {path.relative_to(ROOT)}"
        assert not list(path.parent.glob(path.stem + ".*.so")), (
            f"an extension module beside {path.relative_to(ROOT)} would shadow the source "
            "(build with `make compiled`, which writes a separate tree)")


def test_every_hot_module_runs_in_the_expected_form():
    forms = compiled.forms()
    wrong = {name: form for name, form in forms.items() if form != EXPECTED}
    assert not wrong, f"expected every hot module {EXPECTED}, got {wrong}"


def test_the_report_names_the_form():
    if EXPECTED == compiled.COMPILED:
        assert compiled.describe() == f"compiled ({len(compiled.HOT_MODULES)} modules)"
    else:
        assert compiled.describe() == "interpreted"


def test_a_mixed_form_names_each_module():
    mixed = ("appliance.tcmu.ring", ALWAYS_COMPILED)
    text = compiled.describe(mixed)
    if EXPECTED == compiled.COMPILED:
        assert text == "compiled (2 modules)"
    else:
        assert text == f"mixed: compiled {ALWAYS_COMPILED}; interpreted tcmu.ring"


@pytest.mark.skipif(EXPECTED != compiled.COMPILED, reason="the compiled run only")
def test_the_compiled_modules_come_from_a_current_build_for_this_python():
    """The tree on sys.path is the one `make compiled` built from these very sources, for
    this interpreter: a stale build would test yesterday's code."""
    ring = sys.modules["appliance.tcmu.ring"]
    tree = Path(ring.__file__).resolve().parents[2]
    assert tree != ROOT, "the compiled modules were imported from the source tree"
    info = json.loads((tree / "compiled.json").read_text())
    spec = importlib.util.spec_from_file_location("tools_compile", ROOT / "tools/compile.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert info["modules"] == list(compiled.HOT_MODULES)
    assert info["source_digest"] == tool.source_digest(ROOT, compiled.HOT_MODULES), (
        f"{tree} was built from other sources: run `make compiled`")
    assert info["python"] == sys.version.split()[0]
    for name in compiled.HOT_MODULES:
        path = Path(sys.modules[name].__file__).resolve()
        assert path.is_relative_to(tree) and path.suffix == ".so", path
