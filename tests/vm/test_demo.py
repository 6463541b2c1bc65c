"""The README's main command, in its verifying mode: both appliances boot, the replicated
user:mirror disk exists and a host (libiscsi on this machine) sees its configured size."""

from __future__ import annotations

import subprocess
import sys

from vmlab.image import repo_root


def test_demo_check(image, vm_logs_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vmlab.demo", "--check", "--size", "512M", "--port", "0",
         "--workdir", str(tmp_path / "demo")],
        cwd=repo_root(), capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output
    assert "host view through libiscsi: 536870912 bytes, as configured" in output
    assert "iscsiadm -m node -T iqn.2026-11.org.drappliance:primary.disk0" in output
    assert "-m vmlab.console" in output and "targetcli" in output
