"""Replication status a person reads at a glance, modelled on ``drbdadm status``.

A pure function of the daemons' JSON status (docs/protocol.md, "Status" and "What status
derives from"): the handler's (each backstore's journal fill and volume state), each
transmitter's (one per replicated volume on the primary) and the receiver's (one entry per
replica on the DR). One block per volume::

    vol1 role:primary peer:dr (192.0.2.2:7700)
      link:connected replication:replicating journal:2% in-sync

A healthy volume prints those two lines; a volume that is behind adds what it lacks (``lag``),
why (the daemon's own ``behind_reason``, never reworded) and what to do. Times are rendered in
``tz`` (local time by default) against ``now``, so the text is reproducible in tests.

The snapshot is a plain dict (``daemons.collect`` builds it from the control sockets)::

    {"handler": {...} | None, "receiver": {...} | None,
     "transmitters": {"<socket name>": {...}}, "exporter": {...} | None,
     "errors": {"<what>": "<why>"}}

After the volumes, the exporter's active alerts (docs/monitoring.md)::

    alerts: 1 active (exporter on 127.0.0.1:9477)
      warning JournalHighWater since 22:10:00: journal of vol1 is 85% full (high water 80%)

An appliance whose exporter does not run says nothing about alerts (its socket absent); one
whose exporter does not answer lists it with the other daemons that do not answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from appliance.volume.sync_mode import DEGRADED

_RESYNC_ACTIVE = ("draining", "resyncing", "waiting-for-writer", "repairing", "interrupted")

# What to do about a refusal, by the receiver's refusal code (appliance/replication/handshake).
_REFUSAL_ADVICE = {
    "promoted": "the DR site failed over (promoted its replica): this site replicates nothing "
                "more; to make it the DR of the new primary: delete "
                "/backstores/user:mirror/{name}, then 'failback uuid=<the new primary's "
                "volume uuid>' in /replication/volumes/{name} (docs/failover.md)",
    "split-brain": "the DR (the old primary site) was written after the promotion too: "
                   "nothing is copied until its admin decides: there, 'status' of the "
                   "replica names the report, then 'resolve keep=new-primary' (this site "
                   "wins) or 'resolve keep=this-site' in /replication/replicas/{name}",
    "identity": "the DR does not accept this site's identity or certificate: pair the sites "
                "again with the fingerprints '/replication info' shows on each",
    "unknown-volume": "the DR has no replica configured for this volume: add it on the DR",
    "geometry": "the DR replica's size or block size differs from this volume: make them "
                "equal (the reason above says which)",
    "version": "the appliances speak different protocol versions: run the same release on both",
    "bound-to-other": "the DR replica belongs to another primary: replicate to another "
                      "replica, or re-pair it on the DR",
    "stale-generation": "this volume is older than the DR's copy (a failover happened): see "
                        "docs/failover.md",
    "resync-needed": "the DR lacks records this site no longer holds: on the DR run "
                     "'invalidate' in /replication/replicas/<volume>, for a full copy",
    "no-space": "free space in the DR's replica directory, or make the replica on a block "
                "device there ('/replication/replicas create' on the DR)",
    "failback-first": "the peer is the old primary of this promoted copy: its admin makes it "
                      "the DR over its old mirror ('failback uuid=<this volume's or group's "
                      "uuid>' there; docs/failover.md); this site connects again by itself",
}

# How a pause reads, by the word after "paused:" in the transmitter's link state.
_PAUSE_WHY = {"admin": "by admin", "blackout-window": "blackout window"}


@dataclass
class VolumeView:
    """One volume as the status shows it (also the one-line summary of ``ls``)."""

    name: str
    role: str                          # primary | dr | unreplicated
    uuid: str | None = None            # the volume's uuid (a DR replica's commands take it)
    peer: str | None = None
    link: str | None = None            # connected | connecting | refused (code) | ...
    link_since: float | None = None
    replication: str = ""
    journal: str | None = None         # "41%" (primary only, from the handler)
    in_sync: bool | None = None
    mode: str | None = None            # the handler's replication mode unless async
    kind: str = "volume"               # volume | group (docs/groups.md) | member (of a group)
    details: list[tuple[str, str]] = field(default_factory=list)   # (label, text)
    health: bool | None = None         # True healthy, None catching up, False needs action

    def summary(self) -> str:
        """One line for ``ls``: role, link, replication state and whether it is in sync."""
        parts = [self.role]
        if self.link:
            parts.append(self.link)
        if self.replication:
            parts.append(self.replication)
        if self.mode:
            parts.append(self.mode.split(" ")[0])
        if self.in_sync is not None:
            parts.append("in sync" if self.in_sync else "behind")
        return ", ".join(parts)


def render_status(snapshot: dict, *, now: float, tz: dt.tzinfo | None = None,
                  peer_names: dict[str, str] | None = None,
                  replica_names: dict[str, str] | None = None,
                  groups: dict[str, str] | None = None,
                  members: dict[str, str] | None = None) -> str:
    """The whole status: one block per volume, then daemons that did not answer."""
    views = volume_views(snapshot, now=now, tz=tz, peer_names=peer_names,
                         replica_names=replica_names, groups=groups, members=members)
    blocks = [render_volume(v, now=now, tz=tz) for v in views]
    errors = snapshot.get("errors") or {}
    if not views and not errors:
        blocks.append("no replicated volumes: no handler, transmitter or receiver answers "
                      "on this appliance")
    alerts = render_alerts(snapshot.get("exporter"), now=now, tz=tz)
    if alerts:
        blocks.append(alerts)
    for what, why in sorted(errors.items()):
        blocks.append(f"{what}: not answering: {why}\n"
                      f"    do: check that it runs ('systemctl status' of its unit) and its "
                      f"log ('journalctl -u' of its unit)")
    return "\n".join(blocks) + "\n"


def render_volume(v: VolumeView, *, now: float, tz: dt.tzinfo | None = None) -> str:
    head = f"{'group ' if v.kind == 'group' else ''}{v.name} role:{v.role}"
    if v.peer:
        head += f" {'primary' if v.role == 'dr' else 'peer'}:{v.peer}"
    tokens = []
    if v.link:
        link = f"link:{v.link}"
        if v.link_since is not None and v.link not in ("connected",):
            link += f" since {_Clock(now, tz).when(v.link_since)}"
        tokens.append(link)
    if v.replication:
        tokens.append(f"{'replica' if v.role == 'dr' else 'replication'}:{v.replication}")
    if v.mode:
        tokens.append(f"mode:{v.mode}")
    if v.journal is not None:
        tokens.append(f"journal:{v.journal}")
    if v.in_sync is not None:
        tokens.append("in-sync" if v.in_sync else "behind")
    lines = [head, "  " + " ".join(tokens)]
    lines += [f"    {label}: {text}" for label, text in v.details]
    return "\n".join(lines)


def render_alerts(exporter: dict | None, *, now: float, tz: dt.tzinfo | None = None,
                  webhook: bool = True) -> str | None:
    """The exporter's active alerts, one line each, and (``webhook``) its webhook when it
    fails to deliver; None when no exporter answered (then nothing is said)."""
    if not isinstance(exporter, dict):
        return None
    clock = _Clock(now, tz)
    alerts = [a for a in exporter.get("alerts") or [] if isinstance(a, dict)]
    where = f" (exporter on {exporter['listen']})" if exporter.get("listen") else ""
    lines = [f"alerts: {len(alerts)} active{where}" if alerts else f"alerts: none{where}"]
    for a in sorted(alerts, key=lambda a: (a.get("since") or 0, a.get("alert") or "")):
        since = f" since {clock.when(a['since'])}" if a.get("since") else ""
        lines.append(f"  {a.get('severity') or 'alert'} {a.get('alert') or 'unnamed'}{since}: "
                     f"{a.get('message') or 'no message'}")
    hook = webhook_trouble(exporter.get("webhook")) if webhook else None
    if hook:
        lines.append(f"  webhook: {hook}")
    return "\n".join(lines)


def webhook_trouble(webhook: object) -> str | None:
    """What keeps alerts from reaching the webhook (its last error, what waits, what was
    dropped), None when it delivers or there is none."""
    if not isinstance(webhook, dict) or not (webhook.get("last_error") or webhook.get("dropped")):
        return None
    queued = webhook.get("queued") or 0
    text = f"{queued} event{'' if queued == 1 else 's'} waiting for {webhook.get('url')}"
    if webhook.get("last_error"):
        text += f" (last error: {webhook['last_error']})"
    if webhook.get("dropped"):
        text += f"; {webhook['dropped']} dropped, the queue was full"
    return text


# --- joining the daemons' views -----------------------------------------------------------


def volume_views(snapshot: dict, *, now: float, tz: dt.tzinfo | None = None,
                 peer_names: dict[str, str] | None = None,
                 replica_names: dict[str, str] | None = None,
                 groups: dict[str, str] | None = None,
                 members: dict[str, str] | None = None) -> list[VolumeView]:
    """Primary volumes (a transmitter, joined with the handler's entry of the same uuid),
    handler volumes no transmitter answers for, then the DR's replicas; each sorted by name.
    ``replica_names``: the names the admin gave replicas here (site.json), by uuid, for those
    whose primary has not told the receiver its volume's name yet. ``groups``: the
    consistency groups' names by uuid (their transmitter's block is the group's);
    ``members``: the group of each backstore in one (its block says so, not unreplicated)."""
    handler = (snapshot.get("handler") or {}).get("volumes") or {}
    # A group's members carry the group's uuid (the handler's "group" key): not a volume's.
    by_uuid = {h.get("uuid"): (name, h) for name, h in handler.items() if not h.get("group")}
    peer_names, groups, members = peer_names or {}, groups or {}, members or {}
    clock = _Clock(now, tz)
    primaries, seen = [], set()
    for sock_name, tx in (snapshot.get("transmitters") or {}).items():
        uuid = tx.get("volume_uuid")
        name, h = by_uuid.get(uuid, (sock_name, None))
        seen.add(uuid)
        if uuid in groups:
            name, h = groups[uuid], group_entry(snapshot, groups[uuid], uuid)
        view = _primary_view(name, tx, h, peer_names, clock)
        view.kind = "group" if uuid in groups else "volume"
        primaries.append(view)
    for name, h in handler.items():
        group = members.get(name) or h.get("group")
        if group:
            primaries.append(_member_view(name, group, h, clock))
        elif h.get("uuid") not in seen and h.get("uuid") not in groups:
            primaries.append(_unreplicated_view(name, h, clock))
    receiver = snapshot.get("receiver") or {}
    replicas = [_dr_view(uuid, r if r.get("name") or uuid not in (replica_names or {})
                         else {**r, "name": replica_names[uuid]}, clock)
                for uuid, r in (receiver.get("volumes") or {}).items()]
    replicas += [_offer_view(o, clock) for o in receiver.get("refused_offers") or []
                 if isinstance(o, dict)]
    _unique_replica_names(replicas)
    return sorted(primaries, key=lambda v: v.name) + sorted(replicas, key=lambda v: v.name)


def _unique_replica_names(views: list[VolumeView]) -> None:
    """A replica is named by the primary's volume name when the receiver reports one, by its
    uuid when it does not or when another replica has the same name (two primaries)."""
    names = [v.name for v in views]
    for v in views:
        if names.count(v.name) > 1 and v.uuid:
            v.name = v.uuid


def _journal(h: dict | None) -> str | None:
    if (h or {}).get("journal_paused"):
        return "paused"
    journal = (h or {}).get("journal") or {}
    if not isinstance(journal, dict) or journal.get("percent") is None:   # a group's: its path
        return None
    text = f"{journal['percent']:.0f}%"
    return text + " (high water)" if journal.get("high_water") else text


def _lost_writes(lost: dict) -> str:
    """The old primary's lost-write report, once a promoted DR refused it (docs/failover.md,
    "What a failover lost")."""
    writes = lost.get("writes") or 0
    text = f"{writes} writes ({human_bytes(lost.get('bytes') or 0)})"
    if writes:
        text += f", seqs {lost.get('first_seq')}-{lost.get('last_seq')},"
    if lost.get("dirty_regions"):
        text += f" and {lost['dirty_regions']} regions written while logging to the bitmap,"
    return (f"{text} never reached the DR, which was promoted at seq "
            f"{lost.get('promoted_at_seq')}; listed with their data in {lost.get('text')}")


def _lag(records: int | None, nbytes: int | None, age: float | None) -> str:
    rec = "unknown records" if records is None else f"{records} records"
    size = "bytes unknown" if nbytes is None else human_bytes(nbytes)
    rpo = "recovery point unknown" if age is None else \
        f"recovery point {human_duration(age)} ago"
    return f"{rec}, {size}, {rpo}"


def _primary_view(name: str, tx: dict, h: dict | None, peer_names: dict[str, str],
                  clock: _Clock) -> VolumeView:
    v = _replication_view(name, tx, h, peer_names, clock)
    _add_sync(v, (h or {}).get("sync"), clock)
    return v


def _replication_view(name: str, tx: dict, h: dict | None, peer_names: dict[str, str],
                      clock: _Clock) -> VolumeView:
    link = tx.get("link") or {}
    state = link.get("state") or "unknown"
    address = tx.get("peer")
    peer = f"{peer_names[address]} ({address})" if address in peer_names else address
    v = VolumeView(name=name, role="primary", peer=peer, journal=_journal(h),
                   in_sync=bool(tx.get("in_sync")), link_since=link.get("state_since"),
                   uuid=tx.get("volume_uuid"))
    connected = state == "replicating" or state.startswith("paused")
    if connected:
        v.link = "connected"
        _add_encryption(v, link)
    elif state.startswith("refused"):
        v.link = f"refused ({state.partition(':')[2] or 'no reason code'})"
    elif state in ("starting", "connecting", "reconnecting"):
        v.link = "connecting"
    else:
        v.link = state

    resync = tx.get("resync") or {}
    admin_paused = tx.get("paused") is True or state == "paused:admin"
    logging = None
    if tx.get("volume_state") == "logging-to-bitmap":
        since = tx.get("logging_since")
        logging = "logging-to-bitmap" + (f" since {clock.when(since)}" if since else "")
    if resync.get("state") in _RESYNC_ACTIVE:
        v.replication = _resync_text(resync)
    elif admin_paused:          # the admin's pause first: it is why nothing ships
        v.replication = "paused (by admin)" + (f", {logging}" if logging else "")
    elif logging:
        v.replication = logging
    elif state.startswith("paused"):
        v.replication = f"paused ({_pause_why(state)})"
    elif connected:
        v.replication = "replicating"
    else:
        v.replication = "stopped"

    journal_paused = bool((h or {}).get("journal_paused"))
    verify = _verify_detail(tx.get("verify") or {}, clock)
    if v.in_sync and not journal_paused:
        v.health = True
        if verify:
            v.details.append(verify)
            v.health = not _verify_differs(tx.get("verify") or {})
        if admin_paused:        # nothing lacks at the DR yet, but nothing new ships
            v.details.append(("do", _primary_advice(tx, state, address, name, True)))
            v.health = None
        return v
    if not connected and link.get("last_error"):
        v.details.append(("reason" if state.startswith("refused") else "last error",
                          link["last_error"]))
    if isinstance(tx.get("lost_writes"), dict):
        v.details.append(("lost writes", _lost_writes(tx["lost_writes"])))
    v.details.append(("lag", _lag(tx.get("lag_records"), tx.get("lag_bytes"),
                                  tx.get("recovery_point_age_s"))))
    if tx.get("behind_reason"):
        v.details.append(("why", tx["behind_reason"]))
    if tx.get("needs_resync"):
        v.details.append(("needs resync", _needs_resync(tx, admin_paused, clock)))
    if tx.get("resync_blocked") and not state.startswith("refused") and not admin_paused:
        v.details.append(("blocked", tx["resync_blocked"]))
    if journal_paused:
        v.details.append(("journal", _journal_paused_text(h or {})))
    if verify:
        v.details.append(verify)
    todo = _primary_advice(tx, state, address, name, admin_paused)
    if todo:
        v.details.append(("do", todo))
    if journal_paused:
        v.details.append(("do", _journal_paused_advice(name)))
    catching_up = connected and not state.startswith("paused") and not journal_paused \
        and not admin_paused \
        and not tx.get("resync_blocked") and tx.get("volume_state") != "unknown"
    v.health = None if catching_up else False
    return v


def _add_sync(v: VolumeView, sync: object, clock: _Clock) -> None:
    """The handler's replication mode (its ``sync`` entry; docs/volume.md, "Synchronous
    modes"): a token unless async; a fall-back to async, or writes held for the DR, also
    say why and what to do."""
    if not isinstance(sync, dict) or sync.get("mode") in (None, "async"):
        return
    mode = sync["mode"]
    effective = sync.get("effective") or mode
    since = sync.get("degraded_since")
    v.mode = effective
    facts = []                  # before the advice: what is the case, then what to do
    if effective == DEGRADED:
        if isinstance(since, int | float):
            v.mode += f" since {clock.when(since)}"
        why = sync.get("degraded_reason") or "no reason given"
        facts.append(("degraded", f"{mode} fell back to async: {why}; host writes complete "
                                  f"without waiting for the DR until it has caught up, then "
                                  f"{mode} again by itself"))
        if v.health is True:
            v.health = None
    holding = sync.get("holding_since")
    if isinstance(holding, int | float):
        facts.append(("holding", f"host writes wait for the DR since {clock.when(holding)}: "
                                 f"it has not acknowledged them and hold=true allows no "
                                 f"fall-back"))
        v.details.append(("do", f"bring the DR or the link back; or run 'set sync hold=false' "
                                f"in /replication/volumes/{v.name} to let writes fall back to "
                                f"async after the fallback time"))
        v.health = False
    first_do = next((i for i, (label, _) in enumerate(v.details) if label == "do"),
                    len(v.details))
    v.details[first_do:first_do] = facts


def sync_effective(sync: dict, *, now: float, tz: dt.tzinfo | None = None) -> str:
    """The mode in effect, as 'get sync' shows it: ``sync``, ``sync-degraded since 22:10:00:
    <reason>``, ``sync, holding writes since 22:10:00 ...``."""
    clock = _Clock(now, tz)
    effective = str(sync.get("effective") or sync.get("mode") or "unknown")
    since = sync.get("degraded_since")
    if effective == DEGRADED:
        at = f" since {clock.when(since)}" if isinstance(since, int | float) else ""
        why = sync.get("degraded_reason")
        return f"{effective}{at}" + (f": {why}" if why else "")
    holding = sync.get("holding_since")
    if isinstance(holding, int | float):
        return (f"{effective}, holding writes since {clock.when(holding)} (the DR has not "
                f"acknowledged them)")
    return effective


def _pause_why(state: str) -> str:
    why = state.partition(":")[2]
    return _PAUSE_WHY.get(why, why.replace("-", " ") or "by request")


def _needs_resync(tx: dict, admin_paused: bool, clock: _Clock) -> str:
    """After a 'discard': the dropped records' regions are dirty until a resync ships them."""
    dirty = tx.get("dirty_bytes")
    amount = "dirty regions" if not isinstance(dirty, int | float) else \
        f"{human_bytes(dirty)} dirty"
    discarded = tx.get("discarded") if isinstance(tx.get("discarded"), dict) else {}
    records = discarded.get("records")
    what = f"{records} queued journal records" if records is not None else \
        "queued journal records"
    at = f" at {clock.when(discarded['at'])}" if discarded.get("at") else ""
    if admin_paused:
        return f"{amount} ({what} discarded{at}): run 'resume' or 'resync'"
    return f"{amount} ({what} discarded{at}): the resync ships them"


