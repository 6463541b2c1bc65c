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
from targetcli_ext.identity import ensure_certificate
from targetcli_ext.model import ModelError, Peer
from targetcli_ext.volume_node import UIVolume


def _complete(candidates: list[str], text: str) -> list[str]:
    """configshell's convention: a single match gets a trailing space."""
    found = [c for c in candidates if c.startswith(text)]
    return [found[0] + " "] if len(found) == 1 else found


def _health(views) -> bool | None:
    if all(v.health is True for v in views):
        return True
    return False if any(v.health is False for v in views) else None


class UIReplication(UINode):
    """
    Replication of this appliance's volumes to a peer appliance at another site: the
    site's identity and certificate ('info'), the paired peers, the replicated volumes and
    their status ('status').
    """

    def __init__(self, parent, ctx: ReplicationContext) -> None:
        UINode.__init__(self, "replication", parent)
        self.ctx = ctx
        UIPeers(self)
        UIVolumes(self)

    def summary(self):
        try:
            site = self.ctx.store.load()
        except ModelError as err:
            return f"site settings unreadable: {err}", False
        views = self.ctx.views()
        in_sync = sum(1 for v in views if v.in_sync)
        who = site.identity or "identity not created yet: run 'info'"
        return (f"{who}, peers: {len(site.peers)}, volumes: {len(views)} "
                f"({in_sync} in sync)", _health(views) if views else None)

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
    with SSH host keys); both sites pair with each other.
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
        return f"Peers: {len(self._children)}", None

    def ui_command_create(self, name, address, fingerprint):
        """
        Pairs with a peer appliance: name is how this site calls it, address its
        receiver's host:port ([v6]:port for IPv6), fingerprint its certificate's SHA-256 as
        '/replication info' shows there (SHA256:AB:CD:...). An unreachable peer is
        accepted; its volumes then show 'connecting' with the last error.

        EXAMPLE
        =======
        create name=dr address=192.0.2.2:7700 fingerprint=SHA256:1F:...:9C
        """
        self.assert_root()
        try:
            peer = self.ctx.store.add_peer(name, address, fingerprint)
        except ModelError as err:
            raise ExecutionError(f"{err}; nothing changed") from err
        except OSError as err:
            raise ExecutionError(f"cannot save the peer in {self.ctx.store.path}: {err}; "
                                 f"nothing changed") from err
        node = UIPeer(peer, self)
        self.shell.log.info(f"Created peer {peer.name} at {peer.address}, pinned "
                            f"{peer.fingerprint}.")
        # Until volumes are created from the shell, the daemons read their TOML files: say
        # so rather than let the pairing look as if it took effect (docs/shell.md).
        self.shell.log.warning("The replication daemons do not use shell pairings yet: "
                               "replicate with the TOML files of the README for now.")
        return self.new_node(node)

    def ui_complete_create(self, parameters, text, current_param):
        if current_param == "fingerprint":
            return _complete(["SHA256:"], text)
        if current_param == "address":
            return _complete([f"{text}:7700"] if text and ":" not in text else [], text)
        return []

    def ui_command_delete(self, name):
        """
        Forgets a paired peer: its certificate is no longer trusted.

        EXAMPLE
        =======
        delete name=dr
        """
        self.assert_root()
        try:
            peer = self.ctx.store.remove_peer(name)
        except ModelError as err:
            raise ExecutionError(f"{err}; nothing changed") from err
        except OSError as err:
            raise ExecutionError(f"cannot save {self.ctx.store.path}: {err}; nothing "
                                 f"changed") from err
        self.remove_child(self.get_child(peer.name))
        self.shell.log.info(f"Deleted peer {peer.name}.")

    def ui_complete_delete(self, parameters, text, current_param):
        if current_param != "name":
            return []
        return _complete(sorted(child.name for child in self.children), text)


class UIPeer(UINode):
    """A paired peer appliance: its address and pinned certificate fingerprint."""

    def __init__(self, peer: Peer, parent: UIPeers) -> None:
        UINode.__init__(self, peer.name, parent)
        self.ctx = parent.ctx
        self.peer = peer

    def summary(self):
        fp = self.peer.fingerprint
        text = f"{self.peer.address} {fp[:18]}...{fp[-5:]}"
        links = [tx.get("link", {}).get("state", "unknown")
                 for tx in self.ctx.snapshot()["transmitters"].values()
                 if tx.get("peer") == self.peer.address]
        if not links:
            return text, None
        ok = sum(1 for s in links if s == "replicating" or s.startswith("paused"))
        return f"{text} links up: {ok}/{len(links)}", ok == len(links)

    def ui_command_info(self):
        """Shows the peer's name, address and pinned certificate fingerprint."""
        for key, value in (("name", self.peer.name), ("address", self.peer.address),
                           ("fingerprint", self.peer.fingerprint)):
            self.shell.con.display(f"{key + ':':<13}{value}")


class UIVolumes(UINode):
    """
    The replicated volumes the local daemons report: on a primary each volume with a
    transmitter (named as its backstore), on a DR each replica (named by its uuid).
    'refresh' picks up volumes that appeared since.
    """

    def __init__(self, parent: UIReplication) -> None:
        UINode.__init__(self, "volumes", parent)
        self.ctx = parent.ctx
        self.refresh()

    def refresh(self):
        self._children = set()
        for view in self.ctx.views(fresh=True):
            UIVolume(view.name, self)

    def summary(self):
        views = self.ctx.views()
        if not views:
            return "Volumes: 0", None
        in_sync = sum(1 for v in views if v.in_sync)
        return f"Volumes: {len(views)} ({in_sync} in sync)", _health(views)

    def ui_command_status(self):
        """
        Shows every replicated volume, one block each (as /replication status).
        """
        self.shell.con.display(self.ctx.render().rstrip("\n"))
