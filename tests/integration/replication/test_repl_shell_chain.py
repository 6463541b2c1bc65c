"""The shell's replication operations driving the real daemons: two sites on loopback pair
with each other (each fetching the other's certificate from its running receiver), the
primary replicates a volume taken from its backstore, the DR provisions the replica it is
offered, and the DR copy converges byte for byte; then the steering of a volume (pause,
discard, resume) through the same operations and control sockets.

What systemd does on the appliance is done here by ``ProcessUnits``: each unit the shell
starts runs the daemon the unit file runs, with the file the shell generated. The VM tier
drives the same chain through ``targetcli`` itself (tests/vm/test_shell_chain.py)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import pytest
from repl_harness import PY, Proc, free_port, read_log, status, wait_for

from appliance.control.client import call
from appliance.volume.identity import mirror_volume_uuid
from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.identity import load_certificate
from targetcli_ext.operations import Notes
from targetcli_ext.units import RECEIVER_UNIT, Units, transmitter_unit

HERE = Path(__file__).resolve().parent
BLOCKS = 4096


class ProcessUnits(Units):
    """The two unit kinds of the shell, run as the unit files run them."""

    def __init__(self, layout, logdir: Path) -> None:
        super().__init__(runner=self._no_systemctl)
        self.layout, self.logdir = layout, logdir
        self.procs: dict[str, Proc] = {}

    @staticmethod
    def _no_systemctl(args):
        raise AssertionError(f"no systemctl here: {args}")

    def _argv(self, unit: str) -> list[str]:
        if unit == RECEIVER_UNIT:
            return [PY, "-m", "appliance.replication.dr.receiver", "--config",
                    str(self.layout.receiver_toml)]
        volume = unit.removeprefix("appliance-transmitter@").removesuffix(".service")
        return [PY, "-m", "appliance.replication.primary.transmitter", "--config",
                str(self.layout.transmitter_toml(volume))]

    def start(self, unit: str) -> None:
        if not self.is_active(unit):
            self.procs[unit] = Proc(unit, self._argv(unit), self.logdir / f"{unit}.log").start()

    def stop(self, unit: str) -> None:
        if unit in self.procs:
            self.procs.pop(unit).stop()

    def restart(self, unit: str) -> None:
        self.stop(unit)
        self.start(unit)

    def is_active(self, unit: str) -> bool:
        return unit in self.procs and self.procs[unit].running()

    def stop_all(self) -> None:
        for unit in list(self.procs):
            self.stop(unit)


def site(root: Path, name: str, storage_objects=()) -> ReplicationContext:
    base = root / name
    (base / "run").mkdir(parents=True)
    cfg = ShellConfig(state_dir=base / "state", replicas_dir=base / "replicas",
                      sockets=DaemonSockets(base / "handler.sock", base / "run"),
                      fetch_timeout_s=5.0)
    ctx = ReplicationContext(cfg, collect=lambda: {}, units=ProcessUnits(cfg.layout, base),
                             storage_objects=lambda: list(storage_objects))
    with ctx.store.locked():
        ctx.store.save(dataclasses.replace(ctx.store.load(), identity=name,
                                           listen=f"127.0.0.1:{free_port()}"))
    return ctx


def writer_argv(c, ops: int, seed: int) -> list[str]:
    """The primary's host writes: the integration tier's writer through the real Volume."""
    return [PY, str(HERE / "repl_writer.py"), "--volume-dir", str(c.vol_dir), "--uuid",
            str(c.uuid), "--blocks", str(BLOCKS), "--log", str(c.log), "--ops", str(ops),
            "--seed", str(seed)]


def write(c, ops: int, seed: int) -> None:
    done = subprocess.run(writer_argv(c, ops, seed), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def writer_proc(c, ops: int, seed: int, linger: bool) -> Proc:
    return Proc("writer", writer_argv(c, ops, seed) + (["--linger"] if linger else []),
                c.log.with_name("writer.log"))


def start_receiver(ctx: ReplicationContext) -> None:
    notes = Notes()
    ctx.write_receiver(notes)
    ctx.reload_receiver(notes)
    wait_for(lambda: status(ctx.layout.receiver_socket), 30,
             f"the receiver of {ctx.store.load().identity} to answer")


@pytest.fixture
def chain(tmp_path):
    # The config string holds the volume's directory three times and the kernel keeps 255
    # bytes of it: under pytest's base directory (/tmp/pytest-of-root/pytest-NNNN/<test>) it
    # passed that once the run counter reached four digits. A short directory of its own.
    vol_dir = Path(tempfile.mkdtemp(prefix="vol1-"))
    backstore = types.SimpleNamespace(
        name="vol1", plugin="user", size=BLOCKS * 512,
        config=f"mirror/mirror={vol_dir}/mirror;journal={vol_dir}/journal;"
               f"bitmap={vol_dir}/bitmap")
    sites = []
    try:
        sites.append(site(tmp_path, "site-a", [backstore]))
        sites.append(site(tmp_path, "site-b"))
        for ctx in sites:
            start_receiver(ctx)
        primary, dr = sites
        yield types.SimpleNamespace(primary=primary, dr=dr, vol_dir=vol_dir,
                                    uuid=mirror_volume_uuid(str(vol_dir / "mirror")),
                                    log=tmp_path / "ops.log")
    finally:
        for ctx in sites:
            ctx.units.stop_all()
        shutil.rmtree(vol_dir, ignore_errors=True)


def pair(a: ReplicationContext, b: ReplicationContext) -> None:
    """a pins b's certificate, fetched from b's running receiver."""
    b_site = b.store.load()
    a.pair_peer(b_site.identity, b_site.listen,
                load_certificate(b.layout.state_dir).fingerprint, Notes())


def converged(c) -> bool:
    tx = status(c.primary.layout.transmitter_socket("vol1"))
    replica = c.dr.config.replicas_dir / str(c.uuid) / "mirror"
    return (tx.get("in_sync") and replica.exists()
            and replica.read_bytes() == (c.vol_dir / "mirror").read_bytes())


def test_paired_sites_replicate_a_backstore_and_the_dr_provisions_and_converges(chain):
    c = chain
    pair(c.dr, c.primary)
    pair(c.primary, c.dr)
    assert (c.dr.layout.peer_pem("site-a").is_file()
            and c.primary.layout.peer_pem("site-b").is_file())
    write(c, ops=300, seed=1)
    c.primary.create_volume("vol1", "site-b", Notes())
    assert c.primary.units.is_active(transmitter_unit("vol1"))
    wait_for(lambda: converged(c), 90, "the DR's provisioned replica to equal the primary")
    rx = status(c.dr.layout.receiver_socket)
    (vol,) = rx["volumes"].values()
    assert (vol["name"], vol["provisioned"], vol["in_sync"]) == ("vol1", True, True)


def test_pause_holds_writes_back_discard_drops_them_and_resume_resyncs(chain):
    c = chain
    pair(c.dr, c.primary)
    pair(c.primary, c.dr)
    write(c, ops=50, seed=2)
    c.primary.create_volume("vol1", "site-b", Notes())
    wait_for(lambda: converged(c), 90, "the first copy to converge")
    tx_sock = c.primary.layout.transmitter_socket("vol1")

    c.primary.store.update_volume("vol1", paused=True)
    c.primary.apply_volume("vol1")
    call(tx_sock, "pause", {})
    # The lingering writer stands in for the handler: it keeps the volume open and serves
    # the mark requests of the discard and the end of the resync.
    writer = writer_proc(c, ops=250, seed=3, linger=True).start()
    try:
        wait_for(lambda: len(read_log(c.log)) >= 250, 60, "the writes made while paused")
        behind = wait_for(lambda: (s := status(tx_sock))["link"]["state"] == "paused:admin"
                          and s["lag_records"] > 0 and s, 30, "the paused transmitter to say so")
        assert behind["in_sync"] is False
        wait_for(lambda: next(iter(status(c.dr.layout.receiver_socket)["volumes"].values()))
                 ["in_sync"] is False, 30, "the DR to say it is behind while shipping is paused")

        call(tx_sock, "discard", {}, timeout=30)
        discarded = wait_for(lambda: (s := status(tx_sock)).get("needs_resync") and s, 30,
                             "the discard to show in status")
        assert discarded["in_sync"] is False

        call(tx_sock, "resume", {})
        wait_for(lambda: converged(c), 90, "the resync after resume to converge byte for byte")
    finally:
        writer.stop()
