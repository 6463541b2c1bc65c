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
from targetcli_ext.model import (
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
        if not volume_uuid:
            raise ModelError(f"uuid is missing: give the volume uuid of the new primary of "
                             f"{name} (the line 'promote' printed on the promoted site; there "
                             f"'/replication/volumes/<name> info' shows it too), e.g. failback "
                             f"uuid=6f1c2a52-...")
        try:
            new_uuid = str(uuidlib.UUID(str(volume_uuid)))
        except ValueError as err:
            raise ModelError(f"uuid {volume_uuid!r} is not a uuid: give the new primary's "
                             f"volume uuid (the line 'promote' printed there)") from err
        self._check_backstore_gone(vol)
        path = self.layout.transmitter_toml(name)
        old = self._old_volume(vol, path)
        self.check_failback_files(str(old.mirror), str(old.journal))
        peer, identity = self._peer_identity(site, vol)
        replica = make_replica(name, new_uuid, str(old.mirror), old.size_bytes, old.block_size,
                               allowed_primaries=(identity,), failback_journal=str(old.journal))
        self._check_receiver_free(site, replica)
        check_new_replica(site, replica)
        self.ensure_identity()
        dc.check_receiver(dc.receiver_document(_retired(site, vol, replica), self.layout),
                          self.layout.receiver_toml)
        dc.check_replaceable(self.layout.receiver_toml)
        try:
            self.units.stop(transmitter_unit(name))
        except UnitError as err:
            raise ModelError(f"cannot stop the volume's transmitter: {err}") from err
        try:
            with self.store.locked():
                site = self.store.load()
                vol = known_volume(site, name)
                check_new_replica(site, replica)
                self._write_receiver_with(_retired(site, vol, replica))
        except (ModelError, OSError):
            self._restart_transmitter(name, notes)      # nothing changed: it runs again
            raise
        if dc.is_generated(path):
            remove_durably(path)
        if new_uuid == str(old.volume_uuid):
            notes.warning(f"uuid {new_uuid} is this volume's own uuid here: right only if the "
                          f"new primary serves its mirror under the same path ({old.mirror}); "
                          f"otherwise its transmitter is offered a new replica instead")
        self.reload_receiver(notes)
        return Failback(vol, replica, peer, identity, str(old.volume_uuid), path,
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

    def _old_volume(self, vol: Volume, path: Path) -> TransmitterConfig:
        """The volume's journal, mirror, size and block size, from its transmitter's file."""
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
        if old.mirror is None:
            raise ModelError(f"{path} names no mirror; {by_hand}")
        return old

    def _peer_identity(self, site: Site, vol: Volume) -> tuple[Peer, str]:
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


def _retired(site: Site, vol: Volume, replica: Replica) -> Site:
    """The site with the volume replaced by its replica."""
    return replace(site, volumes={n: v for n, v in site.volumes.items() if n != vol.name},
                   replicas={**site.replicas, replica.name: replica})


def failback_text(fb: Failback) -> str:
    """What the failback did and what happens next, as the admin reads it."""
    r = fb.replica
    return "\n".join([
        f"Volume {fb.volume.name} is now the DR replica {r.name} of volume {r.uuid} from peer "
        f"{fb.peer.name} ({fb.peer.address}), over this site's old mirror.",
        f"  transmitter: {transmitter_unit(fb.volume.name)} stopped, "
        f"{fb.transmitter_file.name} removed (a boot does not start it again)",
        f"  replica:     mirror {r.mirror} ({r.size_bytes} bytes, {r.block_size}-byte blocks), "
        f"failback_journal {r.failback_journal}; only {fb.peer_identity!r} is admitted",
        "Next:",
        f"  1. on {fb.peer.name}: /replication/volumes create backstore=<its backstore> "
        f"peer=<its name for {fb.identity}>: its transmitter connects here, and this site proves from "
        f"{r.failback_journal} what its mirror holds beyond the promoted image, so only what "
        f"changed on either side is copied",
        f"  2. here: '/replication/replicas/{r.name} status' shows the failback: copying (the "
        f"extents and bytes this site wrote since), a split brain to resolve ('resolve "
        f"keep=new-primary' or 'keep=this-site'), or a full copy and why",
        "  3. run 'saveconfig': the saved configuration wins at boot",
    ])