def _verify_differs(verify: dict) -> bool:
    return verify.get("state") == "done" and bool(verify.get("differing")) \
        and not verify.get("repaired")


def _journal_paused_text(h: dict) -> str:
    dirty = h.get("peer_lag_dirty_bytes")
    since = "" if not isinstance(dirty, int | float) else f" ({human_bytes(dirty)} dirty)"
    return ("paused by an admin: writes go to the mirror and the dirty bitmap, not the "
            f"journal{since}")


def _journal_paused_advice(name: str) -> str:
    return (f"run 'resume what=journal' in /replication/volumes/{name} to journal again; "
            f"the dirty regions are then resynced")


def verify_detail(verify: dict, *, now: float,
                  tz: dt.tzinfo | None = None) -> tuple[str, str] | None:
    """The verify line of a volume's block, from the transmitter's ``verify`` status."""
    return _verify_detail(verify, _Clock(now, tz))


def _verify_detail(verify: dict, clock: _Clock) -> tuple[str, str] | None:
    """The online verify, while it runs and when it found something or failed; a clean
    result shows for an hour after it finished."""
    state = verify.get("state")
    total = verify.get("regions_total") or 0
    checked = verify.get("regions_checked") or 0
    if state == "running":
        pct = f"{100.0 * checked / total:.0f}%" if total else "0%"
        how = " with repair" if verify.get("repaired") else ""
        return ("verify", f"running{how}, {pct} ({checked}/{total} regions compared)")
    finished = verify.get("finished")
    at = f" (finished {clock.when(finished)})" if finished else ""
    if state == "failed":
        return ("verify", f"failed{at}: {verify.get('error') or 'no reason given'}")
    if state != "done":
        return None
    differing = verify.get("differing") or []
    if differing:
        region = verify.get("region_bytes") or 0
        size = f" of {human_bytes(region)}" if region else ""
        if verify.get("repaired"):
            return ("verify", f"{len(differing)} regions{size} differed and were repaired{at}")
        return ("verify", f"{len(differing)} regions{size} differ from the DR{at}: run "
                          f"'verify repair=true' to copy them there")
    if finished is None or clock.now - finished > 3600:
        return None
    return ("verify", f"no differences in {checked} regions{at}")


