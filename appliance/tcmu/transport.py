"""What the device loop needs from a TCMU device node: a mapping, a wait and a poke.

`appliance.tcmu.uio.UioDevice` implements it over /dev/uioN; `appliance.tcmu.sim_uio.SimUio`
over the ring simulation's files.
"""

from __future__ import annotations

from typing import Protocol


class RingTransport(Protocol):
    region: memoryview     # the whole mapping: mailbox, command ring and data area

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds for a kernel event; True if one arrived."""

    def poke(self) -> None:
        """Tell the kernel that cmd_tail moved (one 4-byte write)."""

    def close(self) -> None: ...
