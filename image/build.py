#!/usr/bin/env python3
"""Build the appliance image from Debian 12 packages, cached by the hash of its inputs.

Two stages, each cached in its own directory under the cache dir (outside the clone, so
CI reruns on one machine reuse it):

1. **base** (mmdebstrap, ~90-150 s): Debian packages from ``packages.txt``, pruned kernel
   modules, initramfs, and a venv ``/opt/appliance`` holding the PyPI dependencies of
   ``pyproject.toml``. Key: package list, ``customize-base.sh``, apt sources, dependencies.
2. **image** (~20-40 s, plus ~40 s to compile the hot path): the base plus our wheel
   (``pip wheel --no-deps .``), the hot path compiled by mypyc for the image's own Python
   (below), the units of ``systemd/`` and the files of ``overlay/``, written to an ext4 root
   file system (``appliance.raw``, ``appliance.qcow2``) with ``vmlinuz`` and ``initrd.img``
   beside it for direct kernel boot. Key: base key plus every file that ends up in the guest.

The hot path (``appliance.compiled.HOT_MODULES``, docs/compiled.md) is turned into C on this
machine by the pinned mypyc (``tools/compile.py generate``) and compiled inside **builder**
(``builder-<key>/``, cached, ~90 s fresh): a Debian chroot from the same mirror holding the
same ``python3.11`` as the base, its headers and gcc, so the extension modules are built
against exactly the interpreter the image runs (checked: a different ``python3.11`` package
refuses the build). They are copied beside the .py files in the image's venv, which Python
then imports instead; ``/usr/lib/appliance/compiled.json`` says what was compiled.

Prints the image directory (or its manifest with ``--json``). Needs root (mmdebstrap, chroot).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parent
REPO = IMAGE_DIR.parent
DEBIAN_SUITE = "bookworm"
GUEST_PYTHON = ("3.11", "cp311")
# Files of the repository that end up inside the guest (host-only lab code is left out of
# the key so that editing the lab does not rebuild the image; the wheel still carries it).
GUEST_SOURCE_GLOBS = ("appliance/**/*", "targetcli_ext/**/*", "vmlab/agent.py", "pyproject.toml")
# What turns the hot path into extension modules (its output ends up in the guest).
COMPILE_TOOL = "tools/compile.py"
# The builder chroot: the image's python3 plus what compiling against it needs. setuptools
# drives the compiler (tools/compile.py build), as it does on a developer machine.
BUILDER_PACKAGES = ("python3", "python3-dev", "python3-setuptools", "gcc", "libc6-dev")
# Debian packages that are the guest's interpreter: the builder must hold the same versions.
PYTHON_PACKAGES = (f"python{GUEST_PYTHON[0]}-minimal", f"libpython{GUEST_PYTHON[0]}-stdlib")
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path")
# Debian units the appliance needs that Debian does not enable by itself.
EXTRA_ENABLED_UNITS = ("systemd-networkd.service",)
# Debian units that only cost boot time here (the banner waits for addresses itself; the
# root file system is read-only, so e2scrub has nothing to reap).
MASKED_UNITS = ("systemd-networkd-wait-online.service", "e2scrub_reap.service",
                "e2scrub_all.timer", "fstrim.timer")
KEEP_BUILDS = 2
KEEP_RECENT_S = 4 * 3600


class BuildError(RuntimeError):
    """The image could not be built; the message says which step failed."""


@dataclass(frozen=True)
class BuildPaths:
    """Where the build reads its inputs and writes its cache."""

    repo: Path
    cache: Path

    @property
    def image_src(self) -> Path:
        return self.repo / "image"


def default_cache_dir() -> Path:
    env = os.environ.get("APPLIANCE_IMAGE_CACHE")
    if env:
        return Path(env)
    return Path("/var/cache/dr-appliance") if os.geteuid() == 0 else Path.home() / ".cache/dr-appliance"


# --------------------------------------------------------------------------- inputs


def hash_files(h: hashlib._Hash, root: Path, files: Iterable[Path]) -> None:
    for path in sorted(set(files)):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def read_package_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def debian_sources() -> list[str]:
    """One-line apt sources for the Debian suites configured on this machine.

    The build uses the machine's own mirror (only that one may be reachable), taken from
    /etc/apt deb822 ``.sources`` files and ``sources.list``."""
    lines: list[str] = []
    apt = Path("/etc/apt")
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            for raw in stanza.splitlines():
                if raw.startswith("#") or ":" not in raw:
                    continue
                key, _, value = raw.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite.startswith(DEBIAN_SUITE):
                        lines.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
    legacy = apt / "sources.list"
    if legacy.exists():
        for raw in legacy.read_text().splitlines():
            parts = raw.split("#", 1)[0].split()
            if len(parts) >= 4 and parts[0] == "deb" and parts[2].startswith(DEBIAN_SUITE):
                lines.append(" ".join(p for p in parts if not p.startswith("[")))
    if not lines:
        lines = [f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
                 f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
                 f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main"]
    return sorted(set(lines))


def pypi_dependencies(repo: Path) -> list[str]:
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    return sorted(meta["project"]["dependencies"])


def project_version(repo: Path) -> str:
    text = (repo / "appliance" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else "0+unknown"


def base_key(paths: BuildPaths) -> str:
    h = hashlib.sha256(b"base-v1\0")
    hash_files(h, paths.repo, [paths.image_src / "packages.txt", paths.image_src / "customize-base.sh"])
    h.update("\n".join(debian_sources()).encode())
    h.update("\n".join(pypi_dependencies(paths.repo)).encode())
    return h.hexdigest()[:16]


def builder_key(paths: BuildPaths, python_versions: dict[str, str]) -> str:
    h = hashlib.sha256(b"builder-v1\0")
    h.update("\n".join(BUILDER_PACKAGES).encode() + b"\0")
    h.update("\n".join(debian_sources()).encode() + b"\0")
    h.update(json.dumps(python_versions, sort_keys=True).encode())
    return h.hexdigest()[:16]


def image_key(paths: BuildPaths, base: str) -> str:
    h = hashlib.sha256(b"image-v2\0" + base.encode())
    files: list[Path] = [Path(__file__).resolve(), paths.repo / COMPILE_TOOL]
    for pattern in GUEST_SOURCE_GLOBS:
        files += paths.repo.glob(pattern)
    files += (paths.repo / "systemd").rglob("*")
    files += (paths.image_src / "overlay").rglob("*")
    hash_files(h, paths.repo, files)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- steps


def run(argv: list[str], what: str, *, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run a build step; stdout is reserved for our result, so tools print to stderr.
    quiet: capture the tool's chatter and show it only if the step fails."""
    kw.setdefault("stdout", sys.stderr)
    if quiet:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return subprocess.run(argv, check=True, **kw)
    except subprocess.CalledProcessError as err:
        if quiet and err.stdout:
            print(err.stdout[-4000:], file=sys.stderr)
        raise BuildError(f"{what} failed (exit {err.returncode}): {' '.join(argv[:6])} ...") from err
    except FileNotFoundError as err:
        raise BuildError(f"{what}: {argv[0]} is not installed") from err


