"""A promoted consistency group served again: the new primary's group over the members a DR
promotion left (docs/groups.md, "Failover and failback").

``promote`` of a group replica leaves its layout (``<state>/<uuid>/<group>.group.json``, the
members' mirrors in ``members/``) and a promotion base marker beside it, naming the image every
member holds (the old group's, after one seq). The site then serves those members as a group
of its own: a new layout in the handler's groups directory with a new uuid but the SAME
members at the SAME offsets, so that

- the marker describes that group's address space: it moves beside the new layout, and the
  handler that opens the group with its new journal adopts it (``journal_link.open_parts``)
  instead of marking every chunk: the group's bitmap and journal then hold exactly what this
  site changes, and a failback copies only that (docs/failover.md, section 3);
- the old primary site, replicating back into its own layout, finds each member where it was
  (its replica refuses a member at another offset, ``group_replica.follow``).

Without a usable marker the layout is still made (a failback then compares by hash).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from appliance.statefile import remove_durably
from appliance.volume import group_layout
from appliance.volume.group_layout import GroupLayout
from appliance.volume.promotion_base import PromotionBase, read_marker, remove_marker, write_marker

__all__ = ["member_backstore_commands", "serve_promoted_group", "unserve_promoted_group"]


def serve_promoted_group(promoted: Path, dest: Path, *, name: str, group_uuid: uuid.UUID,
                         journal_size: int | None) -> tuple[GroupLayout, PromotionBase | None]:
    """Write ``dest``, the layout of group ``name`` (uuid ``group_uuid``) over the members of
    the promoted group layout ``promoted``, and move the promotion's base marker beside it.
    Returns the new layout and the base it carries (None: no usable marker, the handler will
    mark every chunk): the caller tells the admin which. GroupLayoutError when ``promoted``
    is not a usable layout."""
    old = group_layout.load(promoted)
    size_bytes = old.num_blocks * old.block_size
    base = read_marker(promoted, size_bytes)
    members = tuple(dataclasses.replace(m, needs_copy=False) for m in old.members)
    new = GroupLayout.from_json(
        GroupLayout(name, group_uuid, old.block_size, old.align_blocks, members,
                    journal_size).to_json(), f"group {name}")
    # Order, for a crash anywhere: the layout, then the marker beside it (newer than the layout
    # and every member, as read_marker requires), then the old marker removed. A crash before
    # the last step leaves two markers of one image; the old one is beside a layout no
    # handler serves, and demote removes it.
    group_layout.save(dest, new)
    if base is not None:
        write_marker(dest, base, size_bytes)
        remove_marker(promoted)
    return new, base


def unserve_promoted_group(promoted: Path, dest: Path, base: PromotionBase | None) -> None:
    """Undo ``serve_promoted_group`` before any handler opened ``dest`` (the caller's next
    step failed): the marker back beside ``promoted``, ``dest`` and its marker removed, so the
    admin's next attempt finds the promoted layout as promote left it."""
    if base is not None:
        layout = group_layout.load(dest)
        write_marker(promoted, base, layout.num_blocks * layout.block_size)
        remove_marker(dest)
    remove_durably(dest)


def member_backstore_commands(layout: GroupLayout) -> list[str]:
    """The targetcli command that serves each active member in the group (what the admin
    types on the promoted site: 'promote' and 'groups create ... promoted=' print them)."""
    bs = layout.block_size
    return [f"/backstores/user:mirror create name={m.name} size={m.num_blocks * bs} "
            f"cfgstring=mirror={m.mirror};group={layout.name}" for m in layout.active_members]
