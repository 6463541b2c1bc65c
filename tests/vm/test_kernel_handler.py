"""Real-kernel tier of the TCMU handler: one appliance VM (Debian's 6.1 kernel, LIO,
target_core_user, iscsi_target_mod) running ``appliance-handler`` as its systemd unit.

Stock targetcli creates the ``user:mirror`` backstore (and refuses a wrong config string with
our CheckConfig message), an iSCSI target with a LUN and an explicit ACL; open-iscsi in the
same VM logs in over 127.0.0.1. The host side then formats, writes, remounts and compares
checksums, the local mirror file is compared with what the host wrote, and the handler is
restarted (``systemctl restart``) and killed (SIGKILL) while fio writes with verification:
the host's I/O keeps going without an error and the data stays intact.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from appliance import compiled
from vmlab import appliance as ap
from vmlab.machine import Machine, MachineSpec, kvm_usable

LUN = ap.LunSpec("khdisk", size="128M", journal_size="32M")
LUN_BYTES = 128 * 2**20
INITIATOR = f"{ap.IQN_PREFIX}:host.loopback"
PORTAL = "127.0.0.1"
MNT = "/mnt/khdisk"
MIRROR = f"{ap.STATE_DIR}/volumes/{LUN.name}.img"
HANDLER_UNIT = "appliance-handler.service"
FIO_MAX_SECONDS = 600          # a cap only: the test stops fio (SIGINT) once I/O resumed


@pytest.fixture(scope="module")
def appliance(lab) -> Machine:
    """The appliance VM; its root is writable only so that open-iscsi can keep its node
    database in /etc/iscsi (the initiator lives in the same VM here)."""
    (machine,) = lab.boot(MachineSpec("khandler", memory_mib=1024, writable_root=True,
                                      forwards={ap.ISCSI_PORT: 0}))
    print(f"\n[vm] appliance booted in {machine.boot_seconds:.1f} s")
    return machine


def handler_pid(machine: Machine) -> int:
    return int(machine.run(["systemctl", "show", "-P", "MainPID", HANDLER_UNIT]).text)


def wait_handler_active(machine: Machine, old_pid: int, timeout: float = 120.0) -> float:
    """Wait until the unit is active again with a new main process (Type=dbus: active means
    the daemon adopted its devices and owns org.kernel.TCMUService1). Returns seconds."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        state = machine.run(["systemctl", "is-active", HANDLER_UNIT], check=False).text.strip()
        if state == "active" and handler_pid(machine) not in (0, old_pid):
            return time.monotonic() - t0
        time.sleep(0.5)
    journal = machine.run(["journalctl", "-u", HANDLER_UNIT, "--no-pager", "-n", "40"], check=False).text
    raise AssertionError(f"{HANDLER_UNIT} not active again with a new process within {timeout:.0f} s:\n{journal}")


def test_handler_unit_registers_user_mirror(appliance):
    assert appliance.run(["systemctl", "is-active", HANDLER_UNIT], check=False).text.strip() == "active"
    listing = ap.targetcli(appliance, "ls", "/backstores").text
    assert "user:mirror" in listing, listing


def test_handler_checksums_with_the_faster_crc32c_of_this_cpu(appliance):
    # Under TCG the crc32 instruction is emulated bit by bit, 3x slower than the library's
    # table code (docs/tcmu.md); under KVM it is the real instruction.
    expected = "hardware" if kvm_usable() else "software"
    ready = appliance.run(f"journalctl -u {HANDLER_UNIT} -o cat --no-pager | "
                          "grep -E 'ready .* after exec' | tail -1", check=False).text
    assert f"(CRC32C: {expected})" in ready, ready


def test_handler_runs_the_compiled_hot_path_the_image_built(appliance):
    # The image compiles the hot modules against its own Python (docs/compiled.md): every
    # one of them must have been imported compiled, none left interpreted.
    ready = appliance.run(f"journalctl -u {HANDLER_UNIT} -o cat --no-pager | "
                          "grep -E 'ready .* after exec' | tail -1", check=False).text
    assert f"hot path compiled ({len(compiled.HOT_MODULES)} modules)" in ready, ready