def log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def fetch_dependency_wheels(paths: BuildPaths, dest: Path) -> None:
    """PyPI wheels for the guest's Python (binary only, so nothing compiles in the chroot)."""
    dest.mkdir(parents=True)
    version, abi = GUEST_PYTHON
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest),
         "--python-version", version, "--implementation", "cp", "--abi", abi,
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
         *pypi_dependencies(paths.repo)], "downloading PyPI dependency wheels")


def build_base(paths: BuildPaths, key: str) -> Path:
    out = paths.cache / f"base-{key}"
    if (out / "done").exists():
        log(f"base {key}: cached")
        return out
    tmp = paths.cache / f"base-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    fetch_dependency_wheels(paths, tmp / "dep-wheels")
    packages = read_package_list(paths.image_src / "packages.txt")
    log(f"base {key}: mmdebstrap {len(packages)} packages (about 2 minutes)")
    excludes = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*",
                "/usr/share/locale/*", "/usr/share/lintian/*"]
    argv = ["mmdebstrap", "--quiet", "--mode=root", "--variant=essential",
            "--include=" + ",".join(packages),
            *[f"--dpkgopt=path-exclude={p}" for p in excludes],
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=" + f'sh "{paths.image_src / "customize-base.sh"}" "$1"',
            DEBIAN_SUITE, str(tmp / "rootfs"), *debian_sources()]
    env = dict(os.environ, APPLIANCE_DEP_WHEELS=str(tmp / "dep-wheels"))
    run(argv, "mmdebstrap", env=env)
    boot = tmp / "rootfs" / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError(f"no kernel/initrd in {boot}")
    shutil.copy2(kernels[-1], tmp / "vmlinuz")
    shutil.copy2(initrds[-1], tmp / "initrd.img")
    (tmp / "build-seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
    (tmp / "done").write_text(key + "\n")
    os.rename(tmp, out)
    log(f"base {key}: built in {time.monotonic() - t0:.0f} s")
    return out


def package_versions(rootfs: Path, packages: Iterable[str]) -> dict[str, str]:
    """Installed Debian versions in a root file system (dpkg's database, read from here)."""
    versions = {}
    for package in packages:
        proc = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
                               "${Version}", package], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise BuildError(f"{package} is not installed in {rootfs}")
        versions[package] = proc.stdout.strip()
    return versions


