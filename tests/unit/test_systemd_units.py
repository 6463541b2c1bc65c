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
EXPORTER_UNIT = "appliance-exporter.service"
# /proc/devices block groups a DR mirror may live on: LVM and dm-crypt, virtio, SCSI/SATA,
# NVMe and other extended-major disks, md RAID, loop.
BLOCK_GROUPS = ["device-mapper", "virtblk", "sd", "blkext", "md", "loop"]
PSEUDO = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}


def service_settings(name: str, want: str = "[Service]") -> dict[str, list[str]]:
    """[Service] (or ``want``) keys -> values in order; an empty assignment resets a list, as
    in systemd."""
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
        if section == want:
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
def test_systemd_reads_every_setting_of_the_replication_and_exporter_units(tmp_path):
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
                          str(tmp_path / "appliance-transmitter@vol1.service"),
                          str(tmp_path / EXPORTER_UNIT)],
                         capture_output=True, text=True,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    names = ("appliance-receiver.service:", "appliance-transmitter@.service:",
             "appliance-transmitter@vol1.service:", f"{EXPORTER_UNIT}:")
    unread = [line for line in out.stderr.splitlines()
              if line.removeprefix(f"{tmp_path}/").startswith(names)]
    assert unread == []


@pytest.mark.parametrize("unit", [*REPLICATION_UNITS, "appliance-handler.service",
                                  EXPORTER_UNIT])
def test_a_configuration_error_is_not_restarted_forever(unit):
    """The daemons exit 2 on a configuration error (appliance/daemon_entry.py): restarting
    every few seconds cannot fix it, and would bury the one line that says what to fix."""
    settings = service_settings(unit)
    assert last(settings, "Restart") == "always"
    assert "2" in last(settings, "RestartPreventExitStatus").split()


# --- the exporter -------------------------------------------------------------------------


def test_the_exporter_runs_the_file_the_shell_writes_where_the_exporter_keeps_its_state():
    """The paths of the unit are the shell's (targetcli_ext Layout) and the exporter's own
    defaults (appliance/exporter/config.py): a unit and a renderer that disagree would run an
    exporter on a file nobody writes, or one whose alerts.json it may not write."""
    from appliance.exporter.config import ExporterConfig
    from targetcli_ext.config import ShellConfig
    layout = ShellConfig().layout
    s = service_settings(EXPORTER_UNIT)
    unit = service_settings(EXPORTER_UNIT, "[Unit]")
    assert last(s, "ExecStart").split() == ["/opt/appliance/bin/appliance-exporter", "--config",
                                            str(layout.exporter_toml)]
    assert last(unit, "ConditionPathExists") == str(layout.exporter_toml)
    defaults = ExporterConfig()
    assert Path("/var/lib") / last(s, "StateDirectory") == layout.exporter_dir == \
        defaults.state_dir
    assert Path("/run") / last(s, "RuntimeDirectory") == layout.run_dir == defaults.run_dir
    assert last(s, "RuntimeDirectoryPreserve") == "yes"     # the daemons' sockets live there
    assert "appliance-state.service" in last(unit, "Requires")


def test_the_exporter_is_enabled_on_the_image():
    """image/build.py enables every unit with an [Install] section (templates aside)."""
    assert service_settings(EXPORTER_UNIT, "[Install]") == {"WantedBy": ["multi-user.target"]}


def test_the_exporter_is_confined_to_sockets_and_its_state():
    s = service_settings(EXPORTER_UNIT)
    assert "ReadWritePaths" not in s            # writable: its runtime and state directories
    assert last(s, "StateDirectoryMode") == "0700"
    assert last(s, "PrivateDevices") == "yes"
    assert last(s, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert set(last(s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["SystemCallFilter"] == ["@system-service"]
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectKernelModules", "yes"), ("ProtectKernelTunables", "yes"),
                       ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes"),
                       ("MemoryDenyWriteExecute", "yes"), ("Restart", "always")]:
        assert last(s, key) == value, key
