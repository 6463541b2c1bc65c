"""Alert events POSTed as JSON to the admin's webhook, by one thread, never in anyone's way.

``submit`` only appends to a bounded queue (when it is full the oldest undelivered event is
dropped and counted), so the evaluation loop never waits for the webhook, and the I/O daemons
know nothing of it. One delivery thread sends the events in order: a 2xx answer delivers one;
a timeout, a connection error or a 5xx / 408 / 429 answer is retried with a doubling backoff
(``BACKOFF_S`` up to ``BACKOFF_MAX_S``) until it is delivered or pushed out of the queue; any
other 4xx means the webhook will never take it: dropped, counted, with the error in status.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

import appliance
from appliance.exporter.config import WebhookConfig

log = logging.getLogger(__name__)

BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
RETRIED_STATUS = frozenset({408, 429})


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def post_json(url: str, body: dict, timeout: float) -> None:
    """One POST; raises DeliveryError (``permanent`` for a 4xx other than 408/429)."""
    data = json.dumps(body, sort_keys=True).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json",
        "User-Agent": f"appliance-exporter/{appliance.__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(65536)
    except urllib.error.HTTPError as err:
        permanent = 400 <= err.code < 500 and err.code not in RETRIED_STATUS
        raise DeliveryError(f"HTTP {err.code} {err.reason}", permanent=permanent) from err
    except urllib.error.URLError as err:
        raise DeliveryError(f"cannot reach the webhook: {err.reason}") from err
    except (OSError, ValueError, http.client.HTTPException) as err:   # timeouts, resets,
        # an answer that is no HTTP
        raise DeliveryError(f"{type(err).__name__}: {err or 'no answer'}") from err


def redacted(url: str) -> str:
    """The URL as status and logs show it (the journal is readable beyond root): which
    endpoint, without the secrets a webhook URL carries. A password becomes ``***``, and so
    do every query value and the path after its first segment, where chat and incident
    services put their tokens (``https://hooks.example/services/***``)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{parts.hostname or ''}" + \
            (f":{parts.port}" if parts.port else "")
    first, sep, rest = parts.path.lstrip("/").partition("/")
    path = f"/{first}{sep}***" if rest else parts.path
    query = "&".join(f"{pair.partition('=')[0]}=***" for pair in parts.query.split("&")
                     if pair)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=path, query=query,
                                                  fragment=""))


class WebhookSender:
    """The queue and its delivery thread (``start``, ``submit``, ``status``, ``stop``)."""

    def __init__(self, cfg: WebhookConfig, *,
                 post: Callable[[str, dict, float], None] = post_json,
                 backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.cfg = cfg
        self._post = post
        self._backoff_s, self._backoff_max_s = backoff_s, backoff_max_s
        self._queue: collections.deque[dict] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_delivered_at: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def submit(self, event: dict) -> None:
        """Queue ``event``; returns at once."""
        with self._cond:
            if len(self._queue) >= self.cfg.queue_size:
                gone = self._queue.popleft()
                self.dropped += 1
                log.warning("webhook queue full (%d): dropped the oldest event (%s %s %s)",
                            self.cfg.queue_size, gone.get("alert"), gone.get("state"),
                            gone.get("volume"))
            self._queue.append(event)
            self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            return {"url": redacted(self.cfg.url), "queued": len(self._queue),
                    "delivered": self.delivered, "failed_attempts": self.failed_attempts,
                    "dropped": self.dropped, "last_error": self.last_error,
                    "last_delivered_at": self.last_delivered_at}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering; what is queued is not sent (a POST under way may end first,
        within the webhook's timeout_s)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> dict | None:
        with self._cond:
            while not self._queue and not self._stopping.is_set():
                self._cond.wait()
            return None if self._stopping.is_set() else self._queue[0]

    def _run(self) -> None:
        backoff = self._backoff_s
        while (event := self._next()) is not None:
            try:
                self._post(self.cfg.url, event, self.cfg.timeout_s)
            except DeliveryError as err:
                with self._cond:
                    self.failed_attempts += 1
                    self.last_error = str(err)
                    if err.permanent:
                        self._remove(event)
                        self.dropped += 1
                if err.permanent:
                    log.warning("webhook %s refused event %s %s: %s; dropped",
                                redacted(self.cfg.url), event.get("alert"), event.get("state"),
                                err)
                    continue
                log.info("webhook %s: %s; retrying in %.1f s", redacted(self.cfg.url), err,
                         backoff)
                if self._stopping.wait(backoff):
                    return
                backoff = min(self._backoff_max_s, backoff * 2)
                continue
            backoff = self._backoff_s
            with self._cond:
                self._remove(event)
                self.delivered += 1
                self.last_delivered_at = time.time()
                self.last_error = None

    def _remove(self, event: dict) -> None:
        """Drop ``event`` if still queued first (``submit`` may have pushed it out)."""
        if self._queue and self._queue[0] is event:
            self._queue.popleft()
