"""The /replication tree: site, peers and volumes, as native targetcli nodes.

Help comes from the ``ui_command_*`` docstrings, values complete with Tab through
``ui_complete_*``, and ``ls`` shows each node's state in one line (``summary()``: green when
healthy, red when something needs the admin, plain while catching up). Refused input raises
``ExecutionError`` with a message naming what to fix, before anything changes.
"""

from __future__ import annotations

from configshell_fb import ExecutionError
from targetcli.ui_node import UINode

from appliance import __version__ as appliance_version
from targetcli_ext.context import ReplicationContext
from targetcli_ext.group_nodes import UIGroups
from targetcli_ext.identity import ensure_certificate
from targetcli_ext.link_settings import link_document
from targetcli_ext.model import ModelError, Peer
from targetcli_ext.monitoring_node import UIMonitoring
from targetcli_ext.operations import Notes
from targetcli_ext.replica_nodes import UIReplicas
from targetcli_ext.steering import complete
from targetcli_ext.volume_node import UIVolume


def _changed(node, what, *args):
    """Run an operation of the context: its notes logged, a refusal an ExecutionError that
    says nothing changed."""
    notes = Notes()
    try:
        result = what(*args, notes)
    except ModelError as err:
        _say(node, notes)
        raise ExecutionError(f"{err}; nothing changed") from err
    except OSError as err:
        _say(node, notes)
        raise ExecutionError(f"cannot write in {node.ctx.config.state_dir}: {err} (run as "
                             f"root)") from err
    _say(node, notes)
    return result


def _say(node, notes: Notes) -> None:
    for level, text in notes.lines:
        (node.shell.log.warning if level == "warning" else node.shell.log.info)(text)


def _health(views) -> bool | None:
    if all(v.health is True for v in views):
        return True
    return False if any(v.health is False for v in views) else None


class UIReplication(UINode):
    """
    Replication of this appliance's volumes to a peer appliance at another site: the
    site's identity and certificate ('info'), the paired peers, the replicated volumes and
    their status ('status'), the metrics endpoint and alerts (monitoring).
    """

    def __init__(self, parent, ctx: ReplicationContext) -> None:
        UINode.__init__(self, "replication", parent)
        self.ctx = ctx
        UIPeers(self)
        UIVolumes(self)
        UIGroups(self)
        UIReplicas(self)
        UIMonitoring(self)
        self.define_config_group_param(
            "link", "kernel_tls", "bool",
            "true: the kernel encrypts the replication link (kTLS; TLS 1.2 with ECDHE and "
            "AES-GCM), where it has the tls module")

    def summary(self):
        try:
            site = self.ctx.store.load()
        except ModelError as err:
            return f"site settings unreadable: {err}", False
        views = [v for v in self.ctx.views() if v.kind != "member"]  # its group says it
        groups = [v for v in views if v.kind == "group"]
        views = [v for v in views if v.kind != "group"]
        in_sync = sum(1 for v in views if v.in_sync)
        who = site.identity or "identity not created yet: run 'info'"
        pending = sum(1 for n in site.peers if self.ctx.certificate_pending(n) is not None)
        peers = f"peers: {len(site.peers)}" + (
            f" ({pending} certificate{'s' if pending > 1 else ''} not fetched yet)"
            if pending else "")
        health = _health(views + groups) if views or groups else None
        text = f"{who}, {peers}, volumes: {len(views)} ({in_sync} in sync)"
        if groups:
            text += (f", groups: {len(groups)} "
                     f"({sum(1 for v in groups if v.in_sync)} in sync)")
        return text, False if pending else health

    def ui_command_info(self):
        """
        Shows this site's identity, the address its receiver listens on, its certificate's
        fingerprint and the software version. The first time, creates the identity (the
        host name) and a key pair with a self-signed certificate in the state directory.

        Give the fingerprint to the peer's admin: on the peer,
        /replication/peers create name=<this site> address=<host:port> fingerprint=<it>
        """
        try:
            site = self.ctx.store.ensure_identity()
            cert = ensure_certificate(self.ctx.config.state_dir, site.identity)
        except ModelError as err:
            raise ExecutionError(str(err)) from err
        except OSError as err:
            raise ExecutionError(f"cannot create the site identity in "
                                 f"{self.ctx.config.state_dir}: {err} (run as root)") from err
        from targetcli import __version__ as targetcli_version
        rows = [("identity", site.identity), ("listen", site.listen),
                ("fingerprint", cert.fingerprint), ("certificate", str(cert.cert)),
                ("version", f"appliance {appliance_version}, targetcli {targetcli_version}")]
        for key, value in rows:
            self.shell.con.display(f"{key + ':':<13}{value}")

    def ui_command_set(self, group=None, **parameter):
        """
        Sets configuration parameters of a group. 'set link' sets how this site's
        replication links are encrypted, for every volume and group it replicates and every
        primary it serves: kernel_tls=true has the kernel encrypt and decrypt them (kTLS), at
        TLS 1.2 with ECDHE and AES-GCM (OpenSSL 3.0 gives the kernel both directions only
        there); false (the default) keeps OpenSSL's TLS in user space (1.2 or 1.3). The
        daemons' files are rewritten, the running transmitters restarted and the receiver
        reloaded. Where the kernel has no tls module the links stay in user space and
        'status' says why. 'set global' sets the shell's preferences.

        EXAMPLE
        =======
        set link kernel_tls=true

        SEE ALSO
        ========
        get, status
        """
        if group != "link" or not parameter:
            return UINode.ui_command_set(self, group, **parameter)
        self.assert_root()
        site = _changed(self, self.ctx.set_link, dict(parameter))
        for param in parameter:
            shown = "true" if link_document(site)[param] else "false"
            self.shell.con.display(f"Parameter {param} is now '{shown}'.")
        return None

    def ui_setgroup_link(self, parameter, value):
        self.ui_command_set("link", **{parameter: value})

    def ui_getgroup_link(self, parameter):
        try:
            return link_document(self.ctx.store.load())[parameter]
        except ModelError as err:
            raise ExecutionError(str(err)) from err

    def ui_command_status(self):
        """
        Shows every replicated volume, one block each, as the daemons report it now: role,
        peer, link, replication state (replicating, paused, logging-to-bitmap, resync with
        rate and ETA, inconsistent), journal fill and whether the DR copy is in sync. A
        volume that is behind also says what it lacks (records, bytes, recovery point), why,
        and what to do.

        SEE ALSO
        ========
        ls, volumes/ status
        """
        self.shell.con.display(self.ctx.render().rstrip("\n"))


