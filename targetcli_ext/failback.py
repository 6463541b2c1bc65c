"""Failback from the shell: the old primary site becomes the DR of the promoted peer, over its
OLD mirror, so that only what changed is copied back (docs/failover.md, "Failback copies only
what changed"; docs/shell.md, "Failback").

``/replication/volumes/<name> failback uuid=<the new primary's volume uuid>`` on the old
primary turns the replicated volume ``<name>`` into a replica of the same name:

- its journal and mirror are those of its transmitter's file (``transmitter-<name>.toml``,
  rendered from the backstore when the volume was created, and kept when the backstore is
  gone), read with the transmitter's own parser;
- no backstore may serve them any more (its handler holds them; the receiver must be their
  only writer from now on): refused until ``/backstores/user:mirror/<name>`` is deleted;
- the transmitter is stopped and its file removed, the volume leaves site.json (as
  ``/replication/volumes delete``), so a boot does not start it again;
- a replica takes its place in site.json and receiver.toml: ``uuid`` the new primary's,
  ``mirror`` the old mirror, its size and block size, ``failback_journal`` the old journal,
  ``allowed_primaries`` the peer's identity (from its pinned certificate); the receiver
  reloads.

Everything is checked before anything changes; a refusal names what to fix.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.replication.config import TransmitterConfig
from appliance.statefile import remove_durably
from targetcli_ext import daemon_config as dc
from targetcli_ext.group_ops import known_group
from targetcli_ext.model import (
    Group,
    ModelError,
    Peer,
    Replica,
    Site,
    Volume,
    check_new_replica,
    known_volume,
    make_replica,
)
from targetcli_ext.units import UnitError, transmitter_unit


@dataclass(frozen=True)
class Failback:
    """What a failback set up, for the text the admin reads."""

    volume: Volume
    replica: Replica
    peer: Peer
    peer_identity: str
    old_uuid: str
    transmitter_file: Path
    identity: str               # this site's, as the peer knows it


class FailbackOperations:
    """Mixed into ReplicationContext beside SiteOperations (its ``store``, ``layout``,
    ``units``, ``backstore``, ``check_failback_files``, ``reload_receiver``)."""

    def failback_volume(self, name: str, volume_uuid: str | None, notes) -> Failback:
        site = self.store.load()
        vol = known_volume(site, name)
        new_uuid = _new_uuid(volume_uuid, name, "volume", f"/replication/volumes/{name}")
        self._check_backstore_gone(vol)
        old = self._old_volume(vol, self.layout.transmitter_toml(name))
        self.check_failback_files(str(old.mirror), str(old.journal))
        peer, identity = self._peer_identity(site, vol)
        replica = make_replica(name, new_uuid, str(old.mirror), old.size_bytes, old.block_size,
                               allowed_primaries=(identity,), failback_journal=str(old.journal))
        done = self._become_replica(vol, replica, peer, str(old.volume_uuid), notes)
        if new_uuid == str(old.volume_uuid):
            notes.warning(f"uuid {new_uuid} is this volume's own uuid here: right only if the "
                          f"new primary serves its mirror under the same path ({old.mirror}); "
                          f"otherwise its transmitter is offered a new replica instead")
        return done

    def failback_group(self, name: str, group_uuid: str | None, notes) -> Failback:
        """The consistency group ``name`` becomes the replica of the promoted peer's group
        over its OLD layout (its members' old mirrors), with its old group journal as
        failback_journal (docs/groups.md, "Failover and failback")."""
        site = self.store.load()
        group = known_group(site, name)
        new_uuid = _new_uuid(group_uuid, name, "group", f"/replication/groups/{name}")
        if new_uuid == group.uuid:
            raise ModelError(f"uuid {new_uuid} is this group's own uuid: give the uuid of the "
                             f"group the promoted site made over its members ('/replication/"
                             f"groups create ... promoted=' printed it)")
        self._check_members_gone(group)
        old = self._old_volume(group, self.layout.transmitter_toml(name))
        layout = self.group_layout(name)
        mirror = str(self.layout.group_layout(name))
        self.check_failback_files(mirror, str(old.journal))
        peer, identity = self._peer_identity(site, group)
        replica = make_replica(name, new_uuid, mirror, layout.num_blocks * layout.block_size,
                               layout.block_size, allowed_primaries=(identity,),
                               failback_journal=str(old.journal))
        return self._become_replica(group, replica, peer, group.uuid, notes)

    def _become_replica(self, replicated: Volume | Group, replica: Replica, peer: Peer,
                        old_uuid: str, notes) -> Failback:
        """Stop and retire ``replicated``'s transmitter; ``replica`` (its uuid, mirror and
        failback journal, admitting only ``peer``, now the new primary) takes its place in
        site.json and receiver.toml; the receiver reloads. Everything is checked first:
        nothing changes when refused."""
        name = replicated.name
        path = self.layout.transmitter_toml(name)
        site = self.store.load()
        self._check_receiver_free(site, replica)
        check_new_replica(site, replica)
        self.ensure_identity()
        dc.check_receiver(dc.receiver_document(_retired(site, replicated, replica),
                                               self.layout), self.layout.receiver_toml)
        dc.check_replaceable(self.layout.receiver_toml)
        try:
            self.units.stop(transmitter_unit(name))
        except UnitError as err:
            raise ModelError(f"cannot stop the {type(replicated).__name__.lower()}'s "
                             f"transmitter: {err}") from err
        try:
            with self.store.locked():
                site = self.store.load()
                _retired(site, replicated, replica)         # still there: ModelError if not
                check_new_replica(site, replica)
                self._write_receiver_with(_retired(site, replicated, replica))
        except (ModelError, OSError):
            self._restart_transmitter(name, notes)      # nothing changed: it runs again
            raise
        if dc.is_generated(path):
            remove_durably(path)
        self.reload_receiver(notes)
        return Failback(replicated, replica, peer, replica.allowed_primaries[0], old_uuid, path,
                        self.store.load().identity or "this site")

    def _restart_transmitter(self, name: str, notes) -> None:
        try:
            self.units.start(transmitter_unit(name))
        except UnitError as err:
            notes.warning(f"{transmitter_unit(name)} was stopped for the failback and does not "
                          f"start again: {err}")

    # --- the checks -----------------------------------------------------------------------

    def _check_backstore_gone(self, vol: Volume) -> None:
        try:
            self.backstore(vol.backstore)
        except ModelError:
            return              # gone (or no longer user:mirror): its handler has stopped
        raise ModelError(f"backstore user:mirror/{vol.backstore} still exists: its handler "
                         f"holds the volume's journal and mirror. Delete "
                         f"/backstores/user:mirror/{vol.backstore} first (the hosts lose "
                         f"that LUN; its files stay), then run failback again")

    def _check_members_gone(self, group: Group) -> None:
        serving = sorted(b.backstore for b in self.member_backstores().values()
                         if b.group == group.name)
        if serving:
            raise ModelError(f"backstore(s) {', '.join(serving)} still serve members of group "
                             f"{group.name}: their handler holds the group's journal and "
                             f"mirrors. Delete /backstores/user:mirror/{serving[0]} (each of "
                             f"them) first (the hosts lose those LUNs; their files stay), then "
                             f"run failback again")

    def _old_volume(self, vol: Volume | Group, path: Path) -> TransmitterConfig:
        """The volume's journal, mirror, size and block size (a group's: its journal), from
        its transmitter's file."""
        by_hand = ("make the replica yourself: /replication/replicas create name=... uuid=... "
                   "mirror=<the old mirror> size_bytes=<its size> failback_journal=<the old "
                   "journal>")
        if path.exists() and not dc.is_generated(path):
            raise ModelError(f"{path} was written by hand: the boot would start it again; "
                             f"move it away, then {by_hand}")
        try:
            old = dc.read_transmitter(path)
        except ModelError as err:
            raise ModelError(f"cannot tell where volume {vol.name}'s journal and mirror are: "
                             f"{err}; {by_hand}") from err
        if old.mirror is None and not isinstance(vol, Group):   # a group's is its layout
            raise ModelError(f"{path} names no mirror; {by_hand}")
        return old

    def _peer_identity(self, site: Site, vol: Volume | Group) -> tuple[Peer, str]:
        peer = site.peers[vol.peer]
        pem = self.layout.peer_pem(peer.name)
        if not pem.is_file():
            raise ModelError(f"peer {peer.name}'s certificate has not been fetched yet: the "
                             f"receiver admits the new primary by it. Make {peer.address} "
                             f"reachable, run '/replication/peers refresh', then failback "
                             f"again")
        return peer, dc.certificate_identity(pem)

    def _check_receiver_free(self, site: Site, replica: Replica) -> None:
        """A replica of that uuid the receiver provisioned (the new primary connected before
        the failback was set up) would take the failback's place."""
        snapshot = getattr(self, "snapshot", None)
        if snapshot is None:
            return
        volumes = (snapshot(fresh=True).get("receiver") or {}).get("volumes") or {}
        if replica.uuid in volumes and all(r.uuid != replica.uuid
                                           for r in site.replicas.values()):
            shown = volumes[replica.uuid].get("name") or replica.uuid
            raise ModelError(f"the receiver already keeps a replica of volume {replica.uuid} "
                             f"(provisioned when the new primary connected before this "
                             f"failback): forget it first ('/replication/replicas/{shown} "
                             f"forget remove_data=true'), then run failback again")


