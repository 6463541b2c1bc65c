"""The exporter's integration tier: the whole primary chain on one host (conftest.py makes it).

- the real handler (appliance.tcmu.daemon.HandlerDaemon and its control socket) serving a
  simulated TCMU ring in this process, as tests/integration/tcmu does; host writes are SCSI
  commands through that ring (counted by the test);
- the real transmitter and receiver as processes (tests/integration/replication/repl_harness),
  on loopback without TLS;
- the exporter (appliance.exporter.daemon.Exporter) in this process with its own event loop,
  its journal entries sent to a datagram socket the test reads, its webhook a loopback server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from exporter_servers import FakeJournal, RunningExporter
from repl_harness import Proc, free_port, module_proc, status, wait_for
from test_daemon_assembly import SIZE, _fake_system

from appliance.exporter.config import AlertThresholds, ExporterConfig, WebhookConfig
from appliance.exporter.daemon import Exporter
from appliance.exporter.journal_log import JournalSender
from appliance.tcmu.daemon import HandlerDaemon, control_server
from appliance.tcmu.sim import SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio
from appliance.volume.identity import mirror_volume_uuid

BS = 512
NAME = "vol1"                   # the backstore's name, the transmitter's socket's, the HELLO's


def write10(lba: int, nblocks: int, *, fua: bool = False) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0x08 if fua else 0, lba, 0, nblocks, 0)


def read10(lba: int, nblocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, nblocks, 0)


class Handler:
    """The handler daemon with its control socket, on its own event loop in a thread."""

    def __init__(self, root: Path, journal_size: str) -> None:
        self.data = root / "data"
        self.data.mkdir(parents=True)
        self.mirror = self.data / "m.img"
        self.journal = self.data / "j.jnl"
        cfg = f"mirror/mirror={self.mirror};journal={self.journal};journal_size={journal_size}"
        self.config = dataclasses.replace(_fake_system(root, cfg),
                                          control_socket=root / "handler.sock")
        ring = root / "ring"
        self.kernel = SimKernel(ring, SimConfig(ring_bytes=1 << 20, data_blocks=1024))
        self.daemon = HandlerDaemon(self.config, open_transport=lambda minor, name: SimUio(ring))
        self.uuid = mirror_volume_uuid(self.mirror)
        self.size = SIZE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        started = threading.Event()

        async def life() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.daemon.start()
            control = control_server(self.daemon)
            await control.start()
            started.set()
            try:
                await self._stop.wait()
            finally:
                await control.close()

        def body() -> None:
            try:
                asyncio.run(life())
            except BaseException as err:
                self.error = err
            finally:
                self.daemon.shutdown()
                started.set()

        self.thread = threading.Thread(target=body, name="handler", daemon=True)
        self.thread.start()
        assert started.wait(30), "the handler did not start within 30 s"
        assert self.error is None, f"the handler failed: {self.error!r}"
        assert self.daemon.manager.devices, "the handler serves no device (see its log)"

    def status(self) -> dict:
        return status(self.config.control_socket)["volumes"][NAME]

    def write(self, lba: int, data: bytes, *, fua: bool = False) -> float:
        """One WRITE(10) through the ring (``fua``: durable when it completes, a journal
        commit with its fdatasync); returns its latency in seconds."""
        started = time.perf_counter()
        cdb = write10(lba, len(data) // BS, fua=fua)
        (res,) = self.kernel.wait_for([self.kernel.submit(cdb, data)], timeout=30)
        took = time.perf_counter() - started
        assert res.status == 0, f"WRITE at {lba} failed: {res.status:#x} {res.sense!r}"
        return took

    def flush(self) -> None:
        """SYNCHRONIZE CACHE(10): what the host has written is durable and on the mirror
        (with the write cache on, small writes wait in the volume's overlay until then:
        docs/volume.md)."""
        (res,) = self.kernel.wait_for([self.kernel.submit(b"\x35" + bytes(9))], timeout=30)
        assert res.status == 0, f"SYNCHRONIZE CACHE failed: {res.status:#x}"

    def read(self, lba: int, nblocks: int) -> bytes:
        (res,) = self.kernel.wait_for([self.kernel.submit(read10(lba, nblocks), b"",
                                                          nblocks * BS)], timeout=30)
        assert res.status == 0, f"READ at {lba} failed: {res.status:#x}"
        return res.data_in

    def close(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.kernel.close()


@dataclass
class Chain:
    root: Path
    handler: Handler
    run_dir: Path
    port: int
    rx_control: Path
    procs: list[Proc] = field(default_factory=list)
    exporters: list[RunningExporter] = field(default_factory=list)
    journal: FakeJournal | None = None

    @property
    def tx_control(self) -> Path:
        return self.run_dir / f"transmitter-{NAME}.sock"

    def receiver(self) -> Proc:
        cfg = self.root / "rx.toml"
        cfg.write_text("\n".join([
            'identity = "dr-site"', f'listen = "127.0.0.1:{self.port}"',
            f'state_dir = "{self.root / "replicas"}"', f'control_socket = "{self.rx_control}"',
            "heartbeat_s = 0.5", "dead_after_s = 3.0", "insecure = true",
            "[[volume]]", f'uuid = "{self.handler.uuid}"', f"size_bytes = {self.handler.size}",
            f"block_size = {BS}", f"journal_size = {16 << 20}"]) + "\n")
        p = module_proc("receiver", "appliance.replication.dr.receiver", cfg, self.root)
        self.procs.append(p)
        return p

    def transmitter(self) -> Proc:
        cfg = self.root / "tx.toml"
        cfg.write_text("\n".join([
            'identity = "site-a"', f'peer = "127.0.0.1:{self.port}"',
            'peer_identity = "dr-site"', f'journal = "{self.handler.journal}"',
            f'volume_uuid = "{self.handler.uuid}"', f"size_bytes = {self.handler.size}",
            f"block_size = {BS}", f'control_socket = "{self.tx_control}"', f'name = "{NAME}"',
            "heartbeat_s = 0.5", "dead_after_s = 3.0", "backoff_max_s = 0.5",
            "insecure = true"]) + "\n")
        p = module_proc("transmitter", "appliance.replication.primary.transmitter", cfg,
                        self.root)
        self.procs.append(p)
        return p

    def start(self, proc: Proc, control: Path) -> Proc:
        proc.start()

        def up():
            assert proc.running(), f"{proc.name} exited:\n{proc.output()[-3000:]}"
            return status(control)
        wait_for(up, 30, f"{proc.name}'s control socket")
        return proc

    def exporter(self, *, interval: float = 0.2, link_down_s: float = 60.0,
                 webhook: WebhookConfig | None = None, **alerts) -> RunningExporter:
        if self.journal is None:
            self.journal = FakeJournal(self.root / "journal.sock")
        cfg = ExporterConfig(identity="site-a", port=0, interval=interval,
                             state_dir=self.root / "exporter", run_dir=self.run_dir,
                             handler_socket=self.handler.config.control_socket,
                             alerts=AlertThresholds(link_down_s=link_down_s, **alerts),
                             webhook=webhook)
        running = RunningExporter(Exporter(cfg, journal=JournalSender(self.journal.path)))
        self.exporters.append(running)
        return running.wait_ready()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.output()[-3000:]}" for p in self.procs)


def make_chain(tmp_path: Path, *, journal_size: str, rx_in_run_dir: bool) -> Chain:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rx_control = run_dir / "receiver.sock" if rx_in_run_dir else tmp_path / "dr" / "rx.sock"
    rx_control.parent.mkdir(exist_ok=True)
    return Chain(tmp_path, Handler(tmp_path, journal_size), run_dir, free_port(), rx_control)


class StubDaemon:
    """A control socket answering ``status`` with ``states`` in turn (a daemon whose state
    changes at every question), on its own event loop in a thread."""

    def __init__(self, path: Path, states: list[dict]) -> None:
        from appliance.control.server import ControlServer

        self.calls = 0

        def answer(_args: dict) -> dict:
            self.calls += 1
            return states[self.calls % len(states)]
        self.server = ControlServer(path, {"status": answer})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stub", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
