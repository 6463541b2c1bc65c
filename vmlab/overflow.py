"""Pieces of the journal-overflow episode of the VM tier (tests/vm/test_overflow_chain.py):
a paced file writer for the host VM, per-MiB hashes of a disk or file inside a VM, a read
of the primary's dirty-region bitmap header (the volume's own account of its mode), and
a thread that polls a daemon's ``appliancectl status`` and keeps every answer."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from appliance.volume import bitmap_format as bf
from appliance.volume.bitmap_format import BitmapHeader
from vmlab.machine import Machine

# Runs in the host VM (python3 of the image). Writes files of CHUNK bytes in a ring of FILES
# names, each with fsync, at most RATE bytes/s, until STOP exists; one line per completed
# write to LOG: "index wall_time seconds_this_write total_bytes". An error ends it, logged.
WRITER = r"""
import os, sys, time
directory, log_path, stop, chunk, files, rate = sys.argv[1:7]
chunk, files, rate = int(chunk), int(files), float(rate)
os.makedirs(directory, exist_ok=True)
log = open(log_path, "a", buffering=1)
total, i, began = 0, 0, time.monotonic()
while not os.path.exists(stop):
    data = os.urandom(chunk)
    t0 = time.monotonic()
    try:
        fd = os.open(f"{directory}/f{i % files:03d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        log.write(f"error {time.time():.3f} {err}\n")
        sys.exit(1)
    seconds = time.monotonic() - t0
    total += chunk
    i += 1
    log.write(f"{i} {time.time():.3f} {seconds:.3f} {total}\n")
    ahead = total / rate - (time.monotonic() - began)
    if ahead > 0:
        time.sleep(ahead)
log.write(f"stopped {time.time():.3f}\n")
"""


@dataclass(frozen=True)
class WriterProgress:
    writes: int
    total_bytes: int
    longest_s: float
    error: str | None
    stopped: bool


def writer_progress(host: Machine, log_path: str) -> WriterProgress:
    """Read the writer's log: writes done, bytes, the longest single write, an error."""
    text = host.run(["cat", log_path], timeout=30, check=False).text
    writes = total = 0
    longest = 0.0
    error = None
    stopped = False
    for line in text.splitlines():
        words = line.split(" ", 3)
        if words[0] == "error":
            error = line
        elif words[0] == "stopped":
            stopped = True
        elif len(words) == 4:
            writes, total = int(words[0]), int(words[3])
            longest = max(longest, float(words[2]))
    return WriterProgress(writes, total, longest, error, stopped)


# Runs in a VM: hashes of every MiB of a file or block device, up to SIZE bytes, as JSON.
# O_DIRECT reads of 4 MiB (page-aligned buffer from mmap): what the disk or the target holds,
# not a page cache. Through iSCSI and the primary's handler under TCG, 256 MiB took 12-26 s
# on a quiet machine and ~60 s in the three-VM episode; a local file, 4-9 s.
CHUNK_HASHES = r"""
import hashlib, json, mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
except OSError:
    fd = os.open(path, os.O_RDONLY)
buf = mmap.mmap(-1, 4 << 20)
out, offset = [], 0
while offset < size:
    n = os.preadv(fd, [buf], offset)
    if n <= 0:
        break
    n = min(n, size - offset)
    view = memoryview(buf)[:n]
    for i in range(0, n, 1 << 20):
        out.append(hashlib.blake2b(view[i:i + (1 << 20)], digest_size=8).hexdigest())
    view.release()
    offset += n
print(json.dumps(out))
"""


def chunk_hashes(machine: Machine, path: str, size: int, timeout: float = 300.0) -> list[str]:
    """Hash of every MiB of path (a file or a block device) in machine, read with O_DIRECT."""
    result = machine.run(["python3", "-c", CHUNK_HASHES, path, str(size)], timeout=timeout)
    return json.loads(result.text)


def bitmap_header(primary: Machine, path: str) -> BitmapHeader | None:
    """The volume's own account of its mode: the newest valid header of its dirty-region
    bitmap, read in the VM and decoded here (None: no valid header, or no file yet)."""
    result = primary.run(["dd", f"if={path}", f"bs={bf.SLOT_SIZE}", f"count={len(bf.HEADER_OFFSETS)}",
                          "iflag=direct", "status=none"], timeout=60, check=False)
    if result.rc != 0:
        return None
    head = result.stdout
    return bf.newest([bf.decode_header(head[o:o + bf.SLOT_SIZE]) for o in bf.HEADER_OFFSETS])[1]


def is_logging(header: BitmapHeader | None) -> bool:
    return header is not None and header.mode == bf.MODE_LOGGING


@dataclass
class Poll:
    side: str
    start: float            # time.monotonic() of this process
    end: float
    status: dict | None     # the daemon's JSON, or None with error set
    error: str | None = None


@dataclass
class StatusPoller:
    """Polls ``appliancectl --socket SOCKET status`` in a VM every ``interval`` seconds (at
    most) on its own thread, and keeps every answer, failures included."""

    side: str
    machine: Machine
    socket: str
    interval: float = 2.0
    polls: list[Poll] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"poll-{self.side}", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> StatusPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def snapshot(self) -> list[Poll]:
        with self._lock:
            return list(self.polls)

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            status, error = None, None
            try:
                result = self.machine.run(
                    ["appliancectl", "--socket", self.socket, "status", "--json"],
                    timeout=30, check=False)
                if result.rc == 0:
                    status = json.loads(result.text)
                else:
                    error = result.describe()
            except Exception as err:  # keep polling; the record says what went wrong
                error = f"{type(err).__name__}: {err}"
            with self._lock:
                self.polls.append(Poll(self.side, start, time.monotonic(), status, error))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - start)))
