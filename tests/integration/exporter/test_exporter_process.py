"""appliance-exporter as a process, as its unit runs it: it answers on the configured address
with no daemon around, a second one on the same port fails with one line and exit code 1, and
SIGTERM stops it cleanly (exit 0, control socket removed)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from repl_harness import REPO, free_port, status, wait_for

pytestmark = pytest.mark.integration


def test_the_exporter_process_serves_refuses_a_taken_port_and_stops_on_sigterm(tmp_path):
    port = free_port()
    conf = tmp_path / "exporter.toml"
    conf.write_text(f'identity = "site-a"\naddress = "127.0.0.1"\nport = {port}\n'
                    f'interval = 0.5\nstate_dir = "{tmp_path / "state"}"\n'
                    f'run_dir = "{tmp_path / "run"}"\n'
                    f'handler_socket = "{tmp_path / "handler.sock"}"\n')
    argv = [sys.executable, "-m", "appliance.exporter.daemon", "--config", str(conf)]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        sock = tmp_path / "run" / "exporter.sock"
        wait_for(lambda: proc.poll() is None and status(sock)["evaluations"] >= 1, 30,
                 "the exporter's first evaluation")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            names = {f.name for f in text_string_to_metric_families(resp.read().decode())}
        assert names == {"appliance_build_info", "appliance_exporter_alerts_active"}
        assert status(sock)["listen"] == f"127.0.0.1:{port}"

        second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"appliance-exporter: cannot listen on 127.0.0.1:{port}: the port is in use")
        assert status(sock)["role"] == "exporter"          # the first one is untouched

        proc.terminate()
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
