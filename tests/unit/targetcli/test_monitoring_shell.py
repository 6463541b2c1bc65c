"""/replication/monitoring: the exporter's address and port, the alert thresholds and the
webhook set from the shell. A change is saved (site.json), rendered (exporter.toml, read back
with the exporter's parser) and applied by restarting appliance-exporter.service; bad input,
a port another program holds, or an exporter that does not start with the new settings is
refused with what to fix, and nothing changes (the state directory byte for byte, the
exporter back on its previous settings). The boot restore renders exporter.toml always.

The exporter is ``FakeExporter`` (shell_fakes): each start reads exporter.toml through the
exporter's own loader and its control socket answers ``status`` with what it runs. Ports are
real: the shell's pre-check binds them, so a test holds a port with a real listening socket.
"""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest
from shell_fakes import FakeExporter, refused

from appliance.exporter.config import load_exporter_config
from targetcli_ext.units import EXPORTER_UNIT

NODE = "/replication/monitoring"


@pytest.fixture
def mon(make_shell):
    """A shell whose exporter runs (started as the boot restore does) on the defaults."""
    sh = make_shell()
    sh.exporter = FakeExporter(sh.units, sh.ctx.layout.exporter_toml)
    sh.calls.replies["status"] = sh.exporter.status
    sh.ctx.exporter_start_timeout_s = 2.0
    sh.ctx.exporter_poll_s = 0.01
    from targetcli_ext.operations import Notes
    sh.ctx.store.ensure_identity()
    sh.ctx.start_exporter(sh.ctx.write_exporter(sh.ctx.store.load(), Notes()), Notes())
    sh.units.log.clear()
    return sh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def taken():
    """A port another program listens on (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def state(sh) -> dict:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(sh.state_dir.rglob("*")) if p.is_file() and p.name != ".site.lock"}


def saved(sh) -> dict:
    return json.loads((sh.state_dir / "site.json").read_text())["monitoring"]


# --- setting ----------------------------------------------------------------------------


def test_set_exporter_port_saves_renders_and_restarts(mon):
    port = free_port()
    out = mon.run(f"{NODE} set exporter port={port}")
    assert out.splitlines() == [
        f"Parameter port is now '{port}'.",
        f"Info: Restarted {EXPORTER_UNIT}: metrics at http://127.0.0.1:{port}/metrics."]
    assert saved(mon)["port"] == port
    cfg = load_exporter_config(mon.state_dir / "exporter.toml")
    assert (cfg.address, cfg.port) == ("127.0.0.1", port)
    assert mon.units.log == [("restart", EXPORTER_UNIT)]
    assert mon.exporter.config.port == port          # the running exporter took it
    assert stat.S_IMODE((mon.state_dir / "exporter.toml").stat().st_mode) == 0o600
    assert mon.run(f"{NODE} get exporter port").strip() == f"port={port}"


def test_set_alerts_every_threshold_and_a_webhook(mon):
    out = mon.run(f"{NODE} set alerts journal_high_water=90 journal_clear=85 "
                  f"recovery_point_age=5m link_down=60s webhook=https://ops.example/hook "
                  f"webhook_timeout=10s webhook_queue=500")
    assert "Parameter journal_high_water is now '90%'." in out
    assert "Parameter recovery_point_age is now '5m'." in out
    assert "Parameter link_down is now '1m'." in out
    assert "Parameter webhook is now 'https://ops.example/hook'." in out
    assert saved(mon)["alerts"] == {"journal_high_water_percent": 90.0,
                                    "journal_clear_percent": 85.0,
                                    "recovery_point_age_s": 300.0, "link_down_s": 60.0}
    assert saved(mon)["webhook"] == {"url": "https://ops.example/hook", "timeout_s": 10.0,
                                     "queue_size": 500}
    cfg = mon.exporter.config
    assert cfg.alerts.journal_high_water_percent == 90.0 and cfg.webhook.queue_size == 500
    text = mon.run(f"{NODE} get alerts")
    for shown in ("journal_high_water=90%", "journal_clear=85%", "recovery_point_age=5m",
                  "link_down=1m", "webhook=https://ops.example/hook", "webhook_timeout=10s",
                  "webhook_queue=500"):
        assert shown in text
    mon.run(f"{NODE} set alerts webhook=none")
    assert saved(mon)["webhook"] is None and mon.exporter.config.webhook is None
    assert "[webhook]" not in (mon.state_dir / "exporter.toml").read_text()
    assert mon.run(f"{NODE} get alerts webhook").strip() == "webhook=none"


def test_the_same_settings_again_restart_nothing(mon):
    out = mon.run(f"{NODE} set exporter port=9477")
    assert "Nothing changed: the exporter runs with these settings" in out
    assert mon.units.log == []


def test_a_stopped_exporter_is_started_by_a_change(mon):
    mon.units.active.discard(EXPORTER_UNIT)
    mon.run(f"{NODE} set alerts link_down=2m")
    assert mon.units.log == [("restart", EXPORTER_UNIT)]
    assert mon.exporter.config.alerts.link_down_s == 120.0


def test_all_interfaces_must_be_given_and_are_warned_about(mon):
    assert saved_default_address(mon) == "127.0.0.1"
    out = mon.run(f"{NODE} set exporter address=0.0.0.0 port={free_port()}")
    assert "listens on every interface of this appliance" in out
    assert mon.exporter.config.address == "0.0.0.0"


def saved_default_address(sh) -> str:
    text = sh.run(f"{NODE} get exporter address").strip()
    return text.removeprefix("address=")


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("cmdline, message", [
    ("alerts journal_high_water=101", "journal_high_water=101 is out of range: give a "
                                      "percentage from 1 to 100"),
    ("alerts journal_clear=80", "journal_clear=80 must be at least 1 below journal_high_water "
                                "(80): the alert clears when the journal drains below it; "
                                "give 0 to 79"),
    ("alerts journal_high_water=60", "journal_clear=70 must be at least 1 below "
                                     "journal_high_water (60)"),
    ("alerts journal_clear=lots", "journal_clear='lots' is not a percentage"),
    ("alerts recovery_point_age=0", "recovery_point_age='0' must be more than 0 seconds"),
    ("alerts link_down=soon", "link_down='soon' does not parse: give seconds or a duration "
                              "with s, m or h"),
    ("alerts webhook=ftp://ops.example/hook", "webhook='ftp://ops.example/hook' is not an "
                                              "http:// or https:// URL"),
    ("alerts webhook=https://", "webhook='https://' has no host"),
    ("alerts webhook=http://ops.example:99999/", "webhook='http://ops.example:99999/' does not "
                                                 "parse (Port out of range"),
    ("alerts webhook_timeout=5s", "webhook_timeout: no webhook is set; give "
                                  "webhook=https://... with it"),
    ("alerts webhook=https://h/ webhook_timeout=2m", "webhook_timeout=2m is out of range: "
                                                     "at most 60s"),
    ("alerts webhook=https://h/ webhook_queue=0", "webhook_queue=0 is out of range"),
    ("exporter port=0", "port='0' is not a port: give a number from 1 to 65535"),
    ("exporter port=70000", "port='70000' is not a port"),
    ("exporter address=metrics.example", "address='metrics.example' is not an IP address"),
    ("exporter interval=100ms", "interval=0.1s is out of range: from 0.2s to 60s"),
    ("exporter webhook=none", "no parameter webhook in group 'exporter' (parameters: address, "
                              "port, interval)"),
    ("alerts speed=1", "no parameter speed in group 'alerts' (parameters: journal_high_water"),
])
def test_bad_input_is_refused_and_nothing_changes(mon, cmdline, message):
    before = state(mon)
    msg = refused(mon, f"{NODE} set {cmdline}")
    assert msg.startswith(message) and msg.endswith("; nothing changed")
    assert state(mon) == before
    assert mon.units.log == []


def test_an_address_this_appliance_does_not_have_is_refused(mon):
    if Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0":
        pytest.skip("this host binds any address (net.ipv4.ip_nonlocal_bind)")
    before = state(mon)
    assert refused(mon, f"{NODE} set exporter address=192.0.2.99") == (
        "address=192.0.2.99 is not an address of this appliance: give one of its own "
        "('ip -brief address' lists them), or 127.0.0.1 for this appliance only; nothing "
        "changed")
    assert state(mon) == before and mon.units.log == []


def test_a_port_another_program_holds_is_refused_before_anything_changes(mon, taken):
    before = state(mon)
    assert refused(mon, f"{NODE} set exporter port={taken}") == (
        f"port={taken} is in use on 127.0.0.1 by another program: choose another port, or "
        f"stop the program that listens there (ss -ltnp 'sport = :{taken}' names it); nothing "
        f"changed")
    assert state(mon) == before and mon.units.log == []
    assert mon.exporter.config.port == 9477


def test_the_port_the_exporter_holds_itself_is_no_conflict(mon, taken):
    """The running exporter listens on the port (here: the socket ``taken`` stands for its
    listener): a change restarts it onto the new settings; the same change with the exporter
    stopped finds the port held by another program."""
    from dataclasses import replace

    from targetcli_ext.operations import Notes
    with mon.ctx.store.locked():
        site = mon.ctx.store.load()
        mon.ctx.store.save(replace(site, monitoring=replace(site.monitoring, port=taken)))
    mon.ctx.start_exporter(mon.ctx.write_exporter(mon.ctx.store.load(), Notes()), Notes())
    assert mon.exporter.status()["listen"] == f"127.0.0.1:{taken}"
    mon.run(f"{NODE} set alerts journal_high_water=90")
    assert mon.exporter.config.alerts.journal_high_water_percent == 90.0
    mon.units.active.discard(EXPORTER_UNIT)
    assert refused(mon, f"{NODE} set alerts journal_high_water=95").startswith(
        f"port={taken} is in use on 127.0.0.1 by another program")


def test_an_exporter_that_does_not_start_gets_the_previous_settings_back(mon):
    port = free_port()
    line = (f"appliance-exporter: cannot listen on 127.0.0.1:{port}: [Errno 98] Address "
            f"already in use")
    mon.exporter.refuse = lambda config: line if config.port == port else None
    before = state(mon)
    msg = refused(mon, f"{NODE} set exporter port={port}")
    assert msg == (f"the exporter did not start with the new settings: it exited: {line}; the "
                   f"previous settings are restored (the exporter runs with them again on "
                   f"127.0.0.1:9477); nothing changed")
    assert state(mon) == before
    assert mon.units.log == [("restart", EXPORTER_UNIT), ("restart", EXPORTER_UNIT)]
    assert mon.exporter.config.port == 9477


def test_an_exporter_that_never_answers_is_a_refusal_with_a_bound(mon):
    mon.ctx.exporter_start_timeout_s = 0.2
    mon.calls.replies["status"] = lambda args: {"role": "exporter", "listen": "127.0.0.1:9477"}
    port = free_port()
    msg = refused(mon, f"{NODE} set exporter port={port}")
    assert msg.startswith(f"the exporter did not start with the new settings: it did not "
                          f"answer on {mon.ctx.layout.exporter_socket} listening on "
                          f"127.0.0.1:{port} within 0.2 s (see 'journalctl -u "
                          f"{EXPORTER_UNIT}'); the previous settings are restored")
    assert saved(mon)["port"] == 9477


def test_an_exporter_that_was_not_running_is_left_stopped_after_a_failed_change(mon):
    mon.units.active.discard(EXPORTER_UNIT)
    mon.exporter.refuse = lambda config: "appliance-exporter: boom"
    msg = refused(mon, f"{NODE} set alerts link_down=5m")
    assert "it exited: appliance-exporter: boom" in msg
    assert f"({EXPORTER_UNIT} is stopped again, as it was)" in msg
    assert mon.units.log == [("restart", EXPORTER_UNIT), ("stop", EXPORTER_UNIT)]
    assert saved(mon)["alerts"]["link_down_s"] == 60.0


def test_no_systemctl_keeps_the_saved_settings_and_says_what_to_run(mon):
    mon.units.failing[EXPORTER_UNIT] = "Unit appliance-exporter.service not found."
    out = mon.run(f"{NODE} set alerts link_down=5m")
    assert "The exporter was not restarted" in out and "systemctl restart" in out
    assert saved(mon)["alerts"]["link_down_s"] == 300.0


def test_a_hand_written_exporter_toml_is_refused_naming_it(mon):
    path = mon.state_dir / "exporter.toml"
    path.write_text('port = 9999\n')
    before = state(mon)
    assert refused(mon, f"{NODE} set alerts link_down=5m") == (
        f"{path} was written by hand (its first line is not '# generated by targetcli "
        f"/replication: change it there'): move it away to let /replication manage it; nothing "
        f"changed")
    assert state(mon) == before


# --- status, info, ls, help, Tab ----------------------------------------------------------


def test_status_shows_listen_alerts_and_the_webhook(mon):
    mon.run(f"{NODE} set alerts webhook=https://ops.example/hook")
    mon.exporter.alerts = [{"alert": "LinkDown", "volume": "vol1", "peer": "192.0.2.2:7700",
                            "severity": "critical", "since": 1699999700.0,
                            "message": "link of vol1 to 192.0.2.2:7700 down for 5m00s",
                            "message_id": "9a" * 16}]
    assert mon.run(f"{NODE} status") == (
        "exporter: listening on 127.0.0.1:9477 (metrics: http://127.0.0.1:9477/metrics); "
        "alerts evaluated every 2s, last at 22:13:20\n"
        "alerts: 1 active (exporter on 127.0.0.1:9477)\n"
        "  critical LinkDown since 22:08:20: link of vol1 to 192.0.2.2:7700 down for 5m00s\n"
        "webhook: https://ops.example/hook: 0 delivered, 0 waiting, 0 failed attempts, 0 "
        "dropped; last error: none\n")
    assert mon.root.get_node(NODE).summary() == ("127.0.0.1:9477, alerts: 1 active", False)


def test_status_and_ls_of_an_exporter_that_does_not_run(mon):
    mon.units.active.discard(EXPORTER_UNIT)
    sock = mon.ctx.layout.exporter_socket
    assert mon.run(f"{NODE} status") == (
        f"exporter: is not running (no {sock}): check 'systemctl status {EXPORTER_UNIT}' and "
        f"'journalctl -u {EXPORTER_UNIT}'\n")
    assert mon.root.get_node(NODE).summary() == (
        f"exporter does not answer: 'systemctl status {EXPORTER_UNIT}'", False)


def test_info_shows_the_saved_settings(mon):
    mon.run(f"{NODE} set alerts webhook=https://ops.example/hook recovery_point_age=10m")
    path = mon.state_dir / "exporter.toml"
    assert mon.run(f"{NODE} info").splitlines() == [
        "listen:   127.0.0.1:9477 (metrics: http://127.0.0.1:9477/metrics)",
        "interval: 2s",
        "alerts:   journal_high_water=80% journal_clear=70% recovery_point_age=10m link_down=1m",
        "webhook:  https://ops.example/hook (timeout 5s, queue 1000)",
        f"file:     {path}",
        f"unit:     {EXPORTER_UNIT} (running)"]


def test_ls_lists_monitoring_under_replication(mon):
    out = mon.run("ls /replication")
    assert "o- monitoring" in out and "[127.0.0.1:9477, alerts: none]" in out


def test_help_and_tab_completion(mon):
    node = mon.root.get_node(NODE)
    assert node.ui_complete_set({}, "", "group") == ["alerts", "exporter", "global"] or \
        set(node.ui_complete_set({}, "", "group")) == {"alerts", "exporter", "global"}
    assert node.ui_complete_set({"group": "exporter"}, "", "parameter") == \
        ["address=", "port=", "interval="]
    assert node.ui_complete_set({"group": "alerts"}, "journal_c", "parameter") == \
        ["journal_clear= "]
    assert node.ui_complete_set({"group": "alerts", "link_down": "1m"}, "l", "parameter") == []
    assert node.ui_complete_set({"group": "alerts"}, "n", "webhook") == ["none "]
    assert node.ui_complete_set({"group": "alerts"}, "", "recovery_point_age") == \
        ["1m", "5m", "15m", "1h"]
    assert node.ui_complete_set({"group": "exporter"}, "12", "address") == ["127.0.0.1 "]
    assert "global" in node.ui_complete_set({}, "g", "group")[0]
    text = mon.run(f"{NODE} help set")
    assert "set alerts journal_high_water=80 journal_clear=70" in text
    assert "the exporter restarted" in text
    assert "webhook=url" in mon.run(f"{NODE} set alerts")


def test_set_global_still_works_here(mon):
    mon.run(f"{NODE} set global auto_cd_after_create=false")
    assert mon.shell.prefs["auto_cd_after_create"] is False


# --- boot -------------------------------------------------------------------------------


def test_restore_renders_the_defaults_and_starts_the_exporter(make_shell):
    sh = make_shell()
    exporter = FakeExporter(sh.units, sh.ctx.layout.exporter_toml)
    from targetcli_ext.operations import Notes
    from targetcli_ext.restore import restore
    notes = Notes()
    restore(sh.ctx, notes)
    cfg = load_exporter_config(sh.state_dir / "exporter.toml")
    assert (cfg.address, cfg.port, cfg.webhook) == ("127.0.0.1", 9477, None)
    assert cfg.identity == sh.ctx.store.load().identity
    assert ("start", EXPORTER_UNIT) in sh.units.log and exporter.config == cfg
    assert ("info", f"Started {EXPORTER_UNIT}.") in notes.lines
    # again: nothing changed, nothing restarted
    sh.units.log.clear()
    restore(sh.ctx, Notes())
    assert not [entry for entry in sh.units.log if entry[1] == EXPORTER_UNIT]


def test_restore_restarts_a_running_exporter_whose_file_it_changed(mon, tmp_path):
    mon.run(f"{NODE} set alerts link_down=5m")
    (tmp_path / "etc").mkdir()
    mon.run(f"saveconfig savefile={tmp_path / 'etc' / 'saveconfig.json'}")
    mon.run(f"{NODE} set alerts link_down=10m")          # not saved: the saved file wins
    mon.units.log.clear()
    from targetcli_ext.operations import Notes
    from targetcli_ext.restore import restore
    notes = Notes()
    restore(mon.ctx, notes)
    assert mon.exporter.config.alerts.link_down_s == 300.0
    assert ("restart", EXPORTER_UNIT) in mon.units.log
    assert ("info", f"Restarted {EXPORTER_UNIT} (exporter.toml changed).") in notes.lines


def test_restore_keeps_a_hand_written_exporter_toml_and_starts_it(make_shell):
    sh = make_shell()
    path = sh.ctx.layout.exporter_toml
    path.parent.mkdir(parents=True)
    path.write_text("port = 9999\n")
    from targetcli_ext.operations import Notes
    from targetcli_ext.restore import restore
    notes = Notes()
    restore(sh.ctx, notes)
    assert path.read_text() == "port = 9999\n"
    assert ("start", EXPORTER_UNIT) in sh.units.log
    assert any("exporter.toml was written by hand: kept as it is" in text
               for _, text in notes.lines)


def test_restore_with_an_unreadable_site_still_runs_the_exporter(make_shell):
    sh = make_shell()
    sh.state_dir.mkdir(parents=True)
    (sh.state_dir / "site.json").write_text("{damaged")
    from targetcli_ext.operations import Notes
    from targetcli_ext.restore import restore
    notes = Notes()
    assert restore(sh.ctx, notes) is not None
    assert load_exporter_config(sh.state_dir / "exporter.toml").port == 9477
    assert sh.units.log == [("start", EXPORTER_UNIT)]


def test_a_failed_first_change_leaves_no_site_json_behind(make_shell):
    """Nothing configured yet, the exporter fails: no site.json nor exporter.toml appears."""
    sh = make_shell()
    exporter = FakeExporter(sh.units, sh.ctx.layout.exporter_toml)
    sh.calls.replies["status"] = exporter.status
    exporter.refuse = lambda config: "appliance-exporter: boom"
    assert "it exited: appliance-exporter: boom" in refused(sh, f"{NODE} set alerts link_down=5m")
    assert not (sh.state_dir / "site.json").exists()
    assert not (sh.state_dir / "exporter.toml").exists()
