"""Control socket server: one JSON object per line in, one per line out.

Request: ``{"cmd": "status", "args": {...}}``. Reply: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. A daemon registers the commands it offers; unknown commands
and malformed requests get an error reply, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

Handler = Callable[[dict], dict | Awaitable[dict]]
MAX_REQUEST = 1 << 20


class CommandError(Exception):
    """A command refused its arguments; the message goes back to the caller."""


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Handler]) -> None:
        self.path = Path(path)
        self.commands = dict(commands)
        self.commands.setdefault("help", lambda args: {"commands": sorted(self.commands)})
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()   # a stale socket from a previous (crashed) run
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self._dispatch(line)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError) as err:   # ValueError: line over the limit
            log.info("control client dropped: %s", err)
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise CommandError('request must be {"cmd": "<name>", "args": {...}}')
            handler = self.commands.get(req["cmd"])
            if handler is None:
                raise CommandError(f"unknown command {req['cmd']!r}; "
                                   f"known: {', '.join(sorted(self.commands))}")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise CommandError("args must be a JSON object")
            result = handler(args)
            if asyncio.iscoroutine(result):
                result = await result
            return {"ok": True, "result": result}
        except json.JSONDecodeError as err:
            return {"ok": False, "error": f"request is not JSON: {err}"}
        except CommandError as err:
            return {"ok": False, "error": str(err)}
