"""One replicated volume under /replication/volumes: its status, and the commands that
steer it (docs/shell.md)."""

from __future__ import annotations

from targetcli.ui_node import UINode


class UIVolume(UINode):
    """
    One replicated volume; 'status' shows its block of the replication status.
    """

    def __init__(self, name: str, parent) -> None:
        UINode.__init__(self, name, parent)
        self.ctx = parent.ctx

    def summary(self):
        for view in self.ctx.views():
            if view.name == self.name:
                return view.summary(), view.health
        return "no daemon reports this volume now: run 'refresh'", False

    def ui_command_status(self):
        """
        Shows this volume's role, peer, link, replication state, journal fill and whether
        the DR copy is in sync; if not, what it lacks, why and what to do.
        """
        self.shell.con.display(self.ctx.render({self.name}).rstrip("\n"))