@pytest.mark.parametrize(("cfgstring", "message"), [
    (f"mirror=relative.img;journal={ap.STATE_DIR}/journals/bad.jnl", "must be an absolute path"),
    (f"mirror={ap.STATE_DIR}/volumes/bad.img;journal={ap.STATE_DIR}/journals/bad.jnl;journal_size=12345",
     "journal_size"),
    (f"mirror={ap.STATE_DIR}/volumes/bad.img;colour=blue;journal={ap.STATE_DIR}/journals/bad.jnl", "colour"),
])
def test_wrong_cfgstring_refused_with_checkconfig_message(appliance, cfgstring, message):
    """targetcli asks our D-Bus CheckConfig before it creates anything; the refusal carries
    our message and leaves no storage object behind."""
    result = ap.targetcli(appliance, "/backstores/user:mirror", "create", "name=bad", "size=16M",
                          f"cfgstring={cfgstring}", check=False)
    output = (result.stdout + result.stderr).decode()
    assert result.rc != 0, f"accepted a wrong cfgstring: {output}"
    assert "cfgstring invalid" in output and message in output, output
    assert "bad" not in ap.targetcli(appliance, "ls", "/backstores/user:mirror").text
    leftovers = appliance.run("ls -d /sys/kernel/config/target/core/user_*/bad 2>/dev/null", check=False).text
    assert not leftovers.strip(), leftovers


def create_target(machine: Machine, spec: ap.LunSpec) -> str:
    """Backstore through targetcli's own ``create`` (the command an administrator types),
    then target, LUN and an explicit ACL for our initiator in one targetcli session."""
    ap.targetcli(machine, "/backstores/user:mirror", "create", f"name={spec.name}",
                 f"size={spec.size}", f"cfgstring={spec.cfgstring()}")
    iqn = ap.target_iqn(machine.name, spec.name)
    script = "\n".join([
        f"/iscsi create {iqn}",
        f"/iscsi/{iqn}/tpg1/luns create /backstores/user:mirror/{spec.name}",
        f"/iscsi/{iqn}/tpg1/acls create {INITIATOR}",
        f"/iscsi/{iqn}/tpg1 set attribute authentication=0",
        "saveconfig",
        "exit",
    ]) + "\n"
    result = machine.run(["targetcli"], stdin=script.encode(), timeout=120)
    assert b"Error" not in result.stdout + result.stderr, result.describe()
    return iqn


@pytest.fixture(scope="module")
def disk(appliance) -> str:
    """The user:mirror LUN, logged in by open-iscsi in the same VM; returns /dev/sdX."""
    t0 = time.monotonic()
    iqn = create_target(appliance, LUN)
    acl = ap.targetcli(appliance, "ls", f"/iscsi/{iqn}/tpg1/acls").text
    assert INITIATOR in acl and "Mapped LUNs: 1" in acl, acl
    appliance.write_file("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={INITIATOR}\n".encode())
    appliance.run(["systemctl", "start", "iscsid.service"], timeout=60)
    appliance.run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTAL], timeout=60)
    # Ride out handler restarts: queue I/O for up to 5 min instead of failing it after 120 s.
    appliance.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", PORTAL, "-o", "update",
                   "-n", "node.session.timeo.replacement_timeout", "-v", "300"])
    appliance.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", PORTAL, "--login"], timeout=60)
    link = f"/dev/disk/by-path/ip-{PORTAL}:{ap.ISCSI_PORT}-iscsi-{iqn}-lun-0"
    appliance.run(f"udevadm settle; for i in $(seq 1 100); do [ -e '{link}' ] && exit 0; sleep 0.2; done; "
                  f"echo 'no {link} after login' >&2; exit 1", timeout=60)
    device = appliance.run(["readlink", "-f", link]).text.strip()
    print(f"[vm] target created and logged in ({device}) in {time.monotonic() - t0:.1f} s")
    return device