class UIPeers(UINode):
    """
    The paired peer appliances. Each pins the peer's certificate by its fingerprint (as
    with SSH host keys); both sites pair with each other. 'refresh' fetches the
    certificates of peers that were unreachable when they were paired.
    """

    def __init__(self, parent: UIReplication) -> None:
        UINode.__init__(self, "peers", parent)
        self.ctx = parent.ctx
        self.refresh()

    def refresh(self):
        self._children = set()
        try:
            peers = self.ctx.store.load().peers
        except ModelError as err:
            self.shell.log.error(str(err))
            return
        for peer in peers.values():
            UIPeer(peer, self)

    def summary(self):
        pending = sum(1 for c in self.children if self.ctx.certificate_pending(c.name))
        if pending:
            return (f"Peers: {len(self._children)} ({pending} certificate not fetched yet)"
                    if pending == 1 else f"Peers: {len(self._children)} ({pending} "
                    f"certificates not fetched yet)"), False
        return f"Peers: {len(self._children)}", None

    def ui_command_refresh(self):
        """
        Fetches the certificate of each peer whose certificate could not be fetched when it
        was paired (it was unreachable), pins it when its fingerprint is the one given, and
        has the receiver take it. Then re-reads the peers.
        """
        _changed(self, self.ctx.fetch_pending)
        self.refresh()

    def ui_command_create(self, name, address, fingerprint):
        """
        Pairs with a peer appliance: name is how this site calls it, address its
        receiver's host:port ([v6]:port for IPv6), fingerprint its certificate's SHA-256 as
        '/replication info' shows there (SHA256:AB:CD:...).

        The peer's certificate is fetched from address and pinned only if its fingerprint
        is the one given; another fingerprint is refused, and nothing changes. An
        unreachable peer is accepted: its certificate is fetched later ('refresh', before
        each change of the configuration, and at boot), and until then ls says so. The
        receiver then takes the new pinned certificate without dropping any session.

        Pair both ways: on the peer, create this site with the fingerprint 'info' shows here.

        EXAMPLE
        =======
        create name=dr address=192.0.2.2:7700 fingerprint=SHA256:1F:...:9C
        """
        self.assert_root()
        peer = _changed(self, self.ctx.pair_peer, name, address, fingerprint)
        node = UIPeer(peer, self)
        self.shell.log.info(f"Created peer {peer.name} at {peer.address}, pinned "
                            f"{peer.fingerprint}.")
        return self.new_node(node)

    def ui_complete_create(self, parameters, text, current_param):
        if current_param == "fingerprint":
            return complete(["SHA256:"], text)
        if current_param == "address":
            return complete([f"{text}:7700"] if text and ":" not in text else [], text)
        return []

    def ui_command_delete(self, name):
        """
        Forgets a paired peer: its certificate is no longer trusted (the receiver stops
        accepting it; other peers' sessions stay up). Refused while a volume replicates to
        it: delete the volume first.

        EXAMPLE
        =======
        delete name=dr
        """
        self.assert_root()
        peer = _changed(self, self.ctx.unpair_peer, name)
        self.remove_child(self.get_child(peer.name))
        self.shell.log.info(f"Deleted peer {peer.name}.")

    def ui_complete_delete(self, parameters, text, current_param):
        if current_param != "name":
            return []
        return complete(sorted(child.name for child in self.children), text)


