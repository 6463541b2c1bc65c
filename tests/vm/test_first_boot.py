"""First boot with a state disk that is formatted late: the appliance waits for it.

The volumes' mirrors and journals live on the state disk, so a boot that gave up on it and
fell back to tmpfs would keep host data in RAM. Here the udev-started formatter is masked, so
the blank disk stays blank past fstab's device timeout (which a loaded TCG boot also outlasts
with the formatter running: seen in the lab); the state service must wait, not fall
back, and mount the disk as soon as it carries its label (formatted here by hand).
"""

from __future__ import annotations

import time

import pytest

from vmlab.machine import MachineSpec


def unit_state(machine, unit: str) -> str:
    return machine.run(["systemctl", "is-active", unit], check=False).text.strip()


@pytest.fixture(scope="module")
def late(lab):
    machine = lab.start(MachineSpec(
        "late-state", extra_cmdline="systemd.mask=appliance-state-format@.service"))
    machine.connect_agent().wait_ready(600, on_wait=machine._check_alive)
    return machine


def test_state_service_waits_for_a_blank_state_disk_instead_of_tmpfs(late):
    text = late.wait_console("is not formatted yet (first boot)", timeout=300)
    assert "survive a reboot" not in text, "fell back to tmpfs although a state disk exists"
    assert late.run(["mountpoint", "-q", "/var/lib/appliance"], check=False).rc != 0
    assert unit_state(late, "appliance-state.service") == "activating"
    assert unit_state(late, "appliance-handler.service") != "active"

    disk = late.run("grep -lx appliance-state /sys/block/*/serial").text.split("/")[3]
    late.run(["mkfs.ext4", "-q", "-L", "appliance-state", f"/dev/{disk}"], timeout=120)
    deadline = time.monotonic() + 120
    while unit_state(late, "appliance-state.service") != "active":
        assert time.monotonic() < deadline, (
            "appliance-state.service did not finish within 120 s of the disk being formatted:\n"
            + late.console_tail())
        time.sleep(1)
    source = late.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/var/lib/appliance"]).text.split()
    assert source == [f"/dev/{disk}", "ext4"], source
    late.run(["systemctl", "is-system-running", "--wait"], timeout=300, check=False)
    assert unit_state(late, "appliance-handler.service") == "active", late.console_tail()
    assert "survive a reboot" not in late.console_text()
