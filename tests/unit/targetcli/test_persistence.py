"""saveconfig saves the replication configuration beside LIO's (0600, atomic); the boot
restore makes it the running one, creates what is missing, regenerates the daemons' files and
starts the receiver and each volume's transmitter; idempotent; a broken saved file exits 1."""

from __future__ import annotations

import io
import json
import ssl
import stat
import tomllib
from contextlib import redirect_stderr, redirect_stdout

import pytest
from shell_fakes import (
    FakeCalls,
    FakeRTSRoot,
    FakeUnits,
    mirror_backstore,
    shell_config,
    unreachable,
)

from appliance.replication.config import receiver_config, transmitter_config
from targetcli_ext import restore
from targetcli_ext.context import ReplicationContext
from targetcli_ext.identity import ensure_certificate

RECEIVER = "appliance-receiver.service"
EXPORTER = "appliance-exporter.service"


@pytest.fixture(scope="module")
def peer_cert(tmp_path_factory):
    return ensure_certificate(tmp_path_factory.mktemp("dr-site"), "dr-site")


@pytest.fixture
def primary(make_shell, lio, tmp_path, peer_cert):
    """A primary with a peer pinned and vol1 replicated."""
    der = ssl.PEM_cert_to_DER_cert(peer_cert.cert.read_text())
    sh = make_shell(fetch=lambda address, timeout: der)
    mirror_backstore(lio, "vol1", tmp_path / "volumes")
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 "
           f"fingerprint={peer_cert.fingerprint}")
    sh.run("/replication/volumes create backstore=vol1 peer=dr")
    (tmp_path / "etc").mkdir()                  # LIO's configuration directory
    return sh


def boot(tmp_path, name: str, saved, fetch=unreachable):
    """A restore as appliance-restore.service runs it, on state directory ``name``."""
    config = shell_config(tmp_path / name)
    config = type(config)(**{**config.__dict__, "saved_config": saved})
    units, calls = FakeUnits(), FakeCalls()
    ctx = ReplicationContext(config, collect=lambda: {}, units=units, caller=calls,
                             fetch=fetch, storage_objects=lambda: FakeRTSRoot().storage_objects)
    return ctx, units, calls


def run_restore(ctx) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = restore.main(["--fetch-timeout", "1"], config=ctx.config, ctx=ctx)
    return rc, out.getvalue(), err.getvalue()


def files(state_dir) -> dict:
    return {p.relative_to(state_dir): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(state_dir.rglob("*")) if p.is_file() and p.name != ".site.lock"}


def test_saveconfig_writes_replication_json_beside_lio_0600(primary, tmp_path):
    savefile = tmp_path / "etc" / "saveconfig.json"
    out = primary.run(f"saveconfig savefile={savefile}")
    saved = tmp_path / "etc" / "replication.json"
    assert f"Replication configuration saved to {saved}" in out
    assert savefile.exists()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    doc = json.loads(saved.read_text())
    site = json.loads((primary.state_dir / "site.json").read_text())
    assert {k: v for k, v in doc.items() if k != "certificates"} == site
    assert doc["certificates"] == {"dr": (primary.state_dir / "peers" / "dr.pem").read_text()}
    assert not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]


def test_restore_on_a_blank_state_disk_brings_everything_back(primary, tmp_path, lio):
    primary.run(f"saveconfig savefile={tmp_path / 'etc' / 'saveconfig.json'}")
    saved = tmp_path / "etc" / "replication.json"
    ctx, units, calls = boot(tmp_path, "new", saved)
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    state = ctx.config.state_dir
    assert json.loads((state / "site.json").read_text()) == \
        json.loads((primary.state_dir / "site.json").read_text())
    assert (state / "peers" / "dr.pem").read_text() == \
        (primary.state_dir / "peers" / "dr.pem").read_text()
    assert (state / "site.pem").exists() and (state / "site.key").exists()
    rx = tomllib.loads((state / "receiver.toml").read_text())
    receiver_config(rx, "receiver.toml")
    assert rx["tls"]["peers"] == [str(state / "peers" / "dr.pem")]
    tx = tomllib.loads((state / "transmitter-vol1.toml").read_text())
    transmitter_config(tx, "transmitter-vol1.toml")
    assert tx["peer_identity"] == "dr-site"
    assert units.log == [("start", RECEIVER), ("start", "appliance-transmitter@vol1.service"),
                         ("start", EXPORTER)]
    assert "Restored the replication configuration from" in out
    assert "Started appliance-transmitter@vol1.service." in out