def _resync_text(resync: dict) -> str:
    state = resync.get("state")
    total = resync.get("total_bytes") or 0
    done = (resync.get("done_bytes") or 0) + (resync.get("skipped_bytes") or 0)
    pct = f"{100.0 * done / total:.1f}%" if total else "0.0%"
    if state == "resyncing":
        rate = resync.get("bytes_per_s") or 0
        eta = resync.get("eta_s")
        return (f"resync {pct} ({human_bytes(rate)}/s, ETA "
                f"{'unknown' if eta is None else human_duration(eta)})")
    if state == "interrupted":
        return f"resync {pct} interrupted (link lost; goes on where it stopped)"
    return f"resync {pct} ({state})"


def _primary_advice(tx: dict, state: str, address: str | None, name: str,
                    admin_paused: bool) -> str | None:
    if state.startswith("refused"):
        code = state.partition(":")[2]
        return _REFUSAL_ADVICE.get(code, "fix what the reason above says on the DR appliance "
                                         "(its receiver logs the refusal too)").format(name=name)
    if tx.get("volume_state") == "unknown":
        return "check that appliance-handler serves this volume and its journal is readable"
    if admin_paused and tx.get("needs_resync"):
        return (f"run 'resume' in /replication/volumes/{name}: shipping starts again with a "
                f"resync of the dirty regions")
    if admin_paused:
        return (f"shipping is paused by an admin and the journal fills meanwhile: run "
                f"'resume' in /replication/volumes/{name} to ship again")
    if state.startswith("paused"):
        return "shipping resumes by itself when the pause ends (blackout window setting)"
    if state in ("starting", "connecting", "reconnecting"):
        return (f"check that the DR appliance's receiver runs and that {address} is reachable "
                f"from here; shipping resumes by itself once it is")
    return None