def build_builder(paths: BuildPaths, python_versions: dict[str, str]) -> Path:
    """The chroot the hot path is compiled in: the base's python3 with its headers and gcc."""
    key = builder_key(paths, python_versions)
    out = paths.cache / f"builder-{key}"
    if (out / "done").exists():
        log(f"builder {key}: cached")
        return out
    tmp = paths.cache / f"builder-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    log(f"builder {key}: mmdebstrap {', '.join(BUILDER_PACKAGES)} (about 90 s)")
    run(["mmdebstrap", "--quiet", "--mode=root", "--variant=essential",
         "--include=" + ",".join(BUILDER_PACKAGES),
         *[f"--dpkgopt=path-exclude={p}" for p in ("/usr/share/man/*", "/usr/share/doc/*",
                                                     "/usr/share/locale/*")],
         DEBIAN_SUITE, str(tmp / "rootfs"), *debian_sources()], "mmdebstrap of the builder")
    got = package_versions(tmp / "rootfs", python_versions)
    if got != python_versions:
        raise BuildError(f"the builder got {got} from the mirror but the image has "
                         f"{python_versions}: the mirror moved since the base was built; "
                         f"rebuild the base (remove {paths.cache}/base-*)")
    (tmp / "done").write_text(key + "\n")
    os.rename(tmp, out)
    log(f"builder {key}: built in {time.monotonic() - t0:.0f} s")
    return out


def guest_python(rootfs: Path) -> tuple[str, str]:
    """(version, SOABI) of the image venv's interpreter."""
    proc = run(["chroot", str(rootfs), "/opt/appliance/bin/python", "-c",
                "import sys, sysconfig; print(sys.version.split()[0], "
                "sysconfig.get_config_var('SOABI'))"], "asking the image's Python its ABI",
               stdout=subprocess.PIPE, text=True)
    version, soabi = proc.stdout.split()
    return version, soabi


def compile_hot_path(paths: BuildPaths, builder: Path, rootfs: Path, work: Path) -> dict:
    """mypyc's C for the hot path (generated here), compiled in the builder chroot for the
    image's Python, installed beside the .py files of the image's venv."""
    t0 = time.monotonic()
    tool = paths.repo / COMPILE_TOOL
    run([sys.executable, str(tool), "generate", "--out", str(work)],
        "generating the hot path's C with mypyc (pip install -e '.[compile]')", quiet=True)
    inside = builder / "rootfs" / "build"
    shutil.rmtree(inside, ignore_errors=True)
    try:
        shutil.copytree(work / "src", inside / "src")
        shutil.copy2(tool, inside / "compile.py")
        run(["chroot", str(builder / "rootfs"), "/usr/bin/python3", "/build/compile.py", "build",
             "--src", "/build/src", "--dest", "/build/out"],
            "compiling the hot path in the builder", quiet=True)
        info = json.loads((inside / "out" / "compiled.json").read_text())
        version, soabi = guest_python(rootfs)
        if (info["python"], info["soabi"]) != (version, soabi):
            raise BuildError(f"the hot path was compiled for Python {info['python']} "
                             f"({info['soabi']}) but the image runs {version} ({soabi})")
        site = sorted((rootfs / "opt/appliance/lib").glob("python3*/site-packages"))[-1]
        for built in (inside / "out").rglob("*.so"):
            target = site / built.relative_to(inside / "out")
            if target.parent != site and not target.with_name(
                    target.name.split(".")[0] + ".py").is_file():
                raise BuildError(f"{target.relative_to(rootfs)}: no .py beside it in the "
                                 "image (the wheel and the hot module list disagree)")
            shutil.copy2(built, target)
        shutil.copy2(inside / "out" / "compiled.json", rootfs / "usr/lib/appliance/compiled.json")
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    info["compile_seconds"] = round(time.monotonic() - t0, 1)
    log(f"hot path: {len(info['modules'])} modules compiled by mypyc {info['mypy']} for "
        f"Python {info['python']} in {info['compile_seconds']:.0f} s")
    return info


