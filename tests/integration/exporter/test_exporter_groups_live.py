"""The exporter on the real handler's status with a consistency group (docs/monitoring.md,
"Consistency groups"): the handler (tests/integration/tcmu/group_handler.py) serves members
log and data of group db and the plain volume vol1 on simulated rings; SCSI writes through
each. The scrape (ask_daemons + SiteCollector, as the daemon does) has the group's journal once
under db with every record of both members, each member's writes under its own name; a
journal pause through one member raises LoggingToBitmap once, for group db."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from group_handler import site, write10
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.control.site_status import DaemonSockets, ask_daemons
from appliance.exporter.alerts import AlertEngine
from appliance.exporter.config import AlertThresholds
from appliance.exporter.metrics import SiteCollector
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout

pytestmark = pytest.mark.integration

BS = 512
WRITES = {"log": 3, "data": 2, "vol1": 4}       # 4 KiB writes through each device
T0 = 1_700_000_000.0


def test_the_group_is_scraped_once_and_its_members_io_each(tmp_path: Path) -> None:
    s = site(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    layout = (GroupLayout("db", uuid.uuid4(), BS, 128, journal_size=16 << 20)
              .with_member("log", str(data / "log.img"), 1024)
              .with_member("data", str(data / "data.img"), 2048))
    group_layout.save(s.groups_dir / "db.group.json", layout)
    devs = {"log": s.device(3, "log", f"mirror/mirror={data / 'log.img'};group=db", 1024 * BS),
            "data": s.device(4, "data", f"mirror/mirror={data / 'data.img'};group=db",
                             2048 * BS),
            "vol1": s.device(5, "vol1", f"mirror/mirror={data / 'v.img'};journal="
                             f"{data / 'v.jnl'};journal_size=16M", 4096 * BS)}
    sockets = DaemonSockets(handler=s.config.control_socket, run_dir=tmp_path / "run")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SiteCollector(lambda: ask_daemons(sockets, exporter=False)))
    engine = AlertEngine(AlertThresholds(recovery_point_age_s=1e6))
    seen: dict = {}

    async def body(daemon) -> None:
        for name, n in WRITES.items():
            for i in range(n):
                res = await asyncio.to_thread(devs[name].run, write10(i * 8, 8), bytes(4096))
                assert res.status == 0, (name, res)
        seen["text"] = (await asyncio.to_thread(generate_latest, registry)).decode()
        ans = await asyncio.to_thread(ask_daemons, sockets, exporter=False)
        seen["healthy"] = engine.evaluate(ans, T0)
        await s.ctl("pause-journal", volume="log")      # the group's journal, through a member
        ans = await asyncio.to_thread(ask_daemons, sockets, exporter=False)
        seen["paused"] = engine.evaluate(ans, T0 + 1)
        seen["again"] = engine.evaluate(ans, T0 + 2)

    try:
        s.run(body)
    finally:
        s.close()
    print(seen["text"])
    fams = {f.name: f for f in text_string_to_metric_families(seen["text"])}

    def by_volume(family: str) -> dict[str, float]:
        samples = [x for x in fams[family].samples if not x.name.endswith("_created")]
        volumes = [x.labels["volume"] for x in samples]
        assert len(volumes) == len(set(volumes)), f"{family}: {volumes}"
        return {x.labels["volume"]: x.value for x in samples}

    assert by_volume("appliance_journal_records") == {"db": 5, "vol1": 4}
    assert by_volume("appliance_journal_overflows") == {"db": 0, "vol1": 0}
    assert set(by_volume("appliance_sync_fallback_seconds")) == {"db", "vol1"}
    assert by_volume("appliance_write_ops") == WRITES
    assert by_volume("appliance_write_bytes") == {k: n * 4096 for k, n in WRITES.items()}
    counts = {x.labels["volume"]: x.value for x in fams["appliance_command_latency_seconds"]
              .samples if x.name.endswith("_count")}
    assert counts == WRITES
    assert seen["healthy"] == []
    assert [(t.alert.alert, t.state, t.alert.volume) for t in seen["paused"]] == [
        ("LoggingToBitmap", "raised", "db")]
    assert seen["paused"][0].message.startswith("group db logs writes to the dirty bitmap")
    assert seen["again"] == []