def test_disk_identity(appliance, disk):
    """The kernel's SCSI disk driver sees our emulation: size, vendor/product, WCE, and a
    VPD 0x83 NAA identifier."""
    name = disk.rsplit("/", 1)[1]
    assert int(appliance.run(["blockdev", "--getsize64", disk]).text) == LUN_BYTES
    assert appliance.run(["cat", f"/sys/block/{name}/device/vendor"]).text.strip() == "LIO-ORG"
    assert appliance.run(["cat", f"/sys/block/{name}/queue/write_cache"]).text.strip() == "write back"
    vpd = appliance.run(["sg_vpd", "--page=di", disk]).text
    assert "NAA" in vpd, vpd
    # The handler turned the kernel's command timer off when the device was added, so a
    # restart never turns queued commands into host I/O errors.
    attrib = f"/sys/kernel/config/target/core/user_*/{LUN.name}/attrib/cmd_time_out"
    assert appliance.run(f"cat {attrib}").text.strip() == "0"


def test_filesystem_roundtrip_and_mirror_bytes(appliance, disk):
    appliance.run(["mkfs.ext4", "-q", "-F", disk], timeout=180)
    appliance.run(f"mkdir -p {MNT} && mount {disk} {MNT}")
    appliance.run(f"for i in 1 2 3; do head -c 4M /dev/urandom > {MNT}/file$i; done; "
                  f"mkdir -p {MNT}/tree && for i in $(seq 1 50); do head -c $((i*977)) /dev/urandom > {MNT}/tree/f$i; done; "
                  f"cd {MNT} && find . -type f | sort | xargs sha256sum > /root/fs.sums && sync", timeout=180)
    # Read back through the target, not the page cache.
    appliance.run(f"umount {MNT} && echo 3 > /proc/sys/vm/drop_caches && mount {disk} {MNT}")
    appliance.run(f"cd {MNT} && sha256sum --quiet -c /root/fs.sums", timeout=180)
    appliance.run(f"umount {MNT}")

    # The local mirror file holds exactly the bytes the host sees, and a block written with
    # O_DIRECT at a known offset is at that offset of the mirror. The handler wrote those
    # 64 KiB commands from the ring to the mirror with direct I/O: none of the 256 pages
    # entered the appliance's page cache (a buffered write would have added all of them).
    appliance.run("head -c 1M /dev/urandom > /root/pattern && sync && "
                  "echo 3 > /proc/sys/vm/drop_caches")
    cached_before = mirror_cached_pages(appliance)
    appliance.run(f"dd if=/root/pattern of={disk} bs=1M seek=100 oflag=direct conv=fsync status=none")
    cached_after = mirror_cached_pages(appliance)
    assert cached_after - cached_before < 16, (
        f"the mirror gained {cached_after - cached_before} cached pages from a 1 MiB write: "
        f"not written with direct I/O\n" + appliance.run(
            ["journalctl", "-u", HANDLER_UNIT, "--no-pager", "-n", "20"], check=False).text)
    appliance.run(f"cmp /root/pattern {MIRROR} 0 $((100*1024*1024)) -n 1048576", timeout=60)
    appliance.run("echo 3 > /proc/sys/vm/drop_caches")
    on_host = appliance.run(["sha256sum", disk], timeout=300).text.split()[0]
    on_mirror = appliance.run(["sha256sum", MIRROR], timeout=300).text.split()[0]
    assert on_host == on_mirror
    appliance.run(f"mount {disk} {MNT} && cd {MNT} && sha256sum --quiet -c /root/fs.sums", timeout=180)


def mirror_cached_pages(machine: Machine) -> int:
    return int(machine.run(["fincore", "--noheadings", "--raw", "--output", "PAGES", MIRROR]).text)


def fio_job(runtime: int) -> str:
    """Random 4 KiB writes through ext4 with O_DIRECT, each block carrying a crc32c header
    that fio re-reads and checks while it runs (verify_backlog: every 256 writes), so blocks
    written before a restart are verified after it. The test ends it with SIGINT."""
    return f"""
[global]
ioengine=libaio
direct=1
filename={MNT}/fio.dat
size=24M
bs=4k
iodepth=8
[writer]
rw=randwrite
time_based=1
runtime={runtime}
verify=crc32c
verify_backlog=256
verify_fatal=1
do_verify=1
"""


