"""The layering of appliance/ (docs/internals.md, "Layers"): no import loop anywhere, the two
replication wings never import each other, the shared core imports neither wing, and the
lower layers know nothing of the upper ones. Imports under TYPE_CHECKING count too: a loop
of type names is still a loop a reader has to untangle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "appliance"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The appliance modules ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_loop_anywhere_in_appliance():
    assert cycles(import_graph()) == []


# (importer prefix, imported prefix): importer never imports imported.
FORBIDDEN = [
    ("appliance.replication.primary", "appliance.replication.dr"),
    ("appliance.replication.dr", "appliance.replication.primary"),
    ("appliance.replication", "appliance.tcmu"),
    ("appliance.replication", "appliance.scsi"),
    ("appliance.journal", "appliance.volume"),
    ("appliance.journal", "appliance.scsi"),
    ("appliance.journal", "appliance.tcmu"),
    ("appliance.journal", "appliance.replication"),
    ("appliance.volume", "appliance.scsi"),
    ("appliance.volume", "appliance.tcmu"),
    ("appliance.volume", "appliance.replication"),
    ("appliance.scsi", "appliance.tcmu"),
    ("appliance.scsi", "appliance.replication"),
    ("appliance.tcmu", "appliance.replication"),
]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def core_modules(graph: dict[str, set[str]]) -> list[str]:
    return [m for m in graph if _under(m, "appliance.replication")
            and not _under(m, "appliance.replication.primary")
            and not _under(m, "appliance.replication.dr")]


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_a_layer_never_imports_what_it_must_not_know(importer, imported):
    graph = import_graph()
    bad = sorted(f"{m} imports {dep}" for m, deps in graph.items() if _under(m, importer)
                 for dep in deps if _under(dep, imported))
    assert bad == []


def test_the_shared_core_imports_neither_wing():
    graph = import_graph()
    bad = sorted(f"{m} imports {dep}" for m in core_modules(graph) for dep in graph[m]
                 if _under(dep, "appliance.replication.primary")
                 or _under(dep, "appliance.replication.dr"))
    assert bad == []


def test_both_wings_exist_and_hold_their_daemons():
    modules = all_modules()
    assert "appliance.replication.primary.transmitter" in modules
    assert "appliance.replication.dr.receiver" in modules


def test_the_checks_see_a_loop_and_a_wing_crossing():
    """The checks themselves can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    fake = {"appliance.replication.primary.x": {"appliance.replication.dr.y"},
            "appliance.replication.dr.y": set()}
    assert [m for m, deps in fake.items() for dep in deps
            if _under(m, FORBIDDEN[0][0]) and _under(dep, FORBIDDEN[0][1])]
