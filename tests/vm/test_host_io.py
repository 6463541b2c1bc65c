"""A host VM (open-iscsi) on the private network uses a user:mirror disk of the primary:
filesystem, checksums, the mirror's bytes, and a reboot of the primary under host I/O."""

from __future__ import annotations

import os
import time

import pytest

from vmlab import appliance as ap
from vmlab.machine import MachineSpec

PRIMARY = "192.168.77.11"
# APPLIANCE_VM_BACKSTORE=fileio runs the same tests on LIO's kernel backstore (the reference).
LUN = ap.LunSpec("data0", size="256M", journal_size="64M",
                 backstore=os.environ.get("APPLIANCE_VM_BACKSTORE", "user:mirror"))
LUN_BYTES = 256 * 2**20
MNT = "/mnt/data"


@pytest.fixture(scope="module")
def machines(lab):
    primary, host = lab.boot(
        MachineSpec("primary", private_address=f"{PRIMARY}/24", forwards={ap.ISCSI_PORT: 0}),
        ap.host_spec("host", "192.168.77.50/24", memory_mib=768),
    )
    return primary, host


@pytest.fixture(scope="module")
def disk(machines):
    """The LUN created on the primary through targetcli, logged in from the host."""
    primary, host = machines
    iqn = ap.create_lun(primary, LUN)
    device = ap.host_login(host, PRIMARY, iqn)
    return iqn, device


def test_host_formats_writes_and_reads_back(machines, disk):
    primary, host = machines
    iqn, device = disk
    assert int(host.run(["blockdev", "--getsize64", device]).text) == LUN_BYTES
    # no lazy initialisation: it would keep writing in the background after mount
    host.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device],
             timeout=300)
    host.run(f"mkdir -p {MNT} && mount {device} {MNT}")
    host.run(f"for i in 1 2 3 4; do head -c 8M /dev/urandom > {MNT}/file$i; done; "
             f"cd {MNT} && sha256sum file* > /root/sums && sync", timeout=180)
    # Read back through the target, not the host's page cache.
    host.run(f"umount {MNT} && echo 3 > /proc/sys/vm/drop_caches && mount {device} {MNT}")
    host.run(f"cd {MNT} && sha256sum -c /root/sums", timeout=180)
    # The appliance's local mirror holds exactly the bytes the host sees (unmounted, so
    # nothing changes in between; O_DIRECT, so the host's cache does not answer).
    host.run(f"umount {MNT}")
    on_host = host.run(f"dd if={device} iflag=direct bs=1M status=none | sha256sum",
                       timeout=300).text.split()[0]
    on_mirror = primary.run(["sha256sum", f"{ap.STATE_DIR}/volumes/{LUN.name}.img"], timeout=300).text.split()[0]
    assert on_host == on_mirror


WRITER = f"""
i=0
while [ ! -e /root/stop-writer ]; do
    if dd if=/dev/urandom of={MNT}/during.$i bs=1M count=2 conv=fsync 2>>/root/writer.err; then
        (cd {MNT} && sha256sum during.$i) >> /root/flushed.sums
    fi
    i=$((i+1))
done
"""


def test_reboot_primary_during_host_io(machines, disk):
    """Data flushed before (and during) the reboot is intact; the session recovers; the
    configuration comes back with no manual step."""
    primary, host = machines
    iqn, device = disk
    host.run(f"mountpoint -q {MNT} || mount {device} {MNT}")
    host.run(f"head -c 16M /dev/urandom > {MNT}/before && sync && cd {MNT} && sha256sum before > /root/before.sums",
             timeout=120)
    host.write_file("/root/writer.sh", WRITER.encode(), mode="0755")
    host.run("rm -f /root/stop-writer /root/flushed.sums; "
             "nohup /root/writer.sh >/dev/null 2>&1 </dev/null & echo $! > /root/writer.pid")
    time.sleep(3)  # let the writer get going, so the reboot lands in the middle of its I/O
    assert host.run("cat /root/flushed.sums 2>/dev/null | wc -l").text.strip() != "0"

    seconds = primary.reboot()
    print(f"\n[vm] primary rebooted in {seconds:.1f} s")
    fstype = primary.run(["findmnt", "-n", "-o", "FSTYPE", "/var/lib/appliance"], check=False).text.strip()
    assert fstype == "ext4", f"state disk not mounted after the reboot (found {fstype!r})"
    listing = ap.targetcli(primary, "ls", f"/iscsi/{iqn}/tpg1/luns").text
    assert LUN.name in listing, f"LUN not restored after reboot:\n{listing}"

    # The host's session recovers by itself: a new flushed write completes.
    host.run(f"dd if=/dev/zero of={MNT}/after bs=1M count=1 conv=fsync", timeout=300)
    host.run("touch /root/stop-writer; pid=$(cat /root/writer.pid); for i in $(seq 1 600); do "
             "kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; echo 'writer did not stop' >&2; exit 1",
             timeout=120)
    flushed = int(host.run("wc -l < /root/flushed.sums").text)
    host.run(f"umount {MNT} && echo 3 > /proc/sys/vm/drop_caches && mount {device} {MNT}", timeout=120)
    host.run(f"cd {MNT} && sha256sum -c /root/before.sums && sha256sum -c /root/flushed.sums", timeout=300)
    assert "rw" in host.run(f"findmnt -n -o OPTIONS {MNT}").text.split(",")
    print(f"[vm] {flushed} files flushed around the reboot verified")
