"""A consistency group's status as the admin reads it (docs/shell.md, "Consistency groups"):
the block of its transmitter, as a volume's (targetcli_ext/status_text.py), then the group's
consistent point, whether a joining member's initial copy is under way, and its members from
the layout::

    group db role:primary peer:dr (192.0.2.2:7700)
      link:connected replication:replicating journal:2% in-sync
        consistent point: seq 1234: the DR holds every member as of the same write
        members: 2, 512-byte blocks
          log   1.0 GiB  at block 0
          data  10.0 GiB at block 2097152

A pure function of the transmitter's status and the layout, so the text is tested as is.
"""

from __future__ import annotations

import datetime as dt

from appliance.volume.group_layout import GroupLayout
from targetcli_ext.group_ops import active_members
from targetcli_ext.model import Group
from targetcli_ext.status_text import (
    _RESYNC_ACTIVE,
    VolumeView,
    _resync_text,
    human_bytes,
    human_duration,
    render_volume,
)


def transmitter_of(snapshot: dict, group: Group) -> dict | None:
    """The group's transmitter status: the one with the group's uuid, else the one on the
    group's socket (transmitter-<name>.sock)."""
    txs = snapshot.get("transmitters") or {}
    for tx in txs.values():
        if isinstance(tx, dict) and tx.get("volume_uuid") == group.uuid:
            return tx
    found = txs.get(group.name)
    return found if isinstance(found, dict) else None


def consistent_point(tx: dict) -> str:
    """What the DR holds of the group: every member as of one seq (docs/groups.md)."""
    acked = tx.get("acked_seq")
    at = f"seq {acked}" if isinstance(acked, int) else "unknown seq"
    resync = tx.get("resync") or {}
    if resync.get("state") in _RESYNC_ACTIVE:
        return (f"{at} acknowledged; while the copy below runs the DR's image of the group is "
                f"not consistent")
    if tx.get("in_sync"):
        return f"{at}: the DR holds every member as of the same, newest write"
    age = tx.get("recovery_point_age_s")
    rpo = f", recovery point {human_duration(age)} ago" if isinstance(age, int | float) \
        else ""
    return f"{at}: the DR holds every member as of the same write{rpo}"


def initial_copy(tx: dict) -> str | None:
    """A joining member's initial copy (the transmitter's resync of its regions)."""
    resync = tx.get("resync") or {}
    if resync.get("state") not in _RESYNC_ACTIVE:
        return None
    return (f"under way: {_resync_text(resync)}; the group is in sync once it is done")


def member_lines(layout: GroupLayout) -> list[str]:
    """The members that have not left, then those that left (their range stays, as
    padding, so the others keep their offsets)."""
    active = active_members(layout)
    left = [m for m in layout.members if m not in active]
    if not active:
        lines = [f"members: none yet ({layout.block_size}-byte blocks): create a backstore "
                 f"with group={layout.name} in its cfgstring"]
    else:
        lines = [f"members: {len(active)}, {layout.block_size}-byte blocks"]
    width = max((len(m.name) for m in layout.members), default=0)
    for m in active + left:
        size = human_bytes(m.num_blocks * layout.block_size)
        gone = " (left the group)" if m in left else (
            " (joined with data: its initial copy is being set up)"
            if getattr(m, "needs_copy", False) else "")
        lines.append(f"  {m.name:<{width}}  {size:>10}  at block {m.offset_blocks}{gone}")
    return lines


def render_group(group: Group, view: VolumeView | None, tx: dict | None,
                 layout: GroupLayout | None, layout_error: str | None, *, now: float,
                 tz: dt.tzinfo | None = None) -> str:
    """The group's block: its transmitter's (or why there is none), the consistent point,
    the initial copy, the members."""
    if view is not None and tx is not None:
        lines = render_volume(view, now=now, tz=tz).split("\n")
        lines.append(f"    consistent point: {consistent_point(tx)}")
        copy = initial_copy(tx)
        if copy:
            lines.append(f"    initial copy: {copy}")
    else:
        lines = [f"group {group.name} role:primary peer:{group.peer}",
                 f"  replication:unknown: its transmitter does not answer: 'systemctl status "
                 f"appliance-transmitter@{group.name}'"]
    if layout is not None:
        lines += [f"    {line}" for line in member_lines(layout)]
    else:
        lines.append(f"    members: unknown: {layout_error}")
    return "\n".join(lines)


def group_summary(group: Group, view: VolumeView | None, layout: GroupLayout | None,
                  layout_error: str | None) -> tuple[str, bool | None]:
    """One line for ``ls``: members, then the transmitter's summary."""
    if layout is None:
        return f"layout unreadable: {layout_error}", False
    n = len(active_members(layout))
    count = f"{n} member{'' if n == 1 else 's'}"
    if view is None:
        return (f"{count}, its transmitter does not answer: 'systemctl status "
                f"appliance-transmitter@{group.name}'"), False
    return f"{count}, {view.summary()}", view.health


def group_state(ctx, group: Group):
    """(view, transmitter status, layout, why the layout cannot be read) of a group, from
    the context's snapshot (targetcli_ext/context.py)."""
    from targetcli_ext.model import ModelError
    tx = transmitter_of(ctx.snapshot(), group)
    view = next((v for v in ctx.views() if v.kind == "group" and v.name == group.name), None)
    try:
        layout, why = ctx.group_layout(group.name), None
    except ModelError as err:
        layout, why = None, str(err)
    return view, tx, layout, why


def group_text(ctx, group: Group) -> str:
    """The group's block as 'status' shows it."""
    view, tx, layout, why = group_state(ctx, group)
    return render_group(group, view, tx, layout, why, now=ctx.clock(), tz=ctx.tz)