def group_entry(snapshot: dict, name: str, uuid: str | None) -> dict | None:
    """The handler's entry of a consistency group (its journal fill and replication mode):
    under ``groups`` by name, or a volume entry with the group's uuid."""
    handler = snapshot.get("handler") or {}
    found = (handler.get("groups") or {}).get(name)
    if isinstance(found, dict):
        return found
    for h in (handler.get("volumes") or {}).values():
        if isinstance(h, dict) and uuid is not None and h.get("uuid") == uuid:
            return h
    return None


def _member_view(name: str, group: str, h: dict, clock: _Clock) -> VolumeView:
    """A backstore in a consistency group: replicated by the group's transmitter, in the
    group's write order (its block says where to look)."""
    v = VolumeView(name=name, role="primary", uuid=h.get("uuid"), kind="member",
                   replication=f"member of group {group}", health=True)
    v.details.append(("group", f"replicated with the group's other members in one write "
                               f"order: see /replication/groups/{group}"))
    if h.get("alert"):
        v.details.append(("alert", h["alert"]))
        v.health = False
    return v


def _unreplicated_view(name: str, h: dict, clock: _Clock) -> VolumeView:
    v = VolumeView(name=name, role="unreplicated", journal=_journal(h), uuid=h.get("uuid"),
                   replication="none (no transmitter answers for this volume)")
    _add_sync(v, h.get("sync"), clock)
    if h.get("alert"):
        v.details.append(("alert", h["alert"]))
    if h.get("journal_paused"):
        v.details.append(("journal", _journal_paused_text(h)))
        v.details.append(("do", _journal_paused_advice(name)))
        v.health = False
    return v