def build_wheel(paths: BuildPaths, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(paths.repo)],
        "building our wheel", quiet=True)
    wheels = sorted(dest.glob("dr_appliance-*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel produced no dr_appliance wheel in {dest}")
    return wheels[-1]


def install_units(paths: BuildPaths, rootfs: Path) -> list[str]:
    """Copy our units to /usr/lib/systemd/system; enable those with an [Install] section
    (templates are started per volume at runtime by the restore unit, never enabled)."""
    unit_dir = rootfs / "usr/lib/systemd/system"
    enabled = list(EXTRA_ENABLED_UNITS)
    for unit in sorted((paths.repo / "systemd").iterdir()):
        if unit.is_dir() and unit.name.endswith(".d"):  # drop-ins for Debian's units
            shutil.copytree(unit, unit_dir / unit.name, dirs_exist_ok=True)
            continue
        if unit.suffix not in UNIT_SUFFIXES:
            continue
        shutil.copy2(unit, unit_dir / unit.name)
        if "[Install]" in unit.read_text() and "@." not in unit.name:
            enabled.append(unit.name)
    if enabled:
        run(["chroot", str(rootfs), "systemctl", "enable", *enabled], "enabling units", quiet=True)
    run(["chroot", str(rootfs), "systemctl", "mask", *MASKED_UNITS], "masking units", quiet=True)
    return enabled


def expose_package(rootfs: Path) -> None:
    """Our console scripts on root's PATH, and our package importable by Debian's python3
    (targetcli loads its extension, targetcli_ext, in Debian's interpreter)."""
    venv_bin = rootfs / "opt/appliance/bin"
    for script in sorted(venv_bin.glob("appliance*")):
        link = rootfs / "usr/local/bin" / script.name
        link.unlink(missing_ok=True)
        link.symlink_to(f"/opt/appliance/bin/{script.name}")
    # `targetcli` is our shell (stock targetcli plus /replication): /usr/local/sbin comes
    # first on root's PATH (/etc/profile) and on systemd's default PATH for services, ahead of
    # Debian's /usr/bin/targetcli, which stays installed (stock, without /replication).
    shell = rootfs / "usr/local/sbin/targetcli"
    shell.parent.mkdir(parents=True, exist_ok=True)
    shell.unlink(missing_ok=True)
    shell.symlink_to("/opt/appliance/bin/appliance-targetcli")
    site = sorted((rootfs / "opt/appliance/lib").glob("python3*/site-packages"))
    if not site:
        raise BuildError("the venv /opt/appliance has no site-packages")
    pth = rootfs / "usr/lib/python3/dist-packages/dr-appliance.pth"
    pth.write_text("/" + str(site[-1].relative_to(rootfs)) + "\n")


def write_release(rootfs: Path, version: str, key: str) -> None:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "unknown"
    release = {"name": "DR appliance", "version": version, "commit": commit, "image": key,
               "copyright": "Copyright (c) 2026 the DR appliance authors, Apache-2.0"}
    target = rootfs / "usr/lib/appliance"
    target.mkdir(parents=True, exist_ok=True)
    (target / "release.json").write_text(json.dumps(release, indent=1) + "\n")


def make_ext4(rootfs: Path, raw: Path, key: str) -> int:
    used = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size_mib = (used * 5 // 4) // 2**20 + 96
    fs_uuid = str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))
    run(["mkfs.ext4", "-q", "-F", "-L", "appliance-root", "-U", fs_uuid,
         "-E", f"hash_seed={fs_uuid},root_owner=0:0", "-d", str(rootfs), str(raw), f"{size_mib}M"],
        "mkfs.ext4 of the root file system", env=env)
    return size_mib


