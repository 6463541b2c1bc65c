"""appliance-targetcli as an admin runs it: one command line and exit, --version, errors."""

from __future__ import annotations

import io
import os
import sys

import pytest
from configshell_fb import console

from targetcli_ext.config import ShellConfig
from targetcli_ext.daemons import DaemonSockets
from targetcli_ext.main import main


def config(tmp_path) -> ShellConfig:
    return ShellConfig(state_dir=tmp_path / "replication",
                       sockets=DaemonSockets(tmp_path / "handler.sock", tmp_path / "run"),
                       lock_file=tmp_path / "targetcli.lock", prefs_dir=str(tmp_path / "prefs"))


def run(tmp_path, monkeypatch, *argv: str) -> tuple[int, str, str]:
    """main() in-process (the venv has no PyGObject for a subprocess), its console writing
    to a buffer: configshell's Console is a Borg whose every instance resets the streams."""
    out, err = io.StringIO(), io.StringIO()
    real_init = console.Console.__init__

    def to_buffer(self, *a, **k):
        real_init(self, *a, **k)
        self._stdout = self._stderr = out

    monkeypatch.setattr(console.Console, "__init__", to_buffer)
    console.Console()
    try:
        rc = main(list(argv), config(tmp_path), err=err)
    finally:
        monkeypatch.undo()
        console.Console()._stdout, console.Console()._stderr = sys.stdout, sys.stderr
    return rc, out.getvalue(), err.getvalue()


def test_one_command_line_runs_and_exits(lio, tmp_path, monkeypatch):
    rc, out, err = run(tmp_path, monkeypatch, "/replication", "status")
    assert rc == 0, err
    assert out.endswith("no replicated volumes: no handler, transmitter or receiver answers "
                        "on this appliance\n")


def test_a_refused_command_exits_1_with_the_reason_on_stderr(lio, tmp_path, monkeypatch):
    if os.getuid() != 0:
        pytest.skip("create needs root, as stock targetcli's commands do")
    rc, out, err = run(tmp_path, monkeypatch, "/replication/peers", "create", "name=dr",
                       "address=192.0.2.2", "fingerprint=SHA256:" + "ab" * 32)
    assert rc == 1
    assert "has no port" in err and "nothing changed" in err
    assert not (tmp_path / "replication" / "site.json").exists()


def test_version_names_both(tmp_path, monkeypatch):
    rc, out, err = run(tmp_path, monkeypatch, "--version")
    assert rc == 0 and "targetcli version 2.1." in err and "appliance" in err
