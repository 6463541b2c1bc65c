"""Which form of the handler's hot path runs: compiled by mypyc, or interpreted.

The modules a command passes through (ring, CDB decode, the READ/WRITE fast path, the
volume's submit and read, the journal's append) are ordinary typed Python. The image, and
`make compiled` on a developer machine, compile them with mypyc into extension modules that
sit beside the .py files; Python imports an extension module in preference to the source of
the same name, and wherever one is missing the source runs unchanged (docs/compiled.md).

This module names them (the build compiles exactly these, `tools/compile.py`) and reports what
was actually imported, for the handler's ready line and the tests. It imports nothing of the
appliance at load time, so it sits below every layer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.machinery import ExtensionFileLoader
from typing import TYPE_CHECKING, TypeVar

# The hot path, compiled together into one shared library (calls between them are native).
# Chosen by measurement (docs/compiled.md, "Which modules"): every module a 4 KiB READ or
# WRITE passes through that mypyc compiles without changing behaviour.
HOT_MODULES: tuple[str, ...] = (
    "appliance.tcmu.layout",
    "appliance.tcmu.ring",
    "appliance.tcmu.spin",
    "appliance.tcmu.io_stats",
    "appliance.tcmu.device",
    "appliance.scsi.command",
    "appliance.scsi.cdb",
    "appliance.scsi.buffers",
    "appliance.scsi.context",
    "appliance.scsi.fastpath",
    "appliance.scsi.rw",
    "appliance.scsi.disk",
    "appliance.volume.scatter",
    "appliance.volume.mirror",
    "appliance.volume.pending",
    "appliance.volume.applier",
    "appliance.volume.volume",
    "appliance.storage",
    "appliance.journal.model",
    "appliance.journal.format",
    "appliance.journal.records",
    "appliance.journal.placement",
    "appliance.journal.emit",
    "appliance.journal.writer",
)

COMPILED = "compiled"
INTERPRETED = "interpreted"

_T = TypeVar("_T")

if TYPE_CHECKING:
    # What mypy and mypyc see: mypyc reads the settings of this decorator when it compiles.
    from mypy_extensions import mypyc_attr
else:
    def mypyc_attr(*flags: str, **settings: object) -> Callable[[_T], _T]:
        """`mypy_extensions.mypyc_attr` at run time, where it only returns the class, so
        the appliance needs no mypy_extensions to run (this module is never compiled)."""
        return lambda target: target


def module_form(name: str) -> str:
    """COMPILED if `name` was imported from an extension module, else INTERPRETED."""
    module = importlib.import_module(name)
    spec = module.__spec__
    if spec is not None and isinstance(spec.loader, ExtensionFileLoader):
        return COMPILED
    return INTERPRETED


def forms(modules: tuple[str, ...] = HOT_MODULES) -> dict[str, str]:
    """Each hot module's form, importing it if need be."""
    return {name: module_form(name) for name in modules}


def describe(modules: tuple[str, ...] = HOT_MODULES) -> str:
    """One phrase for a log line: "compiled (21 modules)", "interpreted", or, when the two
    are mixed (a partial build), which modules run in which form."""
    by_form = forms(modules)
    compiled = [name for name, form in by_form.items() if form == COMPILED]
    interpreted = [name for name, form in by_form.items() if form == INTERPRETED]
    if not compiled:
        return INTERPRETED
    if not interpreted:
        return f"{COMPILED} ({len(compiled)} modules)"
    return (f"mixed: {COMPILED} {', '.join(_short(n) for n in compiled)}; "
            f"{INTERPRETED} {', '.join(_short(n) for n in interpreted)}")


def _short(name: str) -> str:
    return name.removeprefix("appliance.")