def build_image(paths: BuildPaths, base: Path, builder: Path, key: str, version: str) -> Path:
    out = paths.cache / f"image-{key}"
    if (out / "manifest.json").exists():
        log(f"image {key}: cached")
        return out
    tmp = paths.cache / f"image-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    wheel = build_wheel(paths, tmp / "wheel")
    rootfs = tmp / "rootfs"
    run(["cp", "-a", str(base / "rootfs"), str(rootfs)], "copying the base root file system")
    shutil.copy2(wheel, rootfs / "tmp" / wheel.name)
    run(["chroot", str(rootfs), "/opt/appliance/bin/pip", "install", "-q", "--no-index",
         "--no-deps", "--no-cache-dir", f"/tmp/{wheel.name}"], "installing our wheel", quiet=True)
    (rootfs / "tmp" / wheel.name).unlink()
    expose_package(rootfs)
    run(["cp", "-a", f"{paths.image_src / 'overlay'}/.", str(rootfs)], "copying the overlay")
    enabled = install_units(paths, rootfs)
    write_release(rootfs, version, key)
    hot_path = compile_hot_path(paths, builder, rootfs, tmp / "compile")
    size_mib = make_ext4(rootfs, tmp / "appliance.raw", key)
    shutil.rmtree(rootfs)
    run(["qemu-img", "convert", "-q", "-O", "qcow2", str(tmp / "appliance.raw"),
         str(tmp / "appliance.qcow2")], "qemu-img convert to qcow2")
    shutil.copy2(base / "vmlinuz", tmp / "vmlinuz")
    shutil.copy2(base / "initrd.img", tmp / "initrd.img")
    manifest = {
        "key": key, "version": version, "wheel": wheel.name, "enabled_units": enabled,
        "root_size_mib": size_mib,
        "qcow2_bytes": (tmp / "appliance.qcow2").stat().st_size,
        "raw_allocated_bytes": (tmp / "appliance.raw").stat().st_blocks * 512,
        "image_build_seconds": round(time.monotonic() - t0, 1),
        "base_build_seconds": float((base / "build-seconds").read_text()),
        "kernel_cmdline": "root=LABEL=appliance-root ro console=ttyS0,115200 net.ifnames=0",
        "hot_path": hot_path,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    os.rename(tmp, out)
    log(f"image {key}: built in {manifest['image_build_seconds']:.0f} s, root {size_mib} MiB")
    return out


def prune(cache: Path, keep: set[Path], now: float | None = None) -> None:
    """Keep the newest KEEP_BUILDS builds of each stage, whatever is in use now, and any
    build handed out within KEEP_RECENT_S (a test session or a benchmark in another clone may
    still boot VMs from it: ``ensure_image`` touches the build it returns).
    Called under the build lock, so any ``.tmp`` directory is left over from a failed build."""
    now = time.time() if now is None else now
    for stale in cache.glob("*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for prefix in ("base-", "builder-", "image-"):
        entries = sorted((p for p in cache.glob(prefix + "*") if not p.name.endswith(".tmp")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP_BUILDS:]:
            if old not in keep and now - old.stat().st_mtime > KEEP_RECENT_S:
                shutil.rmtree(old, ignore_errors=True)


def ensure_image(paths: BuildPaths) -> Path:
    """Return the directory of an up-to-date image, building what is missing."""
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mmdebstrap --mode=root, chroot)")
    paths.cache.mkdir(parents=True, exist_ok=True)
    with open(paths.cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bkey = base_key(paths)
        base = build_base(paths, bkey)
        builder = build_builder(paths, package_versions(base / "rootfs", PYTHON_PACKAGES))
        image = build_image(paths, base, builder, image_key(paths, bkey),
                            project_version(paths.repo))
        for used in (base, builder, image):
            os.utime(used)
        prune(paths.cache, {base, builder, image})
        return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", action="store_true", help="print the manifest")
    args = parser.parse_args(argv)
    try:
        image = ensure_image(BuildPaths(repo=REPO, cache=args.cache_dir))
    except BuildError as err:
        print(f"image build failed: {err}", file=sys.stderr)
        return 1
    if args.json:
        manifest = json.loads((image / "manifest.json").read_text())
        print(json.dumps({"dir": str(image), **manifest}, indent=1))
    else:
        print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
