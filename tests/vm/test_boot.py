"""One appliance booted from the image: banner, modules, state disk, handler, a LIO LUN."""

from __future__ import annotations

import json

import pytest

from vmlab import appliance as ap
from vmlab.machine import MachineSpec

ADDRESS = "192.168.77.11"


@pytest.fixture(scope="module")
def primary(lab):
    (machine,) = lab.boot(MachineSpec("primary", private_address=f"{ADDRESS}/24",
                                      forwards={ap.ISCSI_PORT: 0}))
    print(f"\n[vm] primary booted in {machine.boot_seconds:.1f} s")
    return machine


def test_console_shows_version_copyright_and_address(primary, image):
    text = primary.wait_console("iSCSI portal:", timeout=60)
    assert f"DR appliance {image.version}" in text
    assert "Copyright (c)" in text
    assert f"eth1 {ADDRESS}/24" in text
    assert "eth0 10.0.2.15/24" in text


def test_system_layout(primary):
    """Read-only system, state disk mounted and bound into place, target modules loaded."""
    mounts = json.loads(primary.run(["findmnt", "-J", "-o", "TARGET,SOURCE,OPTIONS"]).text)
    by_target = {}

    def walk(nodes):
        for node in nodes:
            by_target[node["target"]] = node
            walk(node.get("children", []))

    walk(mounts["filesystems"])
    assert by_target["/"]["options"].startswith("ro,")
    state_options = by_target["/var/lib/appliance"]["options"].split(",")
    # The mirror's mtime guards promotion markers (volume/promotion_base.py): no lazytime.
    assert "noatime" in state_options and "lazytime" not in state_options, state_options
    for path in ("/var/lib/appliance", "/etc/rtslib-fb-target", "/root/.targetcli"):
        assert path in by_target and by_target[path]["options"].startswith("rw,"), path
    modules = primary.run(["cat", "/proc/modules"]).text
    for module in ("target_core_mod", "target_core_user", "iscsi_target_mod"):
        assert f"{module} " in modules
    assert primary.run(["test", "-d", "/etc/rtslib-fb-target/pr"], check=False).rc == 0


def test_handler_registered_in_targetcli(primary):
    """Our handler owns org.kernel.TCMUService1, so stock targetcli offers user:mirror."""
    state = primary.run(["systemctl", "is-active", "appliance-handler.service"], check=False).text.strip()
    listing = ap.targetcli(primary, "ls", "/backstores").text
    journal = primary.run(["journalctl", "-b", "-u", "appliance-handler", "--no-pager", "-n", "30"],
                          check=False).text
    assert "user:mirror" in listing, (
        f"targetcli shows no user:mirror (appliance-handler is {state}):\n{listing}\n{journal}")
    assert state == "active"


def test_fileio_lun_reachable_with_libiscsi(primary):
    """The lab path itself (forwarded portal, LIO, libiscsi on this machine) on LIO's kernel
    fileio backstore, independent of our handler."""
    iqn = ap.create_lun(primary, ap.LunSpec("ref0", size="96M", backstore="fileio"))
    url = ap.libiscsi_url(primary.ports[ap.ISCSI_PORT], iqn)
    assert "Product:ref0" in ap.libiscsi("iscsi-inq", url)
    assert "Total size:100663296" in ap.libiscsi("iscsi-readcapacity16", url)


# --------------------------------------------------------------------------- bad configuration


def assert_still_serving(primary, iqn: str) -> None:
    """The appliance keeps running: no unit failed, LIO still serves the reference LUN."""
    assert primary.run(["systemctl", "is-active", "rtslib-fb-targetctl.service"], check=False).rc == 0
    ap.wait_portal(primary.ports[ap.ISCSI_PORT], iqn, timeout=30)


@pytest.fixture(scope="module")
def reference_lun(primary):
    return ap.create_lun(primary, ap.LunSpec("ref1", size="32M", backstore="fileio"))


def require_handler(primary) -> None:
    """Refusals of user:mirror settings only mean something when the handler is there
    (otherwise targetcli refuses every user:mirror command for lack of the backstore)."""
    listing = ap.targetcli(primary, "ls", "/backstores").text
    assert "user:mirror" in listing, f"appliance-handler is not registered:\n{listing}"


def test_lun_of_missing_disk_refused(primary, reference_lun):
    result = ap.targetcli(primary, f"/iscsi/{reference_lun}/tpg1/luns", "create",
                          "/backstores/fileio/no-such-disk", check=False)
    message = (result.stdout + result.stderr).decode()
    assert result.rc != 0 or result.stderr.strip(), message
    assert "storage object or path not valid" in message, message  # targetcli's own words
    assert "no-such-disk" not in ap.targetcli(primary, "ls", f"/iscsi/{reference_lun}/tpg1/luns").text
    assert_still_serving(primary, reference_lun)


def test_invalid_disk_configuration_refused(primary, reference_lun):
    """A user:mirror disk whose journal is missing from its configuration: the handler's
    check (D-Bus CheckConfig, then the kernel's ADDED_DEVICE) refuses it and says why."""
    require_handler(primary)
    result = ap.targetcli(primary, "/backstores/user:mirror", "create", "name=nojournal",
                          "size=64M", "cfgstring=mirror=/var/lib/appliance/volumes/nojournal.img",
                          check=False)
    message = (result.stdout + result.stderr).decode()
    assert result.rc != 0 or result.stderr.strip(), f"accepted a disk without a journal: {message}"
    assert "journal" in message, message
    assert "nojournal" not in ap.targetcli(primary, "ls", "/backstores").text
    assert_still_serving(primary, reference_lun)


def test_size_that_does_not_fit_refused(primary, reference_lun):
    """A 1 TiB disk on an 8 GiB state disk is refused when it is created, not when the
    host's writes start failing."""
    require_handler(primary)
    spec = ap.LunSpec("huge", size="1T")
    result = ap.targetcli(primary, "/backstores/user:mirror", "create", f"name={spec.name}",
                          f"size={spec.size}", f"cfgstring={spec.cfgstring()}", check=False)
    message = (result.stdout + result.stderr).decode()
    assert result.rc != 0 or result.stderr.strip(), f"accepted a 1 TiB disk: {message}"
    assert "huge" not in ap.targetcli(primary, "ls", "/backstores").text
    assert_still_serving(primary, reference_lun)


def test_wrong_peer_address_refused(primary, reference_lun):
    """A transmitter configuration whose peer is not host:port is refused with a message
    naming the setting; nothing else stops."""
    config = (
        'identity = "primary"\n'
        'peer = "192.168.77.12"\n'           # no port
        'peer_identity = "dr"\n'
        'journal = "/var/lib/appliance/journals/ref.jnl"\n'
        'volume_uuid = "6f1c2d0e-8a4b-4c1e-9d2a-0b1c2d3e4f50"\n'
        "size_bytes = 33554432\nblock_size = 512\ngeneration = 1\n"
        'control_socket = "/run/appliance/transmitter-bad.sock"\n'
        "insecure = true\n"
    )
    primary.write_file("/var/lib/appliance/replication/transmitter-bad.toml", config.encode())
    try:
        result = primary.run(["appliance-transmitter", "--config",
                              "/var/lib/appliance/replication/transmitter-bad.toml"],
                             timeout=60, check=False)
    finally:
        primary.run(["rm", "-f", "/var/lib/appliance/replication/transmitter-bad.toml"])
    message = (result.stdout + result.stderr).decode()
    assert result.rc != 0 and not result.timed_out, message
    assert "192.168.77.12" in message and "host:port" in message, message
    assert "Traceback" not in message, message
    assert_still_serving(primary, reference_lun)
