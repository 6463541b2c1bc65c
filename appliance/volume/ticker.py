"""A daemon thread that calls a function at a fixed interval until stopped.

The volume's background work (resync clear requests, the way back from logging-to-bitmap,
mirror checkpoints) must happen even when the host sends nothing, which is exactly when a
resync runs best; the device loop need not know about it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    def __init__(self, func: Callable[[], None], interval: float, name: str) -> None:
        self._func = func
        self._interval = interval
        self._stop = threading.Event()
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._func()
                self.last_error = None
            except Exception as err:     # keep ticking: the next call may succeed
                if str(err) != self.last_error:
                    log.error("%s: background work failed: %s", self._thread.name, err)
                self.last_error = str(err)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self._thread.name} did not stop within {timeout}s "
                                   "(a background mirror sync hung?)")
