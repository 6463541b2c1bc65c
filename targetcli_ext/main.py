"""``appliance-targetcli``: stock targetcli with the /replication tree (``targetcli`` on the
image).

Behaves as targetcli-fb's own script: ``targetcli`` alone enters the shell, ``targetcli CMD``
runs one command line and exits (1 with the message on stderr when it fails), ``--version``
and ``--help``; the same lock file serialises it with stock targetcli. targetcli-fb's script is
not importable (it is a script, not a module), so this is its equivalent with our root node.
targetclid (``auto_use_daemon``) serves stock targetcli's tree without /replication, so this
shell always runs in-process and says so when that preference is set.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Sequence
from typing import IO

from configshell_fb import ConfigShell, ExecutionError

from appliance import __version__ as appliance_version
from targetcli_ext.config import ShellConfig
from targetcli_ext.context import ReplicationContext
from targetcli_ext.root import ApplianceRoot

USAGE = """Usage: targetcli [--version|--help|CMD|--disable-daemon]
  --version           print the version
  --help              print this text
  CMD                 run one shell command line and exit, e.g. targetcli /replication status
  <nothing>           enter the configuration shell
  --disable-daemon    set the global preference auto_use_daemon=false
Replication: /replication (info, status), /replication/peers (create, delete, refresh),
/replication/volumes (create, delete, status); saveconfig saves it beside LIO's.
"""


class ApplianceShell(ConfigShell):
    """targetcli-fb's shell preferences (its script's defaults: same look and behaviour)."""

    default_prefs = dict(
        color_path="magenta", color_command="cyan", color_parameter="magenta",
        color_keyword="cyan", completions_in_columns=True, logfile=None,
        loglevel_console="info", loglevel_file="debug9", color_mode=True, prompt_length=30,
        tree_max_depth=0, tree_status_mode=True, tree_round_nodes=True, tree_show_root=True,
        export_backstore_name_as_model=True, auto_enable_tpgt=True, auto_add_mapped_luns=True,
        auto_cd_after_create=False, auto_save_on_exit=True, max_backup_files="10",
        auto_add_default_portal=True, auto_use_daemon=False, daemon_use_batch_mode=False)


def main(argv: Sequence[str] | None = None, config: ShellConfig | None = None,
         err: IO[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = config or ShellConfig.from_env()
    err = err or sys.stderr
    if argv and argv[0] in ("help", "--help", "-h"):
        err.write(USAGE)
        return 0
    if argv and argv[0] in ("version", "--version", "-v"):
        from targetcli import __version__ as targetcli_version
        print(f"targetcli version {targetcli_version}, appliance {appliance_version}",
              file=err)
        return 0
    disable_daemon = bool(argv) and argv[0] in ("disable-daemon", "--disable-daemon")

    shell = ApplianceShell(config.prefs_dir)
    is_root = os.getuid() == 0
    try:
        lock = open(config.lock_file, "w+")     # noqa: SIM115 - held for the whole session
    except OSError as e:
        shell.con.display(shell.con.render_text(f"opening lockfile failed: {e}", "red"))
        return 1
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)        # wait for a running targetcli to finish
        if shell.prefs["auto_use_daemon"] and not disable_daemon:
            shell.log.warning("auto_use_daemon is set, but targetclid serves stock targetcli "
                              "without /replication: running in-process")
        try:
            root = ApplianceRoot(shell, ReplicationContext(config), as_root=is_root)
            root.refresh()
        except Exception as e:      # as stock targetcli: any failure to read LIO ends here
            shell.con.display(shell.con.render_text(str(e), "red"))
            if not is_root:
                shell.con.display(shell.con.render_text("Retry as root.", "red"))
            return 255
        if argv:
            try:
                shell.run_cmdline("set global auto_use_daemon=false" if disable_daemon
                                  else " ".join(argv))
            except Exception as e:
                print(str(e), file=err)
                return 1
            return 0
        return _interactive(shell, root, is_root)
    finally:
        lock.close()


def _interactive(shell: ApplianceShell, root: ApplianceRoot, is_root: bool) -> int:
    from rtslib_fb import RTSLibError
    from targetcli import __version__ as targetcli_version
    shell.con.display(f"targetcli shell version {targetcli_version} with replication "
                      f"(appliance {appliance_version})\n"
                      f"For help on commands, type 'help'.\n")
    if not is_root:
        shell.con.display("You are not root, disabling privileged commands.\n")
    while not shell._exit:
        try:
            shell.run_interactive()
        except (RTSLibError, ExecutionError) as msg:
            shell.log.error(str(msg))
    if shell.prefs["auto_save_on_exit"] and is_root:
        shell.log.info("Global pref auto_save_on_exit=true")
        root.ui_command_saveconfig()
    return 0


if __name__ == "__main__":
    sys.exit(main())
