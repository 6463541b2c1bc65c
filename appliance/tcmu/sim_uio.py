"""The handler's side of the ring simulation: a RingTransport over the simulation's files.

Like /dev/uioN it admits one opener at a time (an flock that dies with the process, so a
handler killed with SIGKILL can be replaced), waits by reading the event FIFO and pokes by
writing 4 bytes to the poke FIFO.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
from pathlib import Path

from appliance.tcmu import layout
from appliance.tcmu.sim import SimKernel

_PROT_NONE = 0x0
_PROT_RW = 0x1 | 0x2


class DeviceBusy(OSError):
    """Another handler holds the device (the kernel answers EBUSY to a second open)."""


class SimUio:
    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        self._region_fd = os.open(directory / "region", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(self._region_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._region_fd)
            raise DeviceBusy(errno.EBUSY, f"{directory} is already open by another handler") from err
        size = os.fstat(self._region_fd).st_size
        self._mm = mmap.mmap(self._region_fd, size)
        self.region = memoryview(self._mm)
        self._event_fd = os.open(directory / "event", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._poke_fd = os.open(directory / "poke", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._guarded = False

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._event_fd], [], [], timeout)
        if not ready:
            return False
        # A FIFO queues every notification; /dev/uioN coalesces them into one count. Drain.
        # (try/except, not contextlib.suppress: once per wake-up, suppress costs three calls.)
        try:  # noqa: SIM105
            os.read(self._event_fd, 4096)
        except BlockingIOError:
            pass
        return True

    def poke(self) -> None:
        try:  # noqa: SIM105 (once per batch: contextlib.suppress costs three calls)
            os.write(self._poke_fd, b"\x01\x00\x00\x00")
        except BlockingIOError:     # FIFO full: the kernel has pokes pending
            pass

    def guard_with(self, kernel: SimKernel) -> None:
        """Map every data block PROT_NONE unless a live command owns it (same process only).

        Touching data outside a pending command's iovecs then kills the process with SIGSEGV,
        as touching a reclaimed data page kills a real handler with SIGBUS.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        anchor = ctypes.c_char.from_buffer(self._mm)
        base = ctypes.addressof(anchor)
        del anchor

        def protect(off: int, length: int, accessible: bool) -> None:
            prot = _PROT_RW if accessible else _PROT_NONE
            if libc.mprotect(ctypes.c_void_p(base + off), ctypes.c_size_t(length), prot) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mprotect({off:#x}, {length}) failed")

        data_off = layout.data_area_offset(layout.read_mailbox(self.region))
        protect(data_off, len(self.region) - data_off, False)
        kernel.guard = protect
        self._guarded = True

    def close(self) -> None:
        self.region.release()
        self._mm.close()
        for fd in (self._region_fd, self._event_fd, self._poke_fd):
            os.close(fd)
