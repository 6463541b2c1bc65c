"""VM tier: the appliance image booted under qemu (TCG here: no KVM on this machine).

Every test here is marked ``vm``. The image is built (or taken from the cache) once per
session; each module boots the machines it needs once and shares them between its tests.
Console and qemu logs of every module are copied to ``$APPLIANCE_VM_LOGS``
(default /tmp/dr-appliance-vm-logs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from vmlab.image import ImageInfo, ensure_image
from vmlab.lab import Lab

VM_TEST_TIMEOUT = 1500


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # SIGTERM (CI timeouts, `timeout`) unwinds like Ctrl-C, so every lab stops its VMs.
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vm)
            item.add_marker(pytest.mark.timeout(VM_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def image() -> ImageInfo:
    t0 = time.monotonic()
    info = ensure_image()
    print(f"\n[vm] image {info.manifest['key']} ready in {time.monotonic() - t0:.0f} s "
          f"(root {info.manifest['root_size_mib']} MiB, qcow2 {info.manifest['qcow2_bytes'] >> 20} MiB)")
    return info


@pytest.fixture(scope="session")
def vm_logs_dir() -> Path:
    return Path(os.environ.get("APPLIANCE_VM_LOGS", "/tmp/dr-appliance-vm-logs"))


@pytest.fixture(scope="module")
def lab(image, vm_logs_dir, request):
    """One lab per test module. Console and qemu logs are always kept (they are small)."""
    with Lab(image, logs_dir=vm_logs_dir / request.module.__name__) as the_lab:
        try:
            yield the_lab
        finally:
            the_lab.collect_logs(vm_logs_dir / request.module.__name__)
