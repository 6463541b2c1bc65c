"""Issue 19: the host tier's fault test on the kernel TLS path. This host's kernel has no
``tls`` module, so it runs in an appliance VM (kernel 6.1 with ``tls.ko``), on the image's own
daemons: transmitter and receiver with ``[tls] kernel = true`` and the corrupting, cutting
proxy of tests/integration/replication/repl_proxy.py between them
(tests/vm/ktls_faults_guest.py). Every flipped bit fails the kernel's AEAD check before any of
our CRCs sees it (no batch rejected), the link connects again in the kernel each time, and the
DR's mirror ends byte for byte the image the writes make. (The SIGKILL and the cut of a kTLS
link through targetcli: test_shell_chain.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmlab.machine import Machine, MachineSpec

REPO = Path(__file__).resolve().parents[2]
FILES = ("bench/replication", "tests/integration/replication/repl_harness.py",
         "tests/integration/replication/repl_proxy.py", "tests/vm/ktls_faults_guest.py")
TREE = "/tmp/ktls-tree"
WORK = "/var/lib/appliance/ktls-faults"     # (the state disk: the root has little room)


@pytest.fixture(scope="module")
def vm(lab) -> Machine:
    (machine,) = lab.boot(MachineSpec("ktls-faults", cpus=2, memory_mib=1536))
    for rel in FILES:
        machine.run(["mkdir", "-p", str(Path(TREE, rel).parent)])
        machine.write_file(f"{TREE}/{rel}", (REPO / rel).read_bytes(), "0755")
    return machine


def test_a_corrupting_cutting_proxy_on_the_kernel_tls_link_is_caught_and_converges(vm):
    out = vm.run(f"/opt/appliance/bin/python {TREE}/tests/vm/ktls_faults_guest.py {TREE} "
                 f"{WORK} 8", timeout=1200)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    print(f"[ktls-faults] {result}")
    assert result["rx_tls_seen"] == ["kernel (tx+rx)"], result
    assert result["tx_tls"].startswith("kernel (tx+rx), TLSv1.2 ECDHE-"), result
    assert result["proxy"]["corrupted"] >= 1, result
    assert result["rx_connects"] >= 2, result           # it came back after each fault
    assert result["rx_rejected"] == 0, result           # the kernel's AEAD caught every bit
    assert result["mirror_equal"], result
