"""Shared helpers of the replication integration tests: test PKI, configs, processes, waits,
and the logged workload whose every write can be recognised on the remote mirror."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.control.client import ControlError, call

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable
BLOCK = 512


# --- waits ---------------------------------------------------------------------------------


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``cond`` until truthy; fail with ``what`` (and the last exception) after timeout."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except (ControlError, OSError, ValueError, KeyError) as err:
            last_err = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_err})" if last_err else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PKI -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path

    def ca(self, name: str = "ca") -> Path:
        return self.dir / f"{name}.pem"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def tls_toml(self, name: str, ca: str = "ca") -> str:
        return (f'[tls]\ncert = "{self.cert(name)}"\nkey = "{self.key(name)}"\n'
                f'ca = "{self.ca(ca)}"\n')


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Pki:
    """CA 'ca' signing site-a, site-c (primaries) and dr-site (receiver); 'rogue-ca' signing
    a second 'site-a' certificate that the receiver must not trust."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-subj", f"/CN={ca}", "-days", "2", cwd=d)
    for name, ca in (("site-a", "ca"), ("site-c", "ca"), ("dr-site", "ca"),
                     ("rogue-site-a", "rogue-ca")):
        cn = "site-a" if name == "rogue-site-a" else name
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{cn}\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    return Pki(d)


def pinned_tls_toml(me, *peers) -> str:
    """A [tls] table: ``me``'s certificate and key, pinning ``peers``' certificates."""
    pins = ", ".join(f'"{p.cert}"' for p in peers)
    return f'[tls]\ncert = "{me.cert}"\nkey = "{me.key}"\npeers = [{pins}]\n'


def use_tls_table(config: Path, table: str) -> None:
    """Replace the [tls] table of a config file Pair wrote (with the CA) by ``table``."""
    text, count = re.subn(r"^\[tls\]\n(?:[^\[\n].*\n)*", lambda _: table, config.read_text(),
                          flags=re.M)
    assert count == 1, f"{config} has no [tls] table to replace"
    config.write_text(text)