def group_members_text(group: dict) -> str:
    """A DR group replica's members (the receiver's status ``group``): all at one seq."""
    bs = group.get("block_size") or 512
    members = ", ".join(f"{m.get('name')} {human_bytes((m.get('num_blocks') or 0) * bs)} at "
                        f"block {m.get('offset_blocks')}" for m in group["members"])
    return (f"{len(group['members'])} of consistency group {group.get('name')}, every one "
            f"as of the same write: {members}")


def _add_encryption(v: VolumeView, link: dict) -> None:
    """How a connected link is encrypted (the daemon's ``link.tls``), when TLS is on."""
    if link.get("tls"):
        v.details.append(("encryption", link["tls"]))


def _dr_view(uuid: str, r: dict, clock: _Clock) -> VolumeView:
    link = r.get("link") or {}
    state = link.get("state") or "unknown"
    primary = r.get("primary")
    address = link.get("peer")
    peer = f"{primary} ({address})" if primary and address and state == "connected" \
        else primary
    v = VolumeView(name=r.get("name") or uuid, role="dr", peer=peer, link=state,
                   link_since=link.get("state_since"), in_sync=bool(r.get("in_sync")),
                   uuid=uuid)
    if state == "connected":
        _add_encryption(v, link)
    replica = r.get("state") or "unknown"
    group = r.get("group") if isinstance(r.get("group"), dict) else None
    if group is not None and isinstance(group.get("members"), list):
        v.kind = "group"
        v.details.append(("members", group_members_text(group)))
    if r.get("busy"):
        v.details.append(("busy", f"'{r['busy']}' is running on this replica (its link is "
                                  f"closed meanwhile)"))
    if replica == "promoted":
        return _promoted_view(v, r, clock)
    failback = r.get("failback") if isinstance(r.get("failback"), dict) else None
    under_way = "failback under way" if failback and failback.get("state") in (
        "copying", "full-copy") else "resync under way"
    if replica == "inconsistent" and r.get("inconsistent_since"):
        v.replication = (f"inconsistent since {clock.when(r['inconsistent_since'])} "
                         f"({under_way})")
    else:
        v.replication = replica
    if failback:
        return _failback_view(v, r, failback, replica, state)
    if v.in_sync:
        v.health = True
        return v
    report = r.get("primary_report") or {}
    if state != "connected" and link.get("last_error"):
        v.details.append(("last error", link["last_error"]))
    if state == "connected":
        v.details.append(("lag", _lag(r.get("lag_records"), r.get("lag_bytes"),
                                      report.get("recovery_point_age_s"))))
    else:   # what the primary holds now is unknown here: its last report is a lower bound
        v.details.append(("lag", f"unknown with no primary connected (at least "
                                 f"{r.get('lag_records') or 0} records)"))
    if r.get("behind_reason"):
        v.details.append(("why", r["behind_reason"]))
    if replica == "inconsistent":
        v.details.append(("do", f"let the resync finish; to fail over before it does, run "
                                f"'rollback' in /replication/replicas/{v.name} for the last "
                                f"consistent image"))
        v.health = None if state == "connected" else False
    elif state != "connected":
        v.details.append(("do", "check on the primary that its transmitter for this volume "
                                "runs and can reach this appliance ('/replication status' "
                                "there)"))
        v.health = False
    else:
        v.health = None         # connected and catching up
    return v


