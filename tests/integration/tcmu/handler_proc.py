"""A handler process for the kill -9 test: serves a simulated ring with the real stack.

usage: python handler_proc.py <ring dir> <volume dir> <num_blocks>
Prints "ready" once the device loop runs; exits on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tcmu_stack import SERIAL, open_volume

from appliance.scsi import DiskIdentity, ScsiCommand, ScsiDisk
from appliance.tcmu.device import TcmuDevice
from appliance.tcmu.sim_uio import SimUio


def main() -> None:
    ring_dir, vol_dir, num_blocks = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    uio = SimUio(ring_dir)
    volume = open_volume(vol_dir, num_blocks)
    device = TcmuDevice(uio, ScsiDisk(volume, DiskIdentity(SERIAL)), name="proc",
                        command_class=ScsiCommand, poll_interval=0.05)
    signal.signal(signal.SIGTERM, lambda *_: device.stop())
    thread = threading.Thread(target=device.run)
    thread.start()
    print("ready", flush=True)
    thread.join()
    device.close()
    uio.close()
    volume.close()


if __name__ == "__main__":
    main()
