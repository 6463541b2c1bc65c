"""The README's test commands stand alone on a fresh machine: every tier that needs Debian
packages (the integration tier's D-Bus/netns/TLS tests, the VM tier's qemu) installs them
before its first test; the unit tier needs only the venv."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "bash .ci/install-system-packages"


def planned(target: str) -> list[str]:
    """The commands ``make <target>`` would run, in order (``make -n`` runs none)."""
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["test", "test-integration", "test-vm", "demo"])
def test_the_target_installs_the_system_packages_before_it_runs(target):
    commands = planned(target)
    assert INSTALL in commands, commands
    runs = [i for i, c in enumerate(commands) if "pytest" in c or "vmlab.demo" in c]
    assert runs and commands.index(INSTALL) < runs[0], commands


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_fast_tier_needs_only_the_venv():
    assert INSTALL not in planned("test-fast")
