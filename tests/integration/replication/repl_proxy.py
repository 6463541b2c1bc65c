"""A misbehaving TCP proxy between transmitter and receiver (integration tests only).

Primary-to-DR direction only, so that the damage lands on what the receiver must verify:

  --corrupt P      flip one random bit in a forwarded chunk with probability P
  --stall-every S  every S seconds stop forwarding (both ways) for --stall-for seconds
  --cut-every S    every S seconds close all connections (a link flap)
  --delay-ms D     emulated WAN: each chunk leaves D ms after it arrived (both ways)
  --rate-mbit R    emulated WAN: paced at R Mbit/s (each way)
  --frames         frame-aware mode (plain-TCP links): BATCH frames are duplicated with
                   probability --dup and swapped with the next BATCH with probability --reorder

Counts of what it did are printed on SIGTERM and every few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import struct
import sys

HEADER = 16


class Stats:
    def __init__(self) -> None:
        self.corrupted = self.duplicated = self.reordered = self.stalls = self.cuts = 0
        self.connections = 0

    def line(self) -> str:
        return (f"proxy: connections={self.connections} corrupted={self.corrupted} "
                f"duplicated={self.duplicated} reordered={self.reordered} "
                f"stalls={self.stalls} cuts={self.cuts}")


class Proxy:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.rng = random.Random(ns.seed)
        self.stats = Stats()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def pump_plain(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                         damage: bool) -> None:
        if self.ns.delay_ms or self.ns.rate_mbit:
            await self.pump_wan(r, w)
            return
        while chunk := await r.read(65536):
            await self.flowing.wait()
            if damage and self.ns.corrupt and self.rng.random() < self.ns.corrupt:
                buf = bytearray(chunk)
                buf[self.rng.randrange(len(buf))] ^= 1 << self.rng.randrange(8)
                chunk = bytes(buf)
                self.stats.corrupted += 1
            w.write(chunk)
            await w.drain()

    async def pump_wan(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Emulated WAN (for hosts without tc netem): every chunk leaves ``--delay-ms``
        after it arrived, paced at ``--rate-mbit``. Bounded queue = bounded bufferbloat."""
        loop = asyncio.get_running_loop()
        delay = self.ns.delay_ms / 1000
        rate = self.ns.rate_mbit * 1e6 / 8 if self.ns.rate_mbit else None
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)

        async def sender() -> None:
            free_at = loop.time()
            while (item := await queue.get()) is not None:
                due, chunk = item
                if rate:
                    free_at = max(free_at, due) + len(chunk) / rate
                    due = free_at
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                w.write(chunk)
                await w.drain()

        task = asyncio.create_task(sender())
        try:
            while chunk := await r.read(16384):
                await queue.put((loop.time() + delay, chunk))
            await queue.put(None)
            await task
        finally:
            task.cancel()

    async def pump_frames(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held: bytes | None = None
        while True:
            head = await r.readexactly(HEADER)
            (length,) = struct.unpack_from("<I", head, 8)
            frame = head + await r.readexactly(length + 4)
            await self.flowing.wait()
            out = [frame]
            if held is not None:   # the held BATCH goes out after this frame
                out, held = [frame, held], None
                self.stats.reordered += 1
            elif head[5] == 4:   # BATCH
                if self.rng.random() < self.ns.reorder:
                    held, out = frame, []
                elif self.rng.random() < self.ns.dup:
                    out = [frame, frame]
                    self.stats.duplicated += 1
            for f in out:
                w.write(f)
            await w.drain()

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            sr, sw = await asyncio.open_connection(self.ns.target_host, self.ns.target_port)
        except OSError:
            cw.close()
            return
        self.writers |= {cw, sw}
        up = (self.pump_frames(cr, sw) if self.ns.frames else self.pump_plain(cr, sw, True))
        tasks = [asyncio.create_task(up), asyncio.create_task(self.pump_plain(sr, cw, False))]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (cw, sw):
            self.writers.discard(w)
            w.close()

    async def chaos(self) -> None:
        last_cut = last_stall = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(0.1)
            now = asyncio.get_running_loop().time()
            if self.ns.stall_every and now - last_stall >= self.ns.stall_every:
                self.stats.stalls += 1
                self.flowing.clear()
                await asyncio.sleep(self.ns.stall_for)
                self.flowing.set()
                last_stall = asyncio.get_running_loop().time()
            if self.ns.cut_every and now - last_cut >= self.ns.cut_every:
                self.stats.cuts += 1
                for w in list(self.writers):
                    w.transport.abort()
                last_cut = now


async def amain(ns: argparse.Namespace) -> None:
    proxy = Proxy(ns)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", ns.listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    chaos = asyncio.create_task(proxy.chaos())
    print(f"proxy: listening on {ns.listen_port} -> {ns.target_port}", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        print(proxy.stats.line(), flush=True)
    chaos.cancel()
    server.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--corrupt", type=float, default=0.0)
    p.add_argument("--stall-every", type=float, default=0.0)
    p.add_argument("--stall-for", type=float, default=1.0)
    p.add_argument("--cut-every", type=float, default=0.0)
    p.add_argument("--frames", action="store_true")
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, both ways")
    p.add_argument("--rate-mbit", type=float, default=0.0, help="rate limit, each way")
    asyncio.run(amain(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
