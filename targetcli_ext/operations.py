"""What the /replication commands do to the appliance: site.json, the pinned certificates, the
daemons' TOML files and their units, changed together.

Each operation checks everything first (the input, LIO's backstores, the rendered file with
the daemon's own parser) and raises ModelError naming what to fix before anything is written;
then it writes the files (under site.json's lock, so two shells never interleave) and only
then asks the daemons to take the change (start a unit, ``reload`` the receiver). A daemon that
cannot be reached does not undo a configuration that is valid: it is reported as a warning
saying what to run. Adding or removing a volume touches that volume's transmitter alone;
pairing changes receiver.toml alone, and the receiver reloads it without dropping the other
volumes' sessions.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from configshell_fb import ExecutionError

from appliance.replication.pairing import CertificateFetchError, fetch_certificate
from appliance.replication.tls import fingerprint
from appliance.statefile import remove_durably, write_text_atomic
from targetcli_ext import daemon_config as dc
from targetcli_ext.backstores import (
    MirrorBackstore,
    StorageObjects,
    backstores_using,
    find_mirror_backstore,
    mirror_backstores,
    rtslib_storage_objects,
)
from targetcli_ext.identity import ensure_certificate
from targetcli_ext.model import (
    ModelError,
    Peer,
    Replica,
    Site,
    SiteStore,
    Volume,
    check_new_peer,
    check_new_replica,
    check_peer_unused,
    known_peer,
    known_volume,
    make_replica,
    parse_address,
    parse_fingerprint,
    parse_name,
)
from targetcli_ext.units import RECEIVER_UNIT, UnitError, Units, transmitter_unit

Fetcher = Callable[[str, float], bytes]


@dataclass
class Notes:
    """What an operation has to tell the admin besides its result."""

    lines: list[tuple[str, str]] = field(default_factory=list)     # (info|warning, text)

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))


def pem_of(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


class SiteOperations:
    """Mixed into ReplicationContext: needs ``store``, ``config``, ``units``, ``call``,
    ``storage_objects`` and ``fetch``."""

    store: SiteStore
    units: Units
    fetch: Fetcher
    storage_objects: StorageObjects

    def _init_operations(self, *, units: Units | None, storage_objects: StorageObjects | None,
                         fetch: Fetcher | None) -> None:
        self.units = units or Units()
        self.storage_objects = storage_objects or rtslib_storage_objects
        self.fetch = fetch or fetch_certificate

    @property
    def layout(self) -> dc.Layout:
        return self.config.layout            # type: ignore[attr-defined]

    # --- identity ---------------------------------------------------------------------

    def ensure_identity(self) -> Site:
        """The site with its identity, and its certificate made if missing."""
        site = self.store.ensure_identity()
        ensure_certificate(self.layout.state_dir, site.identity)
        return site

    # --- peers ------------------------------------------------------------------------

    def certificate_pending(self, peer: str) -> str | None:
        """None when the peer's certificate is pinned; else why it is not fetched yet."""
        if self.layout.peer_pem(peer).is_file():
            return None
        try:
            return self.layout.peer_pending(peer).read_text().strip() or "not tried yet"
        except OSError:
            return "not tried yet"

    def _fetch_checked(self, peer: Peer) -> tuple[str | None, str | None]:
        """(PEM, None) when the peer presents the pinned fingerprint, (None, why) when it
        cannot be reached; ModelError when it presents another certificate."""
        try:
            der = self.fetch(peer.address, self.config.fetch_timeout_s)  # type: ignore[attr-defined]
        except CertificateFetchError as err:
            return None, str(err)
        presented = fingerprint(der)
        if presented != peer.fingerprint:
            raise ModelError(
                f"the peer at {peer.address} presented certificate {presented}, not "
                f"{peer.fingerprint} as given: check the fingerprint '/replication info' shows "
                f"on the peer, and that {peer.address} is the peer's receiver and not another "
                f"machine")
        return pem_of(der), None

    def pair_peer(self, name: str, address: str, fingerprint_text: str,
                  notes: Notes) -> Peer:
        peer = Peer(parse_name(name, "peer name"), parse_address(address),
                    parse_fingerprint(fingerprint_text))
        check_new_peer(self.store.load(), peer)
        dc.check_replaceable(self.layout.receiver_toml)
        self._fetch_pending_first(notes)
        pem, why = self._fetch_checked(peer)
        self.ensure_identity()          # the receiver presents it: made on the first pairing
        with self.store.locked():
            site = self.store.load()
            check_new_peer(site, peer)
            new = replace(site, peers={**site.peers, peer.name: peer})
            extra = {peer.name} if pem else set()
            doc = dc.receiver_document(new, self.layout, also_pinned=extra)
            dc.check_receiver(doc, self.layout.receiver_toml)
            dc.check_replaceable(self.layout.receiver_toml)
            self._store_certificate(peer.name, pem, why)
            self.store.save(new)
            dc.write_generated(self.layout.receiver_toml, doc)
        if pem:
            notes.info(f"Fetched the certificate of {peer.address}: fingerprint "
                       f"{peer.fingerprint} as given, pinned.")
        else:
            notes.warning(f"Certificate of peer {peer.name} not fetched yet: {why}. The "
                          f"pairing is saved; it is fetched again on "
                          f"'/replication/peers refresh', before each configuration change "
                          f"and at boot.")
        self.reload_receiver(notes)
        return peer

    def _store_certificate(self, name: str, pem: str | None, why: str | None) -> None:
        self.layout.peers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if pem:
            write_text_atomic(self.layout.peer_pem(name), pem)
            remove_durably(self.layout.peer_pending(name))
        else:
            remove_durably(self.layout.peer_pem(name))       # never a stale pin
            write_text_atomic(self.layout.peer_pending(name), (why or "") + "\n")

    def fetch_pending(self, notes: Notes, names: list[str] | None = None) -> list[str]:
        """Fetch the certificates of paired peers that have none yet; returns the peers whose
        certificate got pinned (receiver.toml then rewritten and the receiver reloaded)."""
        site = self.store.load()
        fetched = []
        for peer in site.peers.values():
            if (names is not None and peer.name not in names) \
                    or self.certificate_pending(peer.name) is None:
                continue
            try:
                pem, why = self._fetch_checked(peer)
            except ModelError as err:
                pem, why = None, str(err)
                notes.warning(f"Peer {peer.name}: {why}; not pinned.")
            with self.store.locked():
                if peer.name not in self.store.load().peers:
                    continue
                self._store_certificate(peer.name, pem, why)
            if pem:
                fetched.append(peer.name)
                notes.info(f"Fetched and pinned the certificate of peer {peer.name} "
                           f"({peer.fingerprint}).")
            elif why and not why.startswith("the peer at"):
                notes.warning(f"Certificate of peer {peer.name} not fetched yet: {why}")
        if fetched:
            self.write_receiver(notes)
            self.reload_receiver(notes)
        return fetched

    def _fetch_pending_first(self, notes: Notes, skip: str | None = None) -> None:
        """Before a change of the configuration: the certificates still pending are asked
        for again (each unreachable peer costs its fetch timeout)."""
        try:
            pending = [n for n in self.store.load().peers
                       if n != skip and self.certificate_pending(n) is not None]
        except ModelError:
            return              # the change itself reports the broken file
        if pending:
            self.fetch_pending(notes, pending)

    def unpair_peer(self, name: str, notes: Notes) -> Peer:
        self._fetch_pending_first(notes, skip=name)
        with self.store.locked():
            site = self.store.load()
            peer = known_peer(site, name)
            check_peer_unused(site, name)
            new = replace(site, peers={n: p for n, p in site.peers.items() if n != name})
            doc = dc.receiver_document(new, self.layout)
            dc.check_receiver(doc, self.layout.receiver_toml)
            dc.check_replaceable(self.layout.receiver_toml)
            self.store.save(new)
            remove_durably(self.layout.peer_pem(name))
            remove_durably(self.layout.peer_pending(name))
            dc.write_generated(self.layout.receiver_toml, doc)
        self.reload_receiver(notes)
        return peer

    # --- the receiver -----------------------------------------------------------------

    def write_receiver(self, notes: Notes) -> bool:
        """Render receiver.toml from site.json (identity and certificate made if missing);
        False when a hand-written receiver.toml is kept."""
        site = self.ensure_identity()
        path = self.layout.receiver_toml
        if path.exists() and not dc.is_generated(path):
            notes.warning(f"{path} was written by hand: kept as it is (move it away to let "
                          f"/replication manage the receiver)")
            return False
        doc = dc.receiver_document(site, self.layout)
        dc.check_receiver(doc, path)
        with self.store.locked():
            dc.write_generated(path, doc)
        return True

    def reload_receiver(self, notes: Notes) -> None:
        """The receiver takes receiver.toml as it is now: reloaded when it runs (sessions of
        untouched volumes stay up), started otherwise."""
        try:
            if self.units.is_active(RECEIVER_UNIT):
                try:
                    done = self.call(self.layout.receiver_socket, "reload")  # type: ignore[attr-defined]
                except ExecutionError as err:
                    if "cannot talk to control socket" not in str(err):
                        raise           # the receiver refused: its reason is the message
                    # Running but not answering (starting up, or an old receiver without a
                    # socket): a restart reads the file for sure.
                    self.units.restart(RECEIVER_UNIT)
                    notes.info(f"Restarted {RECEIVER_UNIT} (its control socket did not "
                               f"answer: {err}).")
                    return
                if isinstance(done, dict) and (done.get("added") or done.get("removed")):
                    notes.info(f"Receiver reloaded: added {done.get('added') or 'none'}, "
                               f"removed {done.get('removed') or 'none'}.")
                else:
                    notes.info("Receiver reloaded.")
            else:
                self.units.start(RECEIVER_UNIT)
                notes.info(f"Started {RECEIVER_UNIT}.")
        except (UnitError, ModelError, ExecutionError) as err:
            notes.warning(f"The receiver did not take the new configuration: {err}; the "
                          f"configuration is saved: run 'systemctl restart {RECEIVER_UNIT}'")

    # --- replicas (a DR's replicas on the admin's block devices) -------------------------

    def add_replica(self, name: str, volume_uuid: str, mirror: str, size_bytes: object,
                    block_size: object, notes: Notes, *,
                    failback_journal: str | None = None) -> Replica:
        """A replica on the admin's device; with ``failback_journal`` a failback onto this
        site's old mirror (docs/failover.md): that journal and mirror must be served by no
        backstore any more."""
        replica = make_replica(name, volume_uuid, mirror, size_bytes, block_size,
                               failback_journal=failback_journal)
        if replica.failback_journal is not None:
            self.check_failback_files(replica.mirror, replica.failback_journal)
        self._fetch_pending_first(notes)
        self.ensure_identity()
        with self.store.locked():
            site = self.store.load()
            check_new_replica(site, replica)
            new = replace(site, replicas={**site.replicas, replica.name: replica})
            self._write_receiver_with(new)
        self.reload_receiver(notes)
        return replica

    def check_failback_files(self, mirror: str, journal: str) -> None:
        """The old journal exists and no backstore serves it or the mirror: a handler holds
        them while its backstore exists, and the receiver must be the only writer."""
        if not Path(journal).exists():
            raise ModelError(f"failback_journal {journal!r} does not exist: give this site's "
                             f"journal from when it was the primary of {mirror} (the "
                             f"journal= of its old backstore's cfgstring)")
        try:
            users = backstores_using(self.storage_objects(), mirror, journal)
        except Exception as err:        # rtslib: LIO's configuration cannot be read
            raise ModelError(f"cannot read LIO's backstores to check that none serves "
                             f"{mirror} or {journal}: {err}") from err
        if users:
            raise ModelError(f"backstore user:mirror/{users[0]} still serves {mirror} or "
                             f"{journal} (its handler holds them): delete "
                             f"/backstores/user:mirror/{users[0]} first (the hosts lose that "
                             f"LUN; the files stay)")

    def remove_replica(self, name: str, notes: Notes) -> None:
        self._fetch_pending_first(notes)
        with self.store.locked():
            site = self.store.load()
            if name not in site.replicas:
                known = ", ".join(sorted(site.replicas)) or "none"
                raise ModelError(f"no replica named {name!r} (replicas: {known})")
            new = replace(site, replicas={n: r for n, r in site.replicas.items() if n != name})
            self._write_receiver_with(new)
        self.reload_receiver(notes)

    def receiver_follows(self, new: Site) -> bool:
        """Under the lock, with a volume or group added or removed: receiver.toml (when the
        shell writes it) names this site's primaries again (``local_primaries``); True when
        it changed. The caller then has a running receiver reload it."""
        path = self.layout.receiver_toml
        if not path.exists() or not dc.is_generated(path):
            return False
        doc = dc.receiver_document(new, self.layout)
        dc.check_receiver(doc, path)
        return dc.write_generated(path, doc)

    def reload_running_receiver(self, changed: bool, notes: Notes) -> None:
        """After ``receiver_follows``: a running receiver takes the file (one that is not
        running reads it when it starts)."""
        try:
            running = changed and self.units.is_active(RECEIVER_UNIT)
        except UnitError:
            running = False
        if running:
            self.reload_receiver(notes)

    def _write_receiver_with(self, new: Site) -> None:
        """Under the lock: check, then save site.json and receiver.toml."""
        doc = dc.receiver_document(new, self.layout)
        dc.check_receiver(doc, self.layout.receiver_toml)
        dc.check_replaceable(self.layout.receiver_toml)
        self.store.save(new)
        dc.write_generated(self.layout.receiver_toml, doc)

    # --- volumes ----------------------------------------------------------------------

    def replicable_backstores(self) -> list[str]:
        """user:mirror backstores not replicated yet (for Tab completion)."""
        try:
            used = {v.backstore for v in self.store.load().volumes.values()}
            used |= set(self.member_backstores())  # type: ignore[attr-defined]
            found = mirror_backstores(self.storage_objects())
        except Exception:       # completion must never fail the shell
            return []
        return sorted(n for n, b in found.items()
                      if isinstance(b, MirrorBackstore) and n not in used)

    def backstore(self, name: str) -> MirrorBackstore:
        return find_mirror_backstore(self.storage_objects(), name)

    def create_volume(self, backstore: str, peer: str, notes: Notes) -> Volume:
        name = parse_name(backstore, "backstore")
        peer = parse_name(peer, "peer")

        def check(site: Site) -> MirrorBackstore:
            group = self.group_of_backstore(name)       # type: ignore[attr-defined]
            if group is not None:
                raise ModelError(f"backstore {name!r} is a member of consistency group "
                                 f"{group}: the group replicates it, in one write order with "
                                 f"its other members (/replication/groups/{group}); a member "
                                 f"is not also a volume of its own")
            for vol in site.volumes.values():
                if vol.backstore == name or vol.name == name:
                    raise ModelError(f"backstore {name!r} is already replicated (volume "
                                     f"{vol.name} to peer {vol.peer}): see "
                                     f"/replication/volumes/{vol.name}")
            known_peer(site, peer, to_replicate=True)
            found = self.backstore(name)
            group = self.group_of_backstore(name, found.config.mirror)  # type: ignore[attr-defined]
            if group is not None:
                raise ModelError(f"backstore {name!r} serves a mirror of consistency group "
                                 f"{group} ({found.config.mirror}): the group replicates it "
                                 f"(/replication/groups/{group})")
            if name in site.groups:
                raise ModelError(f"backstore {name!r}: a consistency group has that name "
                                 f"(/replication/groups/{name}); its transmitter would share "
                                 f"the unit: rename the backstore")
            for vol in site.volumes.values():
                try:
                    other = self.backstore(vol.backstore)
                except ModelError:
                    continue
                if other.uuid == found.uuid:
                    raise ModelError(f"backstore {name!r} serves the same mirror as volume "
                                     f"{vol.name} ({found.config.mirror}), which is "
                                     f"replicated already")
            return found

        check(self.store.load())
        self._fetch_pending_first(notes)
        if self.certificate_pending(peer) is not None:
            why = self.certificate_pending(peer)
            if why is not None:
                raise ModelError(
                    f"peer {peer}'s certificate has not been fetched yet ({why}): the "
                    f"transmitter needs it to authenticate the peer. Make "
                    f"{self.store.load().peers[peer].address} reachable (the peer's "
                    f"receiver runs once '/replication info' made its identity), then run "
                    f"'/replication/peers refresh' and create the volume again")
        self.ensure_identity()
        with self.store.locked():
            site = self.store.load()
            found = check(site)
            vol = Volume(name, name, peer, uuid=str(found.uuid))
            path = self.layout.transmitter_toml(name)
            doc = dc.transmitter_document(site, vol, found, self.layout)
            dc.check_transmitter(doc, path)
            dc.check_replaceable(path)
            dc.write_generated(path, doc)
            new = replace(site, volumes={**site.volumes, name: vol})
            self.store.save(new)
            receiver_changed = self.receiver_follows(new)
        self.reload_running_receiver(receiver_changed, notes)
        notes.info(f"Created volume {name}: user:mirror/{name} (uuid {found.uuid}, "
                   f"{found.size_bytes} bytes) replicates to peer {peer} "
                   f"({site.peers[peer].address}).")
        try:
            self.units.start(transmitter_unit(name))
            notes.info(f"Started {transmitter_unit(name)}.")
        except UnitError as err:
            notes.warning(f"The transmitter did not start: {err}; the volume is configured: "
                          f"run 'systemctl start {transmitter_unit(name)}'")
        return vol

    def delete_volume(self, name: str, notes: Notes) -> Volume:
        site = self.store.load()
        vol = known_volume(site, name)
        try:
            self.units.stop(transmitter_unit(name))
        except UnitError as err:
            raise ModelError(f"cannot stop the volume's transmitter: {err}") from err
        try:
            found: MirrorBackstore | None = self.backstore(vol.backstore)
        except ModelError:
            found = None
        with self.store.locked():
            site = self.store.load()
            vol = known_volume(site, name)
            path = self.layout.transmitter_toml(name)
            if dc.is_generated(path):
                remove_durably(path)
            new = replace(site, volumes={n: v for n, v in site.volumes.items() if n != name})
            self.store.save(new)
            receiver_changed = self.receiver_follows(new)
        self.reload_running_receiver(receiver_changed, notes)
        peer = site.peers.get(vol.peer)
        where = f"peer {vol.peer}" + (f" ({peer.address})" if peer else "")
        if found is not None:
            cfg = found.config
            kept = (f"journal {cfg.journal}, mirror {cfg.mirror} and bitmap "
                    f"{cfg.bitmap_path} (backstore user:mirror/{vol.backstore}, unchanged)")
            replica = f"volume uuid {found.uuid}"
        else:
            kept = f"the files of backstore {vol.backstore}"
            replica = f"volume {name}"
        notes.info(f"Deleted volume {name}: its transmitter is stopped and "
                   f"{path.name} removed.")
        notes.info(f"Still on disk here: {kept}. At {where}: the replica of {replica} stays "
                   f"until that appliance's admin forgets it (on the peer: "
                   f"/replication/replicas, 'forget').")
        return vol

    def apply_volume(self, name: str) -> bool:
        """Rewrite the volume's transmitter TOML from site.json (settings changed with
        ``SiteStore.update_volume``), without restarting it: the running transmitter gets
        the change live (its control socket), a restart reads it from the file. True when
        the file changed."""
        with self.store.locked():
            site = self.store.load()
            vol = known_volume(site, name)
            path = self.layout.transmitter_toml(name)
            doc = dc.transmitter_document(site, vol, self.backstore(vol.backstore),
                                          self.layout)
            dc.check_transmitter(doc, path)
            return dc.write_generated(path, doc)
