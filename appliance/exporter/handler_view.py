"""The handler's status as the exporter counts it: each Volume's state once, each device's
I/O on its own.

A consistency group's members are devices over the group's one Volume (docs/groups.md, "The
handler"): every member's entry under ``volumes`` repeats the group's volume state (journal,
sync mode, seqs, logging to the bitmap), and ``groups`` holds that state once per open group.
A Volume's figures and alerts belong to the name replication knows it by: a plain volume's
backstore name, a group's name (its transmitter is ``transmitter-<group>.sock``, its unit
``appliance-transmitter@<group>``: targetcli_ext/group_ops.py). The I/O counters are the
device's (appliance/tcmu/io_stats.py), so a member's stay under the member's backstore name.
"""

from __future__ import annotations


def volume_states(status: dict) -> dict[str, dict]:
    """Each Volume's state, once, by its replication name: a plain volume's entry under its
    backstore name, an open group's ``groups`` entry under the group's name. A group that
    the ``groups`` section does not show open (a handler without it, or a status taken while
    the group closed) is taken from its first member's entry, which carries the same
    state."""
    devices = status.get("volumes") or {}
    groups = status.get("groups") or {}
    out: dict[str, dict] = {}
    for name, entry in sorted(groups.items()):
        if isinstance(entry, dict) and entry.get("open") is True:
            out[name] = entry
    for name, entry in sorted(devices.items()):
        if not isinstance(entry, dict):
            continue
        group = entry.get("group")
        if isinstance(group, str) and group:
            out.setdefault(group, entry)
        else:
            out.setdefault(name, entry)
    return out


def is_group(entry: dict) -> bool:
    """A group's state (its ``groups`` entry or a member's), not a plain volume's."""
    return isinstance(entry.get("group"), str)


def devices(status: dict) -> dict[str, dict]:
    """Every served device's entry by backstore name (a group member's too): its ``io``."""
    return {name: entry for name, entry in sorted((status.get("volumes") or {}).items())
            if isinstance(entry, dict)}