def _failback_view(v: VolumeView, r: dict, fb: dict, replica: str, link: str) -> VolumeView:
    """A replica over this site's old mirror, after the new primary's first contact: what it
    found (dr/failback_admission.py), and what the admin does about it."""
    primary = r.get("primary") or fb.get("new_primary") or "the new primary"
    found = fb.get("state")
    if v.in_sync:
        v.health = True
    elif link == "connected":
        v.health = None
    if found == "split-brain":
        v.replication += " (failback: split brain)"
        first = fb.get("first_after_promotion")
        since = f", the first at seq {first[0]}" if isinstance(first, list | tuple) and first \
            else ""
        ours = f"{fb.get('written_after_promotion')} writes{since}" \
            if fb.get("written_after_promotion") else "writes to its bitmap"
        v.details.append(("failback", f"split brain: this site took {ours} after the "
                                      f"promotion (seq {fb.get('base_seq')}), and {primary} "
                                      f"has written since: nothing is copied until you decide"))
        if fb.get("report"):
            v.details.append(("report", f"both change sets: {fb['report']}"))
        keep = fb.get("keep") or r.get("split_brain_keep")
        if keep == "this-site":
            v.details.append(("resolved", f"this site's writes win: this mirror takes "
                                          f"nothing from {primary}"))
            v.health = None
            return v
        v.details.append(("do", f"read the report, then in /replication/replicas/{v.name}: "
                                f"'resolve keep=new-primary' ({primary}'s image wins; this "
                                f"site's writes are kept with their data in a lost-write "
                                f"report first) or 'resolve keep=this-site' (this mirror "
                                f"takes nothing from {primary})"))
        v.health = False
        return v
    if found == "full-copy":
        v.details.append(("failback", f"full copy: this site cannot prove what its old mirror "
                                      f"holds ({fb.get('reason') or 'no reason given'}), so "
                                      f"{primary} copies the whole volume"))
    elif found in ("copying", "done"):
        extent = f"{fb.get('extents', 0)} extents ({human_bytes(fb.get('bytes') or 0)})"
        what = (f"this site's old mirror holds the promoted image (seq {fb.get('base_seq')}) "
                f"plus {extent} written here since ({fb.get('records', 0)} journal records)")
        if replica == "inconsistent":
            got = r.get("resync_bytes_received")
            so_far = f"; {human_bytes(got)} received so far" if got else ""
            v.details.append(("failback", f"copying from {primary}: {what}: only those and "
                                          f"what {primary} changed are copied{so_far}"))
        else:
            v.details.append(("failback", f"copied: {what}; those and what {primary} changed "
                                          f"were copied"))
        if fb.get("lost_writes") and (fb.get("records") or fb.get("dirty_chunks")):
            v.details.append(("lost writes", f"this site's writes {primary} never had, with "
                                             f"their data: {fb['lost_writes']}"))
    if replica == "inconsistent":
        v.details.append(("do", "let the failback finish: the mirror is inconsistent until "
                                "then, with no earlier image to roll back to ('status' on "
                                f"{primary} shows the progress and ETA)"))
    elif not v.in_sync and link != "connected":
        v.details.append(("do", f"check on {primary} that its transmitter for this volume "
                                f"runs and can reach this appliance"))
        v.health = False
    return v


