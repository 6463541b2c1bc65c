"""TCMU kernel interface and the `mirror` handler daemon.

layout (struct offsets), ring (user-side fetch/complete), sim + sim_uio (userspace simulation of
the kernel side), device (per-device loop), uio, discovery, netlink, cfgstring, dbus_service,
daemon. See docs/internals.md and docs/tcmu.md.
"""
