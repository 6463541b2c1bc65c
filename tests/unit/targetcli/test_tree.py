"""The /replication tree inside stock targetcli: present next to the stock nodes, kept through
refresh, clearconfig, restoreconfig and set global, with help, completion and summaries."""

from __future__ import annotations

import re

import pytest
from configshell_fb import ExecutionError

FP = "SHA256:" + ":".join(["5E"] * 32)


def tree_lines(out: str) -> dict[str, str]:
    """``ls`` output as {node name: summary}."""
    found = {}
    for line in out.splitlines():
        m = re.search(r"o- (\S+) \.+ \[(.*)\]$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_ls_shows_the_stock_tree_and_replication(sh):
    nodes = tree_lines(sh.run("ls"))
    assert {"backstores", "fileio", "disk1", "replication", "peers", "volumes"} <= set(nodes)
    assert nodes["replication"].startswith("identity not created yet: run 'info', peers: 0")
    assert nodes["peers"] == "Peers: 0"
    assert nodes["volumes"] == "Volumes: 0"


@pytest.mark.parametrize("cmdline", ["refresh", "clearconfig confirm=true",
                                     "set global auto_cd_after_create=false",
                                     "set global tree_round_nodes=true"])
def test_replication_survives_what_rebuilds_the_root(sh, cmdline):
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    node = sh.root.get_node("/replication")
    sh.run(cmdline)
    assert sh.root.get_node("/replication") is node      # the same live node, put back
    assert "/replication" in {c.path for c in sh.root.children}
    nodes = tree_lines(sh.run("ls"))
    assert "replication" in nodes and "dr" in nodes and "backstores" in nodes


def test_clearconfig_clears_lio_and_keeps_replication(sh, lio):
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    sh.run("clearconfig confirm=true")
    nodes = tree_lines(sh.run("ls"))
    assert "disk1" not in nodes and not lio.storage_objects
    assert nodes["dr"].startswith("192.0.2.2:7700")


def test_restoreconfig_restores_lio_and_keeps_replication(sh, lio, tmp_path):
    saved = tmp_path / "saveconfig.json"
    sh.run(f"saveconfig savefile={saved}")
    sh.run("clearconfig confirm=true")
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    sh.run(f"restoreconfig savefile={saved}")
    nodes = tree_lines(sh.run("ls"))
    assert "disk1" in nodes and "dr" in nodes


def test_a_current_path_under_replication_stays_live_across_set_global(sh):
    sh.run("cd /replication/peers")
    sh.run(f"create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    sh.run("set global auto_add_default_portal=true")        # rebuilds the root
    sh.run("create name=dr2 address=192.0.2.3:7700 fingerprint=SHA256:" + "77" * 32)
    assert sorted(c.name for c in sh.root.get_node("/replication/peers").children) == \
        ["dr", "dr2"]
    assert sh.run("pwd").strip().endswith("/replication/peers")


def test_help_comes_from_the_docstrings(sh):
    assert "Pairs with a peer appliance" in sh.run("/replication/peers help create")
    assert "create name address fingerprint" in sh.run("/replication/peers help create")
    assert "fingerprint" in sh.run("/replication help info")
    commands = sh.run("/replication help")
    assert "- info" in commands and "- status" in commands
    assert "- create name address fingerprint" in sh.run("/replication/peers help")


def test_volume_create_and_delete_are_offered(sh):
    commands = sh.run("/replication/volumes help")
    assert "- create backstore peer" in commands and "- delete name" in commands


def test_parameters_complete_with_tab(sh):
    peers = sh.root.get_node("/replication/peers")
    assert peers.ui_complete_create({}, "SH", "fingerprint") == ["SHA256: "]
    assert peers.ui_complete_create({}, "dr.example", "address") == ["dr.example:7700 "]
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    sh.run("/replication/peers create name=dr-b address=192.0.2.3:7700 fingerprint=SHA256:"
           + "77" * 32)
    assert peers.ui_complete_delete({}, "d", "name") == ["dr", "dr-b"]
    assert peers.ui_complete_delete({}, "dr-", "name") == ["dr-b "]
    assert peers.ui_complete_delete({}, "", "other") == []


def test_completion_through_the_shell_offers_the_parameters(sh):
    """What Tab offers on a command line, through configshell's own completer."""
    shell = sh.shell
    shell._current_node = sh.root.get_node("/replication/peers")
    offered = shell._complete_token_pparam("", "/replication/peers", "create", [], {})
    assert {"name=", "address=", "fingerprint="} <= set(offered)
    assert shell._complete_token_kparam("fingerprint=SH", "/replication/peers", "create",
                                        [], {}) == ["fingerprint=SHA256: "]


def test_non_root_cannot_change_peers(make_shell):
    sh = make_shell(as_root=False)
    with pytest.raises(ExecutionError, match="not root"):
        sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")


def test_ls_summaries_are_green_when_in_sync_and_red_when_action_is_needed(make_shell,
                                                                           daemons):
    daemons.load("healthy")
    sh = make_shell()
    nodes = tree_lines(sh.run("ls /replication"))
    assert nodes["vol1"] == "primary, connected, replicating, in sync"
    assert sh.root.get_node("/replication/volumes/vol1").summary()[1] is True
    assert sh.root.get_node("/replication/volumes").summary() == \
        ("Volumes: 1 (1 in sync)", True)
    daemons.load("connecting")
    sh.ctx.snapshot(fresh=True)
    assert sh.root.get_node("/replication/volumes/vol1").summary() == \
        ("primary, connecting, stopped, behind", False)
    daemons.load("resync")
    sh.ctx.snapshot(fresh=True)
    assert sh.root.get_node("/replication/volumes/vol1").summary() == \
        ("primary, connected, resync 25.0% (12.0 MiB/s, ETA 1m04s), behind", None)


def test_peer_summary_shows_its_links(make_shell, daemons):
    daemons.load("connecting")
    sh = make_shell()
    sh.run(f"/replication/peers create name=dr address=192.0.2.2:7700 fingerprint={FP}")
    assert sh.root.get_node("/replication/peers/dr").summary() == \
        ("192.0.2.2:7700 certificate not fetched yet: cannot connect to 192.0.2.2:7700: "
         "unreachable from the tests", False)
    (sh.state_dir / "peers" / "dr.pem").write_text("pinned")      # as if fetched
    assert sh.root.get_node("/replication/peers/dr").summary() == \
        ("192.0.2.2:7700 SHA256:5E:5E:5E:5E...5E:5E links up: 0/1", False)


def test_one_ls_asks_the_daemons_once(make_shell, daemons):
    daemons.load("healthy")
    sh = make_shell()
    before = daemons.calls
    sh.run("ls /replication")
    assert daemons.calls - before <= 1


def test_volume_status_shows_its_block(make_shell, daemons):
    daemons.load("paused")
    sh = make_shell()
    out = sh.run("/replication/volumes/vol1 status")
    assert out.startswith("vol1 role:primary peer:192.0.2.2:7700\n"
                          "  link:connected replication:paused (blackout window)")