_OFFER_ADVICE = {
    "no-space": "free space in the receiver's replica directory, or make the replica on a "
                "block device: /replication/replicas create name={name} uuid={uuid} "
                "mirror=/dev/<device> size_bytes={size}",
    "unknown-volume": "this receiver provisions no replicas: make one on a block device "
                      "(/replication/replicas create name={name} uuid={uuid} "
                      "mirror=/dev/<device> size_bytes={size})",
    "geometry": "the primary's volume cannot be replicated here as it is (the reason says "
                "why)",
    "provision-failed": "see the receiver's log (journalctl -u appliance-receiver) for why "
                        "the replica could not be created",
}


def _offer_view(offer: dict, clock: _Clock) -> VolumeView:
    """A volume a primary offered that this DR refused to provision (no replica exists)."""
    uuid = offer.get("volume") or "unknown"
    name = offer.get("name") or uuid
    code = offer.get("code") or "refused"
    v = VolumeView(name=name, role="dr", peer=offer.get("primary"), uuid=uuid,
                   link=f"refused ({code})", link_since=offer.get("last_at"),
                   replication="none (not provisioned)", in_sync=False, health=False)
    if offer.get("reason"):
        v.details.append(("reason", offer["reason"]))
    count = offer.get("count")
    if count:
        v.details.append(("offers", f"{count} refused, the last from "
                                    f"{offer.get('peer') or 'the primary'}"))
    advice = _OFFER_ADVICE.get(code)
    if advice:
        size = offer.get("size_bytes")
        v.details.append(("do", advice.format(name=name, uuid=uuid,
                                              size=size if size is not None else "<bytes>")))
    return v