# Alongside fio: files written with fsync, each checksum recorded once its fsync returned.
WRITER = f"""
i=0
while [ ! -e /root/stop-writer ]; do
    if dd if=/dev/urandom of={MNT}/during.$i bs=256k count=2 conv=fsync status=none 2>>/root/writer.err; then
        (cd {MNT} && sha256sum during.$i) >> /root/flushed.sums
    fi
    i=$((i+1))
done
"""


def flushed_count(machine: Machine) -> int:
    return int(machine.run("cat /root/flushed.sums 2>/dev/null | wc -l").text)


def wait_flushed(machine: Machine, count: int, timeout: float) -> None:
    """Wait until the writer has at least `count` files flushed (proof that I/O completes)."""
    deadline = time.monotonic() + timeout
    while flushed_count(machine) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"host I/O stalled: fewer than {count} flushed files after {timeout:.0f} s; "
                                 + machine.run("cat /root/writer.err; dmesg | tail -20", check=False).text)
        time.sleep(1)


def stall_evidence(machine: Machine, disk: str) -> str:
    """What a hung host I/O needs explained: the handler's ring state and thread stacks, the
    initiator's block and SCSI counters, blocked tasks, and whether one fresh read releases it."""
    dev = disk.removeprefix("/dev/")
    machine.run(f"systemctl kill -s USR1 {HANDLER_UNIT}; systemctl kill -s USR2 {HANDLER_UNIT}; "
                "echo w > /proc/sysrq-trigger; sleep 1", check=False)
    text = machine.run(
        f"journalctl -u {HANDLER_UNIT} --no-pager -n 120; dmesg | tail -80; "
        "for p in $(pgrep -x fio) $(pgrep -x dd); do echo \"$(cat /proc/$p/comm) $p:\"; cat /proc/$p/stack; done; "
        f"echo inflight $(cat /sys/block/{dev}/inflight); "
        "for a in state device_blocked device_busy queue_depth iorequest_cnt iodone_cnt ioerr_cnt "
        f"iotmo_cnt timeout; do echo $a=$(cat /sys/block/{dev}/device/$a); done; "
        "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; "
        f"cd /sys/kernel/debug/block/{dev} && grep -H . state requeue_list hctx*/state hctx*/busy "
        "hctx*/dispatch hctx*/dispatch_busy hctx*/tags 2>/dev/null | head -60; "
        "cat /sys/kernel/config/target/core/user_*/*/info; "
        "echo flushed $(wc -l < /root/flushed.sums); cat /root/writer.err", check=False).text
    before = machine.run("cat /root/flushed.sums | wc -l", check=False).text.strip()
    machine.run(f"timeout 30 dd if={disk} of=/dev/null bs=4k count=1 iflag=direct status=none",
                check=False)
    released = False
    deadline = time.monotonic() + 20
    while not released and time.monotonic() < deadline:
        released = fio_done(machine)
        time.sleep(1)
    after = machine.run("cat /root/flushed.sums | wc -l", check=False).text.strip()
    return (f"{text}\n[probe] one direct read of {disk} released fio: {released}; "
            f"flushed files {before} -> {after} over the probe")


def fio_done(machine: Machine) -> bool:
    return machine.run(["test", "-e", "/root/fio.rc"], check=False).rc == 0