# --- processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> Proc:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} running"
        self.starts += 1
        with open(self.log, "ab") as logf:
            logf.write(f"=== start #{self.starts} ===\n".encode())
            self.popen = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                          cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def processes(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def module_proc(name: str, module: str, config: Path, logdir: Path,
                prefix: list[str] | None = None) -> Proc:
    """A daemon process; ``prefix`` e.g. ``["ip", "netns", "exec", NS]`` (it execs, so the
    pid is the daemon's own and kill -9 hits it)."""
    return Proc(name, [*(prefix or []), PY, "-m", module, "--config", str(config),
                       "--log-level", "INFO"], logdir / f"{name}.log")


def status(sock: Path) -> dict:
    return call(sock, "status", timeout=2.0)


def appliancectl(sock: Path, *args: str) -> dict:
    """appliancectl as an admin runs it (its own process), its JSON answer."""
    out = subprocess.run([PY, "-m", "appliance.control.cli", "--socket", str(sock), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_verify(site, *, region_bytes: int, repair: bool) -> dict:
    """An online verify of the site's volume through appliancectl, until it ends; its
    report. Checks it set out over the whole volume."""
    started = appliancectl(site.control, "call", "verify",
                           json.dumps({"region_bytes": region_bytes, "repair": repair}))
    assert started["started"] and started["regions"] == -(-site.blocks * 512 // region_bytes)
    return wait_for(lambda: (v := status(site.control)["verify"])["state"] in ("done", "failed")
                    and v, 60, "the verify to finish")


# --- the logged workload -------------------------------------------------------------------
# Every block written by op #i starts with (i, block index within the op), so the remote
# mirror tells which ops it contains; the log line is written *before* the op is submitted.

KINDS = ("W", "S", "U")   # WRITE, WRITE SAME, UNMAP
_TAG = struct.Struct("<QI")


def block_data(index: int, block: int) -> bytes:
    rng = random.Random(index * 1_000_003 + block)
    # Half random, half zero: recognisable, and compressible enough to show zstd at work.
    return _TAG.pack(index, block) + rng.randbytes(BLOCK // 2 - _TAG.size) + bytes(BLOCK // 2)


@dataclass(frozen=True)
class LoggedOp:
    index: int
    kind: str
    lba: int
    nblocks: int

    def data(self) -> bytes:
        if self.kind == "W":
            return b"".join(block_data(self.index, b) for b in range(self.nblocks))
        if self.kind == "S":
            return block_data(self.index, 0)
        return b""

    def image_bytes(self) -> bytes:
        if self.kind == "W":
            return self.data()
        if self.kind == "S":
            return self.data() * self.nblocks
        return bytes(self.nblocks * BLOCK)


def random_op(rng: random.Random, index: int, num_blocks: int) -> LoggedOp:
    kind = rng.choices(KINDS, weights=(85, 10, 5))[0]
    n = rng.randint(1, 16)
    lba = rng.randrange(0, num_blocks - n + 1)
    return LoggedOp(index, kind, lba, n)


def read_log(path: Path) -> list[LoggedOp]:
    ops: list[LoggedOp] = []
    if not path.exists():
        return ops          # the writer has not logged anything yet
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            break   # a line torn by kill -9: the op was never submitted
        ops.append(LoggedOp(int(parts[0]), parts[1], int(parts[2]), int(parts[3])))
    return ops


def image_after(ops: list[LoggedOp], size: int) -> bytearray:
    img = bytearray(size)
    for op in ops:
        img[op.lba * BLOCK:(op.lba + op.nblocks) * BLOCK] = op.image_bytes()
    return img


@dataclass
class PrefixResult:
    ops_in_prefix: int
    candidates: list[int] = field(default_factory=list)


def match_prefix(remote: bytes, ops: list[LoggedOp]) -> PrefixResult:
    """Find k such that ``remote`` == image after ops[:k]; raise AssertionError if none."""
    highest = 0
    view = memoryview(remote)
    for off in range(0, len(remote), BLOCK):
        index, _ = _TAG.unpack_from(view, off)
        highest = max(highest, index)
    if highest > len(ops):
        raise AssertionError(f"remote holds op #{highest}, but the log has only {len(ops)} ops")
    img = image_after(ops[:highest], len(remote))
    candidates = [highest]
    if bytes(img) == remote:
        return PrefixResult(highest, candidates)
    # Ops after the highest visible one may be UNMAPs (no tag): try them one by one.
    k = highest
    while k < len(ops) and ops[k].kind == "U":
        op = ops[k]
        img[op.lba * BLOCK:(op.lba + op.nblocks) * BLOCK] = op.image_bytes()
        k += 1
        candidates.append(k)
        if bytes(img) == remote:
            return PrefixResult(k, candidates)
    bad = next(i for i in range(0, len(remote), BLOCK) if img[i:i + BLOCK] != remote[i:i + BLOCK])
    raise AssertionError(f"remote mirror is not the image after any prefix (tried k in "
                         f"{candidates}); first differing block {bad // BLOCK}")


def invalid_blocks(remote: bytes) -> list[int]:
    """Blocks that are neither zero nor exactly what some logged op writes there: a damaged
    write that reached the mirror would show up here."""
    bad = []
    zero = bytes(BLOCK)
    for off in range(0, len(remote), BLOCK):
        blk = remote[off:off + BLOCK]
        if blk == zero:
            continue
        index, block = _TAG.unpack_from(blk)
        if index == 0 or block >= 16 or blk != block_data(index, block):
            bad.append(off // BLOCK)
    return bad


def read(path) -> bytes:
    return path.read_bytes()


def converge(pair, site, timeout: float = 60) -> None:
    """Wait until the DR mirror equals the primary's (writer finished) and counters agree."""
    remote = pair.replica_dir(site.uuid) / "mirror"

    def same():
        st = pair.rx_status()["volumes"][str(site.uuid)]
        return (remote.exists() and st["applied_seq"] == st["durable_seq"] and
                read(remote) == read(site.mirror))
    try:
        wait_for(same, timeout, f"the DR mirror of {site.name} to equal the primary's")
    except AssertionError:
        print(pair.logs())
        raise