def _promoted_view(v: VolumeView, r: dict, clock: _Clock) -> VolumeView:
    """A replica failed over to: served as a primary here, taking no replication."""
    mark = r.get("promoted") if isinstance(r.get("promoted"), dict) else {}
    v.in_sync = None            # nothing replicates into it: in sync with nothing
    v.replication = "promoted"
    if mark.get("time"):
        v.replication += f" since {clock.when(mark['time'])}"
    facts = []
    if mark.get("at_seq") is not None:
        facts.append(f"holds the primary's image after seq {mark['at_seq']}")
    if mark.get("generation") is not None:
        facts.append(f"generation {mark['generation']}")
    if mark.get("former_primary"):
        facts.append(f"{mark['former_primary']!r} is fenced off (refused with 'promoted')")
    if facts:
        v.details.append(("failover", "; ".join(facts)))
    v.details.append(("do", "serve its mirror through a user:mirror backstore with a NEW "
                            "journal (the line 'promote' printed; docs/failover.md); 'demote' "
                            "makes it a DR replica again once the primary runs on the other "
                            "site"))
    v.health = None
    return v


# --- units --------------------------------------------------------------------------------


def when(epoch: float, *, now: float, tz: dt.tzinfo | None = None) -> str:
    """A moment as the status shows it: the time of day if it is ``now``'s day, else date
    and time."""
    return _Clock(now, tz).when(epoch)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class _Clock:
    now: float
    tz: dt.tzinfo | None

    def when(self, epoch: float) -> str:
        """A moment as the admin reads it: the time of day if today, else date and time."""
        t = dt.datetime.fromtimestamp(epoch, self.tz)
        today = dt.datetime.fromtimestamp(self.now, self.tz).date()
        return t.strftime("%H:%M:%S" if t.date() == today else "%Y-%m-%d %H:%M:%S")