def test_restore_is_idempotent(primary, tmp_path):
    primary.run(f"saveconfig savefile={tmp_path / 'etc' / 'saveconfig.json'}")
    ctx, units, calls = boot(tmp_path, "new", tmp_path / "etc" / "replication.json")
    assert run_restore(ctx)[0] == 0
    first = files(ctx.config.state_dir)
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    assert files(ctx.config.state_dir) == first
    assert "Restored the replication configuration" not in out
    assert calls.log == [("receiver.sock", "reload", {})]      # running now: reloaded


def test_a_volume_whose_backstore_is_gone_is_said_and_not_started(primary, tmp_path, lio):
    primary.run(f"saveconfig savefile={tmp_path / 'etc' / 'saveconfig.json'}")
    lio.storage_objects[:] = [so for so in lio.storage_objects if so.name != "vol1"]
    ctx, units, calls = boot(tmp_path, "new", tmp_path / "etc" / "replication.json")
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    assert "warning: Volume vol1: backstore 'vol1' does not exist" in out
    assert "its transmitter is not started" in out
    assert units.log == [("start", RECEIVER), ("start", EXPORTER)]


def test_first_boot_makes_the_identity_and_runs_a_receiver_that_pins_nobody(tmp_path, lio):
    ctx, units, calls = boot(tmp_path, "first", tmp_path / "etc" / "replication.json")
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    state = ctx.config.state_dir
    assert (state / "site.pem").exists()
    rx = tomllib.loads((state / "receiver.toml").read_text())
    receiver_config(rx, "receiver.toml")
    assert rx["tls"]["peers"] == [] and rx["provision"] is True
    assert units.log == [("start", RECEIVER), ("start", EXPORTER)]
    assert "No saved replication configuration" in out


def test_a_broken_saved_file_exits_1_naming_it_and_runs_what_is_there(tmp_path, lio):
    saved = tmp_path / "etc" / "replication.json"
    saved.parent.mkdir()
    saved.write_text("{broken")
    ctx, units, calls = boot(tmp_path, "b", saved)
    rc, out, err = run_restore(ctx)
    assert rc == 1
    assert f"replication restore: {saved} is not JSON" in err
    assert units.log == [("start", RECEIVER), ("start", EXPORTER)]


def test_pending_certificates_are_fetched_at_boot(primary, tmp_path, peer_cert):
    primary.run(f"saveconfig savefile={tmp_path / 'etc' / 'saveconfig.json'}")
    saved = tmp_path / "etc" / "replication.json"
    doc = json.loads(saved.read_text())
    doc["certificates"] = {}            # saved before the peer was reachable
    saved.write_text(json.dumps(doc))
    der = ssl.PEM_cert_to_DER_cert(peer_cert.cert.read_text())
    ctx, units, calls = boot(tmp_path, "new", saved, fetch=lambda a, t: der)
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    assert "Fetched and pinned the certificate of peer dr" in out
    assert ("start", "appliance-transmitter@vol1.service") in units.log


def test_hand_written_files_are_kept_and_started(tmp_path, lio):
    ctx, units, calls = boot(tmp_path, "lab", tmp_path / "etc" / "replication.json")
    state = ctx.config.state_dir
    state.mkdir(parents=True)
    (state / "receiver.toml").write_text('identity = "by-hand"\n')
    (state / "transmitter-lab.toml").write_text('identity = "by-hand"\n')
    rc, out, err = run_restore(ctx)
    assert rc == 0, err
    assert (state / "receiver.toml").read_text() == 'identity = "by-hand"\n'
    assert "receiver.toml was written by hand: kept as it is" in out
    assert units.log == [("start", RECEIVER), ("start", "appliance-transmitter@lab.service"),
                         ("start", EXPORTER)]


def test_a_format_1_site_file_loads(tmp_path):
    from targetcli_ext.model import SiteStore
    (tmp_path / "site.json").write_text(
        '{"version": 1, "identity": "site-a", "listen": "0.0.0.0:7700", "peers": {"dr": '
        '{"address": "192.0.2.2:7700", "fingerprint": "SHA256:' + "AB" * 32 + '"}}}')
    store = SiteStore(tmp_path)
    site = store.load()
    assert site.identity == "site-a" and list(site.peers) == ["dr"] and site.volumes == {}
    store.ensure_identity()
    assert json.loads((tmp_path / "site.json").read_text())["version"] == 1   # untouched
