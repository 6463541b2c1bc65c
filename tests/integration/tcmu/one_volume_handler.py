"""The real handler daemon serving one `user:mirror` volume (vol1) on the ring simulation,
with its control socket: what the tests of the handler's control commands share."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from test_daemon_assembly import _fake_system

from appliance.tcmu import cfgstring
from appliance.tcmu.daemon import HandlerConfig, HandlerDaemon, control_server
from appliance.tcmu.sim import SimConfig, SimKernel
from appliance.tcmu.sim_uio import SimUio
from appliance.volume.identity import mirror_volume_uuid


@dataclass
class OneVolume:
    config: HandlerConfig
    mirror: cfgstring.MirrorConfig
    ring: Path
    kernel: SimKernel

    @property
    def socket(self) -> Path:
        return self.config.control_socket

    @property
    def volume_uuid(self):
        return mirror_volume_uuid(self.mirror.mirror)

    def run(self, body: Callable[[HandlerDaemon], Awaitable[None]]) -> None:
        run_handler(self.config, self.ring, body)


def one_volume(tmp_path: Path, *, data_blocks: int = 256) -> OneVolume:
    """vol1: mirror and journal (64 MiB) under tmp_path/data, its ring at tmp_path/ring, the
    handler's control socket at tmp_path/handler.sock. Close ``kernel`` when done."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = f"mirror/mirror={data_dir}/m.img;journal={data_dir}/j.jnl;journal_size=64M"
    config = dataclasses.replace(_fake_system(tmp_path, cfg),
                                 control_socket=tmp_path / "handler.sock")
    ring = tmp_path / "ring"
    kernel = SimKernel(ring, SimConfig(ring_bytes=1 << 20, data_blocks=data_blocks))
    return OneVolume(config, cfgstring.parse_config(cfg), ring, kernel)


def run_handler(config: HandlerConfig, ring: Path | Callable[[int], Path],
                body: Callable[[HandlerDaemon], Awaitable[None]]) -> None:
    """One life of the handler: start it and its control socket, run `body`, stop both.
    ``ring``: the one simulated ring, or the ring of each device minor."""
    def ring_of(minor: int) -> Path:
        return ring(minor) if callable(ring) else ring
    daemon = HandlerDaemon(config, open_transport=lambda minor, name: SimUio(ring_of(minor)))

    async def life() -> None:
        await daemon.start()
        control = control_server(daemon)
        await control.start()
        try:
            await body(daemon)
        finally:
            await control.close()

    try:
        asyncio.run(life())
    finally:
        daemon.shutdown()