def test_host_io_survives_handler_restart_and_kill(appliance, disk):
    # (formats the disk itself when run alone, without the round-trip test before it)
    appliance.run(f"mkdir -p {MNT}; mountpoint -q {MNT} || {{ blkid {disk} || mkfs.ext4 -q -F {disk}; "
                  f"mount {disk} {MNT}; }}", timeout=180)
    appliance.run(f"head -c 8M /dev/urandom > {MNT}/before && sync && cd {MNT} && "
                  "sha256sum before > /root/before.sums", timeout=120)
    appliance.run(["dmesg", "-C"])
    appliance.write_file("/root/fio.job", fio_job(FIO_MAX_SECONDS).encode())
    appliance.write_file("/root/writer.sh", WRITER.encode(), mode="0755")
    appliance.run("rm -f /root/stop-writer /root/flushed.sums /root/writer.err; "
                  "nohup /root/writer.sh >/dev/null 2>&1 </dev/null & echo $! > /root/writer.pid")
    appliance.run("rm -f /root/fio.rc /root/fio.json; nohup sh -c 'fio --output-format=json "
                  "--output=/root/fio.json /root/fio.job; echo $? > /root/fio.rc' >/dev/null 2>&1 </dev/null &")
    wait_flushed(appliance, 3, timeout=120)   # both writers are under way before the restart
    assert not fio_done(appliance), appliance.run("cat /root/fio.json", check=False).text

    pid = handler_pid(appliance)
    appliance.run(["systemctl", "restart", HANDLER_UNIT], timeout=180)
    restart_s = wait_handler_active(appliance, pid)
    wait_flushed(appliance, flushed_count(appliance) + 2, timeout=180)

    pid = handler_pid(appliance)
    appliance.run(["kill", "-9", str(pid)])
    kill_s = wait_handler_active(appliance, pid)
    print(f"[vm] handler back after restart in {restart_s:.1f} s, after SIGKILL in {kill_s:.1f} s")
    # The handler's own account: when the rings were served again (host I/O waits only for
    # that), and when it was ready (netlink, D-Bus).
    print(appliance.run(f"journalctl -u {HANDLER_UNIT} -o cat --no-pager | "
                        "grep -E 'rings served|ready .* after exec' | tail -4", check=False).text)
    # Commands the kernel queued in the ring while no daemon served it fail (NOT READY,
    # LOGICAL UNIT COMMUNICATION FAILURE: an I/O error for the host) once they are older than
    # the device's cmd_time_out. Say so plainly when that is why the host saw errors.
    timeout_s = int(appliance.run(f"cat /sys/kernel/config/target/core/user_*/{LUN.name}/attrib/cmd_time_out").text)
    assert timeout_s == 0 or max(restart_s, kill_s) < timeout_s, (
        f"the handler took {max(restart_s, kill_s):.0f} s to serve again, longer than the device's "
        f"cmd_time_out={timeout_s} s: the kernel failed the queued commands with I/O errors")
    # The host's I/O goes on through the new process: more flushed files, fio still running.
    wait_flushed(appliance, flushed_count(appliance) + 2, timeout=180)
    assert not fio_done(appliance), "fio ended early: " + appliance.run("cat /root/fio.json", check=False).text

    # SIGINT to fio's parent process only (-o: the oldest fio). Signalling the job process too
    # can interrupt its final io_getevents: Debian 12's fio 3.33 then waits again for events it
    # already reaped and never exits, with no I/O left anywhere below it (fio PR #1556, fixed
    # in 3.35). The parent asks the job to stop through shared memory, with no signal.
    appliance.run(["pkill", "-INT", "-o", "-x", "fio"])
    deadline = time.monotonic() + 120
    while not fio_done(appliance):
        if time.monotonic() >= deadline:
            evidence = stall_evidence(appliance, disk)
            raise AssertionError("fio did not stop within 120 s of SIGINT (below: whether any I/O "
                                 f"is still in flight, and where)\n{evidence}")
        time.sleep(1)
    # (by pid: "pgrep -f writer.sh" would also find this very shell, whose command names it)
    appliance.run("touch /root/stop-writer; pid=$(cat /root/writer.pid); end=$(($(date +%s) + 240)); "
                  "while kill -0 $pid 2>/dev/null; do [ $(date +%s) -lt $end ] || "
                  "{ echo 'writer did not stop' >&2; exit 1; }; sleep 1; done", timeout=300)
    flushed = flushed_count(appliance)
    writer_errors = appliance.run("cat /root/writer.err").text
    assert not writer_errors.strip(), writer_errors
    rc = int(appliance.run(["cat", "/root/fio.rc"]).text)
    output = appliance.run(["cat", "/root/fio.json"]).text
    report = json.loads(output[output.index("{"):])   # after "fio: terminating on signal 2"
    job = report["jobs"][0]
    assert rc in (0, 128) and job["error"] == 0, f"fio exit {rc}, error {job['error']}:\n{output[-2000:]}"
    written, verified = job["write"]["total_ios"], job["read"]["total_ios"]
    print(f"[vm] fio across both restarts: {written} writes, {verified} verify reads, no error")
    assert written > 0 and verified > 0

    dmesg = appliance.run(["dmesg"]).text
    errors = [line for line in dmesg.splitlines()
              if re.search(r"I/O error|EXT4-fs error|Buffer I/O|blk_update_request", line)]
    assert not errors, "\n".join(errors)
    assert "rw" in appliance.run(["findmnt", "-n", "-o", "OPTIONS", MNT]).text.split(",")

    # Everything is still intact when read back through the restarted handler.
    appliance.run(f"umount {MNT} && echo 3 > /proc/sys/vm/drop_caches && mount {disk} {MNT}", timeout=120)
    appliance.run(f"cd {MNT} && sha256sum --quiet -c /root/before.sums", timeout=180)
    appliance.run(f"cd {MNT} && sha256sum --quiet -c /root/flushed.sums", timeout=180)
    print(f"[vm] {flushed} files written with fsync around the restarts verified")


