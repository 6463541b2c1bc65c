"""targetcli's root node with the /replication tree added.

targetcli-fb has no plugin hook: its ``UIRoot.refresh()`` empties the root's children and
builds ``/backstores`` and the fabric modules again, and ``restoreconfig``, ``clearconfig`` and
``set global`` (``UINode.ui_setgroup_global``) all go through it. Overriding ``refresh`` is
therefore the one place where /replication survives them: the same node object is put back
(so an admin whose current path is under /replication stays on a live node) and refreshed.
Everything stock is left to targetcli's own classes.
"""

from __future__ import annotations

from targetcli.ui_root import UIRoot

from targetcli_ext.context import ReplicationContext
from targetcli_ext.nodes import UIReplication


class ApplianceRoot(UIRoot):
    """
    The targetcli hierarchy root node, with the appliance's /replication tree.
    """

    def __init__(self, shell, ctx: ReplicationContext, as_root: bool = False) -> None:
        self._replication_ctx = ctx
        self._replication: UIReplication | None = None
        UIRoot.__init__(self, shell, as_root=as_root)

    def refresh(self):
        UIRoot.refresh(self)
        if self._replication is None:
            self._replication = UIReplication(self, self._replication_ctx)
        else:
            self._children.add(self._replication)
            self._replication.refresh()
