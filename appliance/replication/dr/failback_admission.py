"""The receiver's side of a minimal failback, at a primary's first contact.

A primary whose journal starts from a promoted image (HELLO ``base``) meets, on the old
primary's site, a replica configured with that site's old journal (``failback_journal``).
``base_extents`` proves what the old mirror holds beyond the base (``failback.plan``), keeps
this site's writes the new primary never had in a lost-write report (with their data) before
anything overwrites them, and returns the extents for the WELCOME. A split brain (this site
written after the promotion) is refused with a report of both change sets until the admin
``resolve``s it. Anything that cannot be proven returns None: the primary makes a full copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.journal import JournalReader
from appliance.replication import lost_writes
from appliance.replication.dr import failback
from appliance.replication.handshake import Refused
from appliance.volume.promotion_base import PromotionBase

if TYPE_CHECKING:
    from appliance.replication.dr.replica import Replica
    from appliance.replication.handshake import Hello

log = logging.getLogger("appliance.replication.dr.replica")

KEEP_CHOICES = ("new-primary", "this-site")


def base_extents(replica: Replica, hello: Hello) -> list[tuple[int, int]] | None:
    """The extents of this site's mirror beyond the HELLO's base, or None (full copy).
    Only at first contact; raises Refused ``split-brain`` until the admin decides."""
    cfg = replica.cfg
    if hello.base is None or cfg.failback_journal is None or replica.journal is not None:
        return None
    try:
        base = PromotionBase.from_dict(hello.base)
    except ValueError as err:
        log.warning("volume %s: the primary's base is not readable (%s): full copy",
                    replica.spec.uuid, err)
        return None
    try:
        plan = failback.plan(base, journal=cfg.failback_journal, mirror=cfg.paths.mirror,
                             block_size=replica.spec.block_size)
    except failback.BaseUnproven as err:
        replica.failback_status = {"state": "full-copy", "reason": str(err),
                                   "new_primary": hello.identity}
        log.warning("volume %s: this site cannot prove that its mirror holds the image the new "
                    "primary started from, so it gets a full copy: %s", replica.spec.uuid, err)
        return None
    directory = cfg.paths.state.parent
    name = hello.name or str(replica.spec.uuid)
    if plan.split_brain and replica.split_brain_keep != "new-primary":
        path = write_split_brain(directory, name, plan, hello, replica.spec.block_size)
        replica.failback_status = {"state": "split-brain", "report": str(path),
                                   "new_primary": hello.identity,
                                   "keep": replica.split_brain_keep,
                                   **plan.summary(replica.spec.block_size)}
        if replica.split_brain_keep == "this-site":
            raise Refused("split-brain", f"volume {name}: the admin kept this site's writes "
                                         f"after the split brain; this mirror takes nothing "
                                         f"from {hello.identity!r} (docs/failover.md)")
        raise Refused("split-brain", split_brain_text(name, plan, hello) +
                      f"; report in {path}; on this site choose: resolve keep=new-primary or "
                      f"keep=this-site (/replication/replicas/<name> in targetcli)",
                      {"report": str(path)})
    report = keep_lost_writes(directory, name, plan, hello, cfg.failback_journal,
                              replica.spec.block_size)
    replica.failback_status = {"state": "copying", "lost_writes": report,
                               "new_primary": hello.identity,
                               "keep": replica.split_brain_keep,
                               **plan.summary(replica.spec.block_size)}
    log.warning("volume %s: failback from %s: this mirror holds its image after seq %d plus %d "
                "extents (%d bytes) written here since; only those and what the primary "
                "changed are copied", replica.spec.uuid, hello.identity, base.seq,
                len(plan.extents), plan.extent_blocks * replica.spec.block_size)
    return plan.extents


def keep_lost_writes(directory: Path, name: str, plan: failback.FailbackPlan, hello: Hello,
                     journal: Path, block_size: int) -> str:
    """This site's writes beyond the base, with their data, before the copy overwrites them
    (once: a restarted receiver keeps the first report)."""
    stem = lost_writes.stem(directory, name, plan.base.seq)
    if lost_writes.existing(directory, name, plan.base.seq) is not None:
        return str(stem.with_suffix(".txt"))
    report = lost_writes.LostWriteReport(
        volume=name, volume_uuid=str(plan.base.lineage), block_size=block_size,
        promoted_at_seq=plan.base.seq, promoted_by=hello.identity, head_seq=plan.head_seq,
        dirty_regions=[(lba * block_size, n * block_size) for lba, n in plan.bitmap_extents],
        data_file=str(stem.with_suffix(".data")))
    with JournalReader(journal, volume_uuid=plan.base.lineage) as reader:
        lost_writes.collect(reader, report, data_out=stem.with_suffix(".data"))
    return lost_writes.write(report, directory)["text"]


def split_brain_text(name: str, plan: failback.FailbackPlan, hello: Hello) -> str:
    seq, when = plan.after_promotion[0] if plan.after_promotion else (None, None)
    ours = (f"{len(plan.after_promotion)} writes from seq {seq} on"
            if plan.after_promotion else "writes to its bitmap")
    theirs = hello.changed or {}
    return (f"split brain on volume {name}: this site took {ours} after the promotion "
            f"(at {plan.base.promoted_ns / 1e9:.3f}, the new primary's clock), and "
            f"{hello.identity!r} has written since (journal to seq "
            f"{theirs.get('head_seq', '?')}, {theirs.get('dirty_bytes', '?')} bytes in its "
            f"bitmap): nothing is copied until the admin decides")


def write_split_brain(directory: Path, name: str, plan: failback.FailbackPlan, hello: Hello,
                      block_size: int) -> Path:
    """Both change sets, as JSON beside the replica (what an admin reads before choosing)."""
    path = directory / f"split-brain-{name}.json"
    body = {"volume": name, "new_primary": hello.identity, "base": plan.base.to_dict(),
            "this_site": {**plan.summary(block_size),
                          "written_after_promotion": [
                              {"seq": s, "time": t} for s, t in plan.after_promotion],
                          "extents": plan.extents},
            "new_primary_changed": hello.changed,
            "text": split_brain_text(name, plan, hello)}
    lost_writes.write_durably(path, json.dumps(body, indent=1) + "\n")
    return path