class UIPeer(UINode):
    """A paired peer appliance: its address and pinned certificate fingerprint."""

    def __init__(self, peer: Peer, parent: UIPeers) -> None:
        UINode.__init__(self, peer.name, parent)
        self.ctx = parent.ctx
        self.peer = peer

    def summary(self):
        fp = self.peer.fingerprint
        text = f"{self.peer.address} {fp[:18]}...{fp[-5:]}"
        why = self.ctx.certificate_pending(self.peer.name)
        if why is not None:
            return f"{self.peer.address} certificate not fetched yet: {why}", False
        links = [tx.get("link", {}).get("state", "unknown")
                 for tx in self.ctx.snapshot()["transmitters"].values()
                 if tx.get("peer") == self.peer.address]
        if not links:
            return text, None
        ok = sum(1 for s in links if s == "replicating" or s.startswith("paused"))
        return f"{text} links up: {ok}/{len(links)}", ok == len(links)

    def ui_command_info(self):
        """Shows the peer's name, address, pinned certificate fingerprint and whether its
        certificate is fetched (pinned) yet."""
        why = self.ctx.certificate_pending(self.peer.name)
        pinned = (str(self.ctx.layout.peer_pem(self.peer.name)) if why is None
                  else f"not fetched yet: {why}")
        for key, value in (("name", self.peer.name), ("address", self.peer.address),
                           ("fingerprint", self.peer.fingerprint), ("certificate", pinned)):
            self.shell.con.display(f"{key + ':':<13}{value}")


class UIVolumes(UINode):
    """
    The replicated volumes of this appliance: each a user:mirror backstore whose writes a
    transmitter ships to a peer. 'create' starts replicating a backstore, 'delete' stops.
    Volumes a transmitter reports without the shell having created them (a hand-written
    configuration) are listed too. 'refresh' re-reads them.
    """

    def __init__(self, parent: UIReplication) -> None:
        UINode.__init__(self, "volumes", parent)
        self.ctx = parent.ctx
        self.refresh()

    def _names(self) -> set[str]:
        try:
            names = set(self.ctx.store.load().volumes)
        except ModelError as err:
            self.shell.log.error(str(err))
            names = set()
        # A group's transmitter is the group's (/replication/groups), not a volume's.
        return names | {v.name for v in self.ctx.views(fresh=True)
                        if v.role != "dr" and v.kind != "group"}

    def refresh(self):
        self._children = set()
        for name in sorted(self._names()):
            UIVolume(name, self)

    def summary(self):
        views = [v for v in self.ctx.views() if v.role != "dr" and v.kind != "group"]
        count = len(self._children)
        if not count:
            return "Volumes: 0", None
        in_sync = sum(1 for v in views if v.in_sync)
        silent = count - len(views)
        health = _health(views) if views else None
        if silent > 0:
            health = False
        return f"Volumes: {count} ({in_sync} in sync)", health

    def ui_command_status(self):
        """
        Shows every replicated volume, one block each (as /replication status).
        """
        self.shell.con.display(self.ctx.render().rstrip("\n"))

    def ui_command_create(self, backstore, peer):
        """
        Replicates a user:mirror backstore to a paired peer: the volume is named as the
        backstore, and its journal, mirror, bitmap, uuid, size and block size are taken from
        the backstore itself (/backstores/user:mirror/<backstore>). Writes its transmitter's
        configuration and starts its transmitter; the peer's receiver provisions the replica
        (or uses one its admin made). Other volumes are not touched.

        Refused, with nothing changed: a backstore that does not exist, is not user:mirror,
        or is replicated already; a peer that is not paired, or whose certificate has not
        been fetched yet (the transmitter needs it to authenticate the peer: make the peer
        reachable and run '/replication/peers refresh').

        EXAMPLE
        =======
        create backstore=vol1 peer=dr
        """
        self.assert_root()
        vol = _changed(self, self.ctx.create_volume, backstore, peer)
        if vol.name in (c.name for c in self.children):
            return None
        return self.new_node(UIVolume(vol.name, self))

    def ui_complete_create(self, parameters, text, current_param):
        if current_param == "backstore":
            return complete(self.ctx.replicable_backstores(), text)
        if current_param == "peer":
            try:
                peers = sorted(self.ctx.store.load().peers)
            except ModelError:
                return []
            return complete(peers, text)
        return []

    def ui_command_delete(self, name):
        """
        Stops replicating a volume: stops its transmitter and removes its configuration.
        The backstore, its journal, mirror and bitmap stay on this appliance, and the
        replica stays at the peer until the peer's admin forgets it; the message says which
        files remain. Other volumes are not touched.

        EXAMPLE
        =======
        delete name=vol1
        """
        self.assert_root()
        vol = _changed(self, self.ctx.delete_volume, name)
        for child in list(self.children):
            if child.name == vol.name:
                self.remove_child(child)

    def ui_complete_delete(self, parameters, text, current_param):
        if current_param != "name":
            return []
        try:
            return complete(sorted(self.ctx.store.load().volumes), text)
        except ModelError:
            return []
