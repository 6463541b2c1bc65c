"""The shell's /replication/monitoring driving the real exporter (appliance-exporter): a
change of port restarts it onto the new port, where Prometheus's own parser reads the scrape;
a port another program holds is refused before anything changes; a port taken between the
shell's check and the exporter's start makes the real exporter exit, and the shell reports the
exporter's own line and puts the previous settings back, on which the exporter answers again.

What systemd does on the appliance is done here by ``ExporterUnit``: the unit's command with
the file the shell generated; its log stands for the journal."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from repl_harness import PY, Proc, free_port, wait_for

from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.model import ModelError
from targetcli_ext.operations import Notes
from targetcli_ext.units import EXPORTER_UNIT, Units


class ExporterUnit(Units):
    """appliance-exporter.service as systemd runs it (ExecStart with the shell's file)."""

    def __init__(self, toml: Path, logdir: Path) -> None:
        super().__init__(runner=self._no_systemctl)
        self.proc = Proc("exporter", [PY, "-m", "appliance.exporter.daemon", "--config",
                                      str(toml)], logdir / "exporter.log")
        self.log: list[str] = []

    @staticmethod
    def _no_systemctl(args):
        raise AssertionError(f"no systemctl here: {args}")

    def start(self, unit: str) -> None:
        assert unit == EXPORTER_UNIT, unit
        self.log.append("start")
        if not self.proc.running():
            self.proc.start()

    def stop(self, unit: str) -> None:
        self.log.append("stop")
        self.proc.stop()

    def restart(self, unit: str) -> None:
        self.log.append("restart")
        self.proc.stop()
        self.proc.start()

    def is_active(self, unit: str) -> bool:
        return self.proc.running()

    def log_lines(self, unit: str, since: float, count: int = 20) -> list[str]:
        """What the current run wrote (the journal since the restart)."""
        run = self.proc.output().rpartition(f"=== start #{self.proc.starts} ===\n")[2]
        return [line for line in run.splitlines() if line.strip()][-count:]


@pytest.fixture
def site(tmp_path):
    (tmp_path / "run").mkdir()
    cfg = ShellConfig(state_dir=tmp_path / "replication", replicas_dir=tmp_path / "replicas",
                      sockets=DaemonSockets(tmp_path / "handler.sock", tmp_path / "run"))
    units = ExporterUnit(cfg.layout.exporter_toml, tmp_path)
    ctx = ReplicationContext(cfg, units=units, storage_objects=lambda: [])
    boot = free_port()          # not 9477: this machine may run an exporter of its own
    with ctx.store.locked():
        saved = ctx.store.load()
        ctx.store.save(replace(saved, identity="site-a",
                               monitoring=replace(saved.monitoring, port=boot)))
    notes = Notes()
    ctx.start_exporter(ctx.write_exporter(ctx.store.load(), notes), notes)   # as at boot
    ctx.boot_listen = f"127.0.0.1:{boot}"
    try:
        wait_for(lambda: answering(ctx, ctx.boot_listen), 30, "the exporter started at boot "
                 f"to answer on {ctx.boot_listen}:\n{units.proc.output()[-2000:]}")
        yield ctx
    finally:
        units.proc.stop()


def scrape(listen: str) -> dict:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def answering(ctx, listen: str) -> bool:
    status = ctx.exporter_status()
    return status is not None and status.get("listen") == listen


def test_a_new_port_is_where_the_exporter_answers(site):
    assert "appliance_build_info" in scrape(site.boot_listen)
    port = free_port()
    notes = Notes()
    site.set_monitoring({"port": str(port), "journal_high_water": "90"}, notes)
    assert ("info", f"Restarted {EXPORTER_UNIT}: metrics at http://127.0.0.1:{port}/metrics.") \
        in notes.lines
    status = site.exporter_status()
    assert status["listen"] == f"127.0.0.1:{port}"
    assert status["thresholds"]["journal_high_water_percent"] == 90.0
    families = scrape(f"127.0.0.1:{port}")
    assert families["appliance_build_info"].samples[0].labels["version"]


def test_a_port_in_use_is_refused_before_anything_changes(site):
    before = {p: p.read_bytes() for p in site.layout.state_dir.iterdir() if p.is_file()}
    starts = site.units.proc.starts
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with pytest.raises(ModelError, match=f"^port={taken} is in use on 127.0.0.1 by "
                                             f"another program"):
            site.set_monitoring({"port": str(taken)}, Notes())
    assert {p: p.read_bytes() for p in site.layout.state_dir.iterdir() if p.is_file()} == before
    assert site.units.proc.starts == starts


def test_an_exporter_that_cannot_listen_is_reported_and_the_previous_settings_restored(site):
    good = site.boot_listen.rpartition(":")[2]
    before = {p: p.read_bytes() for p in site.layout.state_dir.iterdir() if p.is_file()}
    site.probe = lambda address, port: None      # the port is taken after the shell's check
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with pytest.raises(ModelError) as info:
            site.set_monitoring({"port": str(taken)}, Notes())
    assert str(info.value) == (
        f"the exporter did not start with the new settings: it exited: appliance-exporter: "
        f"cannot listen on 127.0.0.1:{taken}: the port is in use by another program; choose "
        f"another port (targetcli /replication/monitoring set exporter port=...) or stop that "
        f"program (ss -ltnp 'sport = :{taken}' shows it); the previous settings are restored "
        f"(the exporter runs with them again on 127.0.0.1:{good})")
    assert {p: p.read_bytes() for p in site.layout.state_dir.iterdir() if p.is_file()} == before
    assert answering(site, f"127.0.0.1:{good}")
    assert "appliance_build_info" in scrape(f"127.0.0.1:{good}")


def test_replication_status_lists_the_exporters_active_alerts(site):
    """A transmitter socket that exists but does not answer: the exporter raises
    StatusUnavailable, and '/replication status' (the shell's snapshot, which asks the
    exporter too) lists it after the volumes."""
    site.set_monitoring({"interval": "0.2s"}, Notes())
    stale = site.layout.run_dir / "transmitter-vol9.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))              # closed: connecting is refused
    wait_for(lambda: (site.exporter_status() or {}).get("alerts"), 30,
             "the exporter to raise StatusUnavailable")
    text = site.render()
    lines = text.splitlines()
    head = lines.index(f"alerts: 1 active (exporter on {site.boot_listen})")
    assert lines[head + 1].startswith("  ") and "StatusUnavailable since " in lines[head + 1]
    assert "transmitter-vol9.sock" in lines[head + 1]
