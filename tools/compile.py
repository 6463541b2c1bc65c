#!/usr/bin/env python3
"""Compile the handler's hot path (appliance.compiled.HOT_MODULES) with mypyc.

Two steps, so that the C compiler can run against another Python than the one that ran mypyc
(the image compiles inside a Debian chroot holding the image's own python3, docs/compiled.md):

  generate --out DIR   mypyc (the pinned one, pyproject.toml [compile]) type-checks the hot
                       modules and writes C: DIR/src (the C, mypyc's runtime library and
                       spec.json, the list of extensions). Needs mypy, not a C compiler.
  build --src DIR/src --dest TREE
                       compiles spec.json's extensions with this Python's headers and
                       setuptools into TREE (the .so files in package layout) and writes
                       TREE/compiled.json (Python version, ABI, mypy version, modules).
  tree --dest TREE     both, with this Python, then copies the appliance package's .py files
                       into TREE as well: a complete importable package whose hot modules
                       are compiled (make compiled; the compiled test run puts TREE first on
                       sys.path).

The source tree itself is never written to: an extension module beside a .py file shadows
it, so an in-place build would silently keep running stale code after an edit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "appliance"
# The shared library holding every compiled module: <GROUP>__mypyc.<EXT_SUFFIX>, top level.
GROUP = "appliance_hotpath"
SPEC = "spec.json"
INFO = "compiled.json"


class CompileError(RuntimeError):
    """A step failed; the message says which and what to do."""


def hot_modules() -> tuple[str, ...]:
    sys.path.insert(0, str(REPO))
    try:
        from appliance.compiled import HOT_MODULES
    finally:
        sys.path.remove(str(REPO))
    return HOT_MODULES


def module_path(name: str) -> str:
    return name.replace(".", "/") + ".py"


def source_digest(root: Path, modules: tuple[str, ...]) -> str:
    """Hash of the compiled modules' sources: compiled.json records it, so a stale build is
    recognisable (tests/unit/test_compiled_form.py)."""
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode() + b"\0" + (root / module_path(name)).read_bytes())
    return h.hexdigest()[:16]


def copy_package(dest: Path) -> None:
    shutil.copytree(REPO / PACKAGE, dest / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))


def generate(out: Path, modules: tuple[str, ...] | None = None) -> Path:
    """mypyc: C sources and spec.json under out/src. Returns out/src. `modules`: a subset
    of HOT_MODULES instead of all (measurements; a mixed form)."""
    try:
        import mypy.version
        from mypyc.build import mypycify
    except ImportError as err:
        raise CompileError("mypyc is not installed: pip install -e '.[compile]' "
                           "(make venv does)") from err
    modules = modules or hot_modules()
    src = out / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    copy_package(src)
    paths = [module_path(name) for name in modules]
    cwd = os.getcwd()
    os.chdir(src)           # mypy names modules by their path relative to here
    try:
        extensions = mypycify(
            # Errors in the modules the hot path imports but does not compile are not ours
            # to fix here: only the compiled modules must type-check.
            ["--follow-imports=silent", "--ignore-missing-imports", *paths],
            opt_level="3", debug_level="1", group_name=GROUP, target_dir="build")
    except SystemExit as err:   # mypyc exits on type errors, after printing them
        raise CompileError("mypyc refused the hot modules (type errors above); fix them, "
                           "the interpreted form must not change") from err
    finally:
        os.chdir(cwd)
    lib_rt = Path(sys.modules["mypyc"].__file__).parent / "lib-rt"
    shutil.copytree(lib_rt, src / "lib-rt", ignore=shutil.ignore_patterns("__pycache__",
                                                                             "test*"))
    spec = {"mypy": mypy.version.__version__, "group": GROUP, "modules": list(modules),
            "source_digest": source_digest(REPO, modules), "extensions": []}
    for ext in extensions:
        spec["extensions"].append({
            "name": ext.name,
            "sources": list(ext.sources),
            "include_dirs": ["lib-rt" if Path(d) == lib_rt else d for d in ext.include_dirs],
            "extra_compile_args": list(ext.extra_compile_args),
        })
    (src / SPEC).write_text(json.dumps(spec, indent=1) + "\n")
    return src


def build(src: Path, dest: Path, jobs: int = os.cpu_count() or 1) -> dict:
    """Compile the extensions of src/spec.json for the running Python into dest."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    spec = json.loads((src / SPEC).read_text())
    cwd = os.getcwd()
    os.chdir(src)           # the spec's paths are relative to it
    try:
        exts = [Extension(e["name"], e["sources"], include_dirs=e["include_dirs"],
                          extra_compile_args=e["extra_compile_args"])
                for e in spec["extensions"]]
        dist = Distribution({"name": GROUP, "ext_modules": exts})
        cmd = build_ext(dist)
        cmd.build_lib = str(dest)
        cmd.build_temp = str(src / "tmp")
        cmd.parallel = jobs
        cmd.ensure_finalized()
        try:
            cmd.run()
        except Exception as err:    # distutils' CompileError, LinkError, ...
            raise CompileError(f"compiling the generated C failed: {err} (needs gcc and "
                               f"the Python {sys.version_info[0]}.{sys.version_info[1]} "
                               "headers: python3-dev)") from err
    finally:
        os.chdir(cwd)
    info = {"python": sys.version.split()[0], "soabi": sysconfig.get_config_var("SOABI"),
            "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), "mypy": spec["mypy"],
            "group": spec["group"], "modules": spec["modules"],
            "source_digest": spec["source_digest"]}
    (dest / INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info


def current_build(dest: Path, modules: tuple[str, ...]) -> dict | None:
    """dest's compiled.json if dest holds these modules compiled from the current sources
    by the installed mypy for this Python, else None."""
    try:
        import mypy.version
        info = json.loads((dest / INFO).read_text())
    except (ImportError, OSError, ValueError):
        return None
    wanted = {"python": sys.version.split()[0], "mypy": mypy.version.__version__,
              "modules": list(modules), "source_digest": source_digest(REPO, modules)}
    return info if all(info.get(k) == v for k, v in wanted.items()) else None


def tree(dest: Path, jobs: int, modules: tuple[str, ...] | None = None) -> dict:
    """generate + build for this Python, plus the package's sources: an importable tree.
    When the compiled modules are current, only the .py files are copied again (the tree
    must hold today's version of every other module too)."""
    modules = modules or hot_modules()
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    copy_package(staging)
    info = current_build(dest, modules)
    if info is not None:
        for built in [*dest.glob("*.so"), *(dest / PACKAGE).rglob("*.so"), dest / INFO]:
            target = staging / built.relative_to(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)
    else:
        work = Path(tempfile.mkdtemp(prefix="compile-"))
        try:
            info = build(generate(work, modules), staging, jobs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(staging, dest)
    return info


def _subset(only: str | None) -> tuple[str, ...] | None:
    if not only:
        return None
    names = tuple(n if n.startswith(PACKAGE + ".") else f"{PACKAGE}.{n}" for n in only.split(","))
    unknown = sorted(set(names) - set(hot_modules()))
    if unknown:
        raise CompileError(f"--only names {', '.join(unknown)}, which are not in "
                           "appliance.compiled.HOT_MODULES")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    gen = sub.add_parser("generate", help="mypyc: C sources into OUT/src")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--only", help="comma-separated subset of the hot modules")
    bld = sub.add_parser("build", help="compile OUT/src for this Python into DEST")
    bld.add_argument("--src", type=Path, required=True)
    bld.add_argument("--dest", type=Path, required=True)
    bld.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    tre = sub.add_parser("tree", help="generate + build + the package's .py files into DEST")
    tre.add_argument("--dest", type=Path, required=True)
    tre.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    tre.add_argument("--only", help="comma-separated subset of the hot modules")
    args = parser.parse_args(argv)
    try:
        if args.step == "generate":
            print(generate(args.out.resolve(), _subset(args.only)))
        elif args.step == "build":
            print(json.dumps(build(args.src.resolve(), args.dest.resolve(), args.jobs)))
        else:
            print(json.dumps(tree(args.dest.resolve(), args.jobs, _subset(args.only))))
    except CompileError as err:
        print(f"compile: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
