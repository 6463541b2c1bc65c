"""The replication units' sandbox lets them open what their configs may name: a mirror,
journal or bitmap on a block device (an LVM volume, a virtio or SCSI disk), while the rest of
the hardening stays. The rules are systemd's (systemd.exec(5) PrivateDevices=,
systemd.resource-control(5) DevicePolicy=/DeviceAllow=); ``systemd-analyze verify``, where
installed, checks that systemd reads every setting as written."""

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
REPLICATION_UNITS = ["appliance-receiver.service", "appliance-transmitter@.service"]
# /proc/devices block groups a DR mirror may live on: LVM and dm-crypt, virtio, SCSI/SATA,
# NVMe and other extended-major disks, md RAID, loop.
BLOCK_GROUPS = ["device-mapper", "virtblk", "sd", "blkext", "md", "loop"]
PSEUDO = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}


def service_settings(name: str) -> dict[str, list[str]]:
    """[Service] keys -> values in order; an empty assignment resets a list, as in systemd."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            settings[key] = [] if value == "" else [*settings.get(key, []), value]
    return settings


def last(settings: dict[str, list[str]], key: str, default: str = "") -> str:
    return settings.get(key, [default])[-1]


def block_device_allowed(settings: dict[str, list[str]], group: str) -> bool:
    """Whether a process of the unit can open a block device of this /proc/devices group for
    reading and writing."""
    if last(settings, "PrivateDevices", "no") in ("yes", "true", "1"):
        return False          # a private /dev holds pseudo devices only
    allow = settings.get("DeviceAllow", [])
    if last(settings, "DevicePolicy", "auto") == "auto" and not allow:
        return True           # no device cgroup rules at all
    # closed and strict: pseudo devices aside, only what DeviceAllow lists
    for entry in allow:
        spec, _, rights = entry.partition(" ")
        group_pattern = spec.removeprefix("block-")
        if (spec.startswith("block-") and {"r", "w"} <= set(rights)
                and fnmatch.fnmatchcase(group, group_pattern)):
            return True
    return False


@pytest.mark.parametrize("unit", REPLICATION_UNITS)
@pytest.mark.parametrize("group", BLOCK_GROUPS)
def test_a_block_device_mirror_can_be_opened_under_the_unit(unit, group):
    assert block_device_allowed(service_settings(unit), group)


def test_the_model_refuses_what_systemd_refuses():
    """The check above can fail: a private /dev or a policy without block devices."""
    assert not block_device_allowed({"PrivateDevices": ["yes"]}, "device-mapper")
    assert not block_device_allowed({"DevicePolicy": ["closed"]}, "device-mapper")
    assert not block_device_allowed({"DeviceAllow": ["block-loop rw"]}, "device-mapper")
    assert not block_device_allowed({"DeviceAllow": ["block-* r"]}, "device-mapper")


@pytest.mark.parametrize("unit", REPLICATION_UNITS)
def test_the_rest_of_the_hardening_stays(unit):
    s = service_settings(unit)
    assert last(s, "DevicePolicy") == "closed"            # no character devices but pseudo ones
    assert not [a for a in s.get("DeviceAllow", []) if a.startswith(("char-", "/dev/"))
                and a.split()[0] not in PSEUDO]
    assert set(last(s, "CapabilityBoundingSet").removeprefix("~").split()) >= \
        {"CAP_MKNOD", "CAP_SYS_RAWIO"}
    assert last(s, "CapabilityBoundingSet").startswith("~")
    assert "~@raw-io" in s.get("SystemCallFilter", [])
    for key, value in [("ProtectSystem", "strict"), ("ReadWritePaths", "/var/lib/appliance"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("ProtectKernelModules", "yes"),
                       ("ProtectKernelTunables", "yes"), ("ProtectControlGroups", "yes"),
                       ("RestrictNamespaces", "yes"), ("MemoryDenyWriteExecute", "yes"),
                       ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")]:
        assert last(s, key) == value, key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_reads_every_setting_of_the_replication_units(tmp_path):
    """A setting systemd cannot read (an unknown key, a device pattern or syscall group it does
    not know) is only a warning naming the file and line, so the test asserts there is none;
    what this machine's systemd lacks as dependencies is not this test's business."""
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".target"):    # dependencies resolve; no binaries here
            text = re.sub(r"^(ExecStart|ExecStartPre)=.*$", r"\1=/bin/true",
                          unit.read_text(), flags=re.MULTILINE)
            (tmp_path / unit.name).write_text(text)
    (tmp_path / "appliance-transmitter@vol1.service").write_text(
        (tmp_path / "appliance-transmitter@.service").read_text())
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "appliance-receiver.service"),
                          str(tmp_path / "appliance-transmitter@vol1.service")],
                         capture_output=True, text=True,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    names = ("appliance-receiver.service:", "appliance-transmitter@.service:",
             "appliance-transmitter@vol1.service:")
    unread = [line for line in out.stderr.splitlines()
              if line.removeprefix(f"{tmp_path}/").startswith(names)]
    assert unread == []


@pytest.mark.parametrize("unit", [*REPLICATION_UNITS, "appliance-handler.service"])
def test_a_configuration_error_is_not_restarted_forever(unit):
    """The daemons exit 2 on a configuration error (appliance/daemon_entry.py): restarting
    every few seconds cannot fix it, and would bury the one line that says what to fix."""
    settings = service_settings(unit)
    assert last(settings, "Restart") == "always"
    assert "2" in last(settings, "RestartPreventExitStatus").split()