def _retired(site: Site, replicated: Volume | Group, replica: Replica) -> Site:
    """The site with the volume (or group) replaced by its replica."""
    if isinstance(replicated, Group):
        known_group(site, replicated.name)
        return replace(site, groups={n: g for n, g in site.groups.items()
                                     if n != replicated.name},
                       replicas={**site.replicas, replica.name: replica})
    known_volume(site, replicated.name)
    return replace(site, volumes={n: v for n, v in site.volumes.items()
                                  if n != replicated.name},
                   replicas={**site.replicas, replica.name: replica})


def _new_uuid(given: object, name: str, kind: str, info: str) -> str:
    """The new primary's volume (or group) uuid, as the admin typed it."""
    if not given:
        raise ModelError(f"uuid is missing: give the {kind} uuid of the new primary of {name} "
                         f"(the line the promoted site printed; there '{info} info' shows "
                         f"it too), e.g. failback uuid=6f1c2a52-...")
    try:
        return str(uuidlib.UUID(str(given)))
    except ValueError as err:
        raise ModelError(f"uuid {given!r} is not a uuid: give the new primary's {kind} uuid "
                         f"(the line the promoted site printed)") from err


def failback_text(fb: Failback) -> str:
    """What the failback did and what happens next, as the admin reads it."""
    r = fb.replica
    group = isinstance(fb.volume, Group)
    if group:
        what = (f"Group {fb.volume.name} is now the DR replica {r.name} of group {r.uuid} from "
                f"peer {fb.peer.name} ({fb.peer.address}), over this site's old members "
                f"(layout {r.mirror}).")
        peer_step = (f"  1. on {fb.peer.name}: the group made with '/replication/groups create "
                     f"... promoted=' replicates to its name for {fb.identity}: its "
                     f"transmitter connects here (or retries until it does)")
    else:
        what = (f"Volume {fb.volume.name} is now the DR replica {r.name} of volume {r.uuid} "
                f"from peer {fb.peer.name} ({fb.peer.address}), over this site's old mirror.")
        peer_step = (f"  1. on {fb.peer.name}: /replication/volumes create backstore=<its "
                     f"backstore> peer=<its name for {fb.identity}>: its transmitter connects "
                     f"here")
    return "\n".join([
        what,
        f"  transmitter: {transmitter_unit(fb.volume.name)} stopped, "
        f"{fb.transmitter_file.name} removed (a boot does not start it again)",
        f"  replica:     mirror {r.mirror} ({r.size_bytes} bytes, {r.block_size}-byte blocks), "
        f"failback_journal {r.failback_journal}; only {fb.peer_identity!r} is admitted",
        "Next:",
        f"{peer_step}, and this site proves from {r.failback_journal} what its "
        f"{'members hold' if group else 'mirror holds'} beyond the promoted image, so only what "
        f"changed on either side is copied",
        f"  2. here: '/replication/replicas/{r.name} status' shows the failback: copying (the "
        f"extents and bytes this site wrote since), a split brain to resolve ('resolve "
        f"keep=new-primary' or 'keep=this-site'), or a full copy and why",
        "  3. run 'saveconfig': the saved configuration wins at boot",
    ])
