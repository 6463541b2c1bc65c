"""targetcli's root node with the /replication tree added.

targetcli-fb has no plugin hook: its ``UIRoot.refresh()`` empties the root's children and
builds ``/backstores`` and the fabric modules again, and ``restoreconfig``, ``clearconfig`` and
``set global`` (``UINode.ui_setgroup_global``) all go through it. Overriding ``refresh`` is
therefore the one place where /replication survives them: the same node object is put back
(so an admin whose current path is under /replication stays on a live node) and refreshed.
``saveconfig`` is stock LIO's save, then the replication configuration beside it
(``replication.json``, targetcli_ext/restore.py). Everything else is targetcli's own classes.
"""

from __future__ import annotations

import os

from configshell_fb import ExecutionError
from targetcli import ui_root
from targetcli.ui_root import UIRoot

from targetcli_ext.context import ReplicationContext
from targetcli_ext.model import ModelError
from targetcli_ext.nodes import UIReplication
from targetcli_ext.restore import save_replication, saved_path_beside


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

    def ui_command_saveconfig(self, savefile=ui_root.default_save_file):
        '''
        Saves the current configuration to a file so that it can be restored
        on next boot: LIO's (savefile), and beside it the replication
        configuration (replication.json: peers, pinned certificates, volumes),
        restored at boot after LIO's.
        '''
        UIRoot.ui_command_saveconfig(self, savefile)
        path = saved_path_beside(os.path.expanduser(savefile or ui_root.default_save_file))
        try:
            save_replication(self._replication_ctx, path)
        except ModelError as err:
            raise ExecutionError(f"LIO's configuration is saved, the replication "
                                 f"configuration is not: {err}") from err
        except OSError as err:
            raise ExecutionError(f"LIO's configuration is saved, the replication "
                                 f"configuration is not: cannot write {path}: {err}") from err
        self.shell.log.info(f"Replication configuration saved to {path}")
