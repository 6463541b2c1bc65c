"""VM lab: boots appliance (and host) VMs under qemu for the VM tests and the demo.

- ``vmlab.image``: the appliance image, built or taken from the cache (image/build.py).
- ``vmlab.machine``: one VM (overlay disks, user-mode NIC with loopback port forwards, a
  private NIC, serial console log, command agent over virtio-serial, QMP).
- ``vmlab.lab``: several VMs on one private network, cleaned up on exit.
- ``vmlab.appliance``: driving an appliance (targetcli) and a host (open-iscsi) inside VMs.
- ``vmlab.replication``: primary/DR replication configuration for lab appliances.
- ``vmlab.console``: a terminal on a running VM (serial console, or one command via the agent).
- ``vmlab.demo``: ``make demo`` (``python -m vmlab.demo [--check]``).
- ``vmlab.agent``: the guest side of the command agent (runs inside the image).
"""