HANDLER_FILE = f"{ap.STATE_DIR}/handler.toml"
HANDLER_SOCKET = "/run/appliance-handler/handler.sock"


def ring_status(machine: Machine) -> dict:
    status = json.loads(machine.run(["appliancectl", "--socket", HANDLER_SOCKET, "status",
                                     "--json"]).text)
    return status["volumes"][LUN.name]["ring"]


def set_handler_file(machine: Machine, text: str) -> None:
    """The admin's way (docs/tcmu.md): edit the file, --check it, restart the handler."""
    machine.write_file(HANDLER_FILE, text.encode())
    check = machine.run(["/opt/appliance/bin/appliance-handler", "--config", HANDLER_FILE,
                         "--check"], check=False)
    assert check.rc == 0 and "configuration OK" in check.text, check.describe()
    pid = handler_pid(machine)
    machine.run(["systemctl", "restart", HANDLER_UNIT], timeout=180)
    wait_handler_active(machine, pid)


def test_the_admins_ring_spin_setting_reaches_the_device(appliance, disk):
    """ring_spin_us in the handler's file on the state disk (written empty at boot) is what
    the restarted handler's device runs with, and depth-1 writes through it land intact."""
    assert "[handler]" in appliance.run(["cat", HANDLER_FILE]).text
    assert ring_status(appliance)["spin_us"] == 0
    appliance.write_file("/root/bad-handler.toml", b"[handler]\nring_spin_us = 50000\n")
    bad = appliance.run(["/opt/appliance/bin/appliance-handler", "--config",
                         "/root/bad-handler.toml", "--check"], check=False)
    assert bad.rc == 2 and b"ring_spin_us must be 0 (off) to 20000" in bad.stderr, bad.describe()
    set_handler_file(appliance, "[handler]\nring_spin_us = 2000\n")
    try:
        before = ring_status(appliance)
        assert before["spin_us"] == 2000, before
        # One 4 KiB O_DIRECT write at a time into a file of the LUN's file system, then
        # read back through the target (formats the disk itself when run alone).
        appliance.run(f"mkdir -p {MNT}; mountpoint -q {MNT} || {{ blkid {disk} || "
                      f"mkfs.ext4 -q -F {disk}; mount {disk} {MNT}; }}", timeout=180)
        appliance.run(f"head -c 1M /dev/urandom > /root/qd1 && dd if=/root/qd1 of={MNT}/qd1 "
                      "bs=4k oflag=direct conv=fsync status=none && "
                      f"umount {MNT} && echo 3 > /proc/sys/vm/drop_caches && "
                      f"mount {disk} {MNT}", timeout=180)
        appliance.run(f"cmp /root/qd1 {MNT}/qd1", timeout=60)
        after = ring_status(appliance)
        assert after["commands"] - before["commands"] >= 256, (before, after)
        assert after["spins"] > before["spins"], (before, after)
        print(f"[vm] ring over 256 depth-1 writes and their read-back: {after}")
    finally:
        set_handler_file(appliance, "[handler]\n")
    assert ring_status(appliance)["spin_us"] == 0
