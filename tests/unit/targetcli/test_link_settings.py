"""'/replication set link kernel_tls=': the link's TLS in the kernel, for the whole site. The
setting reaches every daemon's [tls] as its own parser reads it (receiver.toml and each
transmitter file), the running transmitters are restarted to connect with it, a bad value is
refused naming the parameter with nothing changed, and 'get link' shows what is saved."""

from __future__ import annotations

import json
import tomllib

import pytest
from configshell_fb import ExecutionError
from shell_fakes import mirror_backstore, paired_with_dr

from appliance.replication.config import receiver_config, transmitter_config


@pytest.fixture
def sh(make_shell, lio, tmp_path, dr_certificate):
    """A site with a peer, two replicated volumes (vol1's transmitter running) and a
    receiver.toml written by the shell."""
    shell = paired_with_dr(make_shell, dr_certificate)
    for name in ("vol1", "vol2"):
        mirror_backstore(lio, name, tmp_path / "volumes")
    shell.root.refresh()
    for name in ("vol1", "vol2"):
        shell.run(f"/replication/volumes create backstore={name} peer=dr")
    shell.units.active.discard("appliance-transmitter@vol2.service")
    shell.units.log.clear()
    return shell


def tls_tables(sh) -> dict[str, dict]:
    """Each daemon file's [tls], after its own parser took the whole file."""
    tables = {}
    for name in ("receiver", "transmitter-vol1", "transmitter-vol2"):
        path = sh.state_dir / f"{name}.toml"
        doc = tomllib.loads(path.read_text())
        parse = receiver_config if name == "receiver" else transmitter_config
        assert parse(doc, str(path)).tls.kernel is doc["tls"].get("kernel", False)
        tables[name] = doc["tls"]
    return tables


def test_kernel_tls_reaches_every_daemon_and_restarts_the_running_transmitters(sh):
    assert not any("kernel" in t for t in tls_tables(sh).values())
    out = sh.run("/replication set link kernel_tls=true")
    assert "Parameter kernel_tls is now 'true'." in out
    assert "encrypted in the kernel (kTLS, TLS 1.2 with ECDHE and AES-GCM)" in out
    assert all(t["kernel"] is True for t in tls_tables(sh).values())
    assert json.loads((sh.state_dir / "site.json").read_text())["kernel_tls"] is True
    # Only the running transmitter is restarted; the stopped one reads its file at start.
    assert sh.units.log == [("restart", "appliance-transmitter@vol1.service")]
    assert "Restarted the transmitters of vol1." in out
    assert sh.run("/replication get link kernel_tls").strip() == "kernel_tls=true"

    sh.units.log.clear()
    out = sh.run("/replication set link kernel_tls=false")
    assert "encrypted in user space" in out
    assert not any("kernel" in t for t in tls_tables(sh).values())
    assert "kernel_tls" not in json.loads((sh.state_dir / "site.json").read_text())
    assert sh.units.log == [("restart", "appliance-transmitter@vol1.service")]


def test_a_bad_value_is_refused_naming_the_parameter_and_changes_nothing(sh):
    before = {p: p.read_bytes() for p in sh.state_dir.glob("*.toml")}
    site = (sh.state_dir / "site.json").read_bytes()
    with pytest.raises(ExecutionError) as err:
        sh.run("/replication set link kernel_tls=maybe")
    assert "kernel_tls='maybe' is neither true nor false: use kernel_tls=true or " \
           "kernel_tls=false; nothing changed" in str(err.value)
    with pytest.raises(ExecutionError) as err:
        sh.run("/replication set link kernel=true")
    assert "no parameter kernel in group 'link' (parameters: kernel_tls)" in str(err.value)
    assert {p: p.read_bytes() for p in sh.state_dir.glob("*.toml")} == before
    assert (sh.state_dir / "site.json").read_bytes() == site
    assert sh.units.log == []
