"""Steering a replicated volume from the shell (/replication/volumes/<name>): each command
sends the right control call to the right daemon, saves what must survive a restart, and a
refusal (the shell's or a daemon's) prints the reason and changes nothing.

The daemons are an injected caller that records each call (``ReplicationContext.call``);
``apply_volume`` (rewriting the transmitter's TOML from site.json) is recorded with the
settings site.json held at that moment, so the order save-then-apply is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shell_fakes import FakeDaemons, refused

FP = "SHA256:" + ":".join(["5E"] * 32)
MIB = 1 << 20


def write_site(state_dir: Path, **settings) -> None:
    vol = {"backstore": "vol1", "peer": "dr", "paused": False, "bandwidth_limit": None,
           "blackout": []} | settings
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "site.json").write_text(json.dumps({
        "version": 2, "identity": "site-a", "listen": "0.0.0.0:7700",
        "peers": {"dr": {"address": "192.0.2.2:7700", "fingerprint": FP}},
        "volumes": {"vol1": vol}, "replicas": {}}))


def saved(state_dir: Path) -> dict:
    return json.loads((state_dir / "site.json").read_text())["volumes"]["vol1"]


@pytest.fixture
def primary(make_shell, daemons, tmp_path):
    """A primary with volume vol1 (site.json and a healthy transmitter), its daemons fake."""
    daemons.load("healthy")
    write_site(tmp_path / "replication")
    sh = make_shell()
    fake = FakeDaemons()
    sh.ctx.call = fake
    applied: list[dict] = []
    sh.ctx.apply_volume = lambda name: applied.append({name: saved(sh.state_dir)})
    sh.fake, sh.applied = fake, applied
    return sh


VOL = "/replication/volumes/vol1"


# --- pause / resume -----------------------------------------------------------------------


def test_pause_saves_then_pauses_the_running_transmitter(primary):
    out = primary.run(f"{VOL} pause")
    assert primary.fake.calls == [("transmitter-vol1.sock", "pause", {})]
    assert saved(primary.state_dir)["paused"] is True
    assert primary.applied == [{"vol1": saved(primary.state_dir)}]     # TOML after site.json
    assert "Shipping of vol1 is paused (saved)" in out


def test_resume_saves_then_resumes(primary):
    write_site(primary.state_dir, paused=True)
    primary.fake.answers["resume"] = {"paused": False, "needs_resync": True}
    out = primary.run(f"{VOL} resume what=shipping")
    assert primary.fake.calls == [("transmitter-vol1.sock", "resume", {})]
    assert saved(primary.state_dir)["paused"] is False
    assert primary.applied[0]["vol1"]["paused"] is False
    assert ("Shipping of vol1 is resumed (saved); a resync ships the regions of the "
            "discarded records first.") in out
    primary.fake.answers["resume"] = {"paused": False, "needs_resync": False}
    assert "Shipping of vol1 is resumed (saved)." in primary.run(f"{VOL} resume")


def test_pause_with_the_transmitter_stopped_is_saved_for_its_start(primary):
    primary.fake.not_running("pause", "transmitter-vol1.sock")
    out = primary.run(f"{VOL} pause")
    assert saved(primary.state_dir)["paused"] is True
    assert "does not answer now: it starts paused" in out


def test_a_pause_the_transmitter_refuses_is_undone(primary):
    primary.fake.refuse("pause", "the volume's journal cannot be read")
    msg = refused(primary, f"{VOL} pause")
    assert msg == ("pausing shipping refused by the transmitter of vol1: the volume's "
                   "journal cannot be read; nothing changed")
    assert saved(primary.state_dir)["paused"] is False
    assert primary.applied[-1]["vol1"]["paused"] is False     # the TOML written back


def test_journal_pause_and_resume_go_to_the_handler_with_the_backstore_name(primary):
    write_site(primary.state_dir, backstore="disk7")
    primary.fake.answers["pause-journal"] = {"volume": "disk7", "changed": True}
    out = primary.run(f"{VOL} pause what=journal")
    assert primary.fake.calls == [("handler.sock", "pause-journal", {"volume": "disk7"})]
    assert "Journaling of vol1 is paused" in out
    primary.fake.answers["resume-journal"] = {"volume": "disk7", "changed": False}
    out = primary.run(f"{VOL} resume what=journal")
    assert primary.fake.calls[-1] == ("handler.sock", "resume-journal", {"volume": "disk7"})
    assert "Journaling of vol1 was already resumed: nothing changed." in out
    assert primary.applied == [] and saved(primary.state_dir)["paused"] is False


def test_a_journal_pause_the_handler_refuses(primary):
    primary.fake.refuse("pause-journal", "no volume 'vol1' is served by this handler (it "
                                         "serves none); give the user:mirror backstore's "
                                         "name; nothing changed")
    assert refused(primary, f"{VOL} pause what=journal") == (
        "pause-journal refused by the handler: no volume 'vol1' is served by this handler "
        "(it serves none); give the user:mirror backstore's name; nothing changed")


def test_what_must_be_shipping_or_journal(primary):
    assert refused(primary, f"{VOL} pause what=disk") == (
        "what='disk': use what=shipping (the default) or what=journal; nothing changed")
    assert primary.fake.calls == [] and saved(primary.state_dir)["paused"] is False


# --- resync, verify, discard ----------------------------------------------------------------


def test_resync_asks_the_transmitter(primary):
    primary.fake.answers["resync"] = {"resync": "every chunk dirty", "dirty_bytes": 10 << 30,
                                      "shipped": "now"}
    out = primary.run(f"{VOL} resync")
    assert primary.fake.calls == [("transmitter-vol1.sock", "resync", {})]
    assert ("Full resync of vol1: every chunk is dirty (10.0 GiB dirty), shipped now; "
            "'status' shows its progress.") in out


def test_verify_starts_and_says_so(primary):
    primary.fake.answers["verify"] = {"started": True, "regions": 10240}
    out = primary.run(f"{VOL} verify repair=true")
    assert primary.fake.calls == [("transmitter-vol1.sock", "verify", {"repair": True})]
    assert ("Verify of 10240 regions of vol1 started with repair; 'status' shows its "
            "progress and outcome.") in out
    primary.run(f"{VOL} verify")
    assert primary.fake.calls[-1] == ("transmitter-vol1.sock", "verify", {"repair": False})


def test_verify_refused_and_bad_repair(primary):
    primary.fake.refuse("verify", "not connected to the peer (state reconnecting); verify "
                                  "runs over a live link")
    assert refused(primary, f"{VOL} verify") == (
        "verify refused by the transmitter of vol1: not connected to the peer (state "
        "reconnecting); verify runs over a live link; nothing changed")
    calls = len(primary.fake.calls)
    assert refused(primary, f"{VOL} verify repair=maybe") == (
        "repair='maybe' is neither true nor false: use repair=true or repair=false; nothing "
        "changed")
    assert len(primary.fake.calls) == calls


def test_discard_refused_unless_paused_shows_the_reason(primary):
    primary.fake.refuse("discard", "pause first: discard drops the records queued for the "
                                   "peer and needs shipping paused (pause, then discard; "
                                   "resume ships their regions by a resync); nothing changed")
    assert refused(primary, f"{VOL} discard") == (
        "discard refused by the transmitter of vol1: pause first: discard drops the records "
        "queued for the peer and needs shipping paused (pause, then discard; resume ships "
        "their regions by a resync); nothing changed")
    primary.fake.answers["discard"] = {"discarded_records": 210, "discarded_bytes": 860160,
                                       "acked_seq": 48224, "needs_resync": True,
                                       "dirty_bytes": 8 << 20}
    out = primary.run(f"{VOL} discard")
    assert primary.fake.calls[-1] == ("transmitter-vol1.sock", "discard", {})
    assert ("Discarded 210 queued journal records of vol1 (840.0 KiB of journal freed). "
            "Their regions are dirty: it needs a resync, which 'resume' starts.") in out
    primary.fake.answers["discard"] = {"discarded_records": 0, "discarded_bytes": 0,
                                       "acked_seq": 48224, "needs_resync": False}
    assert "nothing discarded" in primary.run(f"{VOL} discard")


def test_a_stopped_transmitter_is_named(primary):
    primary.fake.not_running("resync", "transmitter-vol1.sock")
    assert refused(primary, f"{VOL} resync").startswith(
        "the transmitter of vol1 does not answer (cannot talk to control socket")


# --- set / get replication ------------------------------------------------------------------


def test_set_bandwidth_limit_saves_applies_and_sets_live(primary):
    out = primary.run(f"{VOL} set replication bandwidth_limit=50M")
    assert saved(primary.state_dir)["bandwidth_limit"] == 50 * MIB
    assert primary.applied == [{"vol1": saved(primary.state_dir)}]
    assert primary.fake.calls == [("transmitter-vol1.sock", "set",
                                   {"bandwidth_limit": 50.0 * MIB, "blackout": []})]
    assert "Parameter bandwidth_limit is now '50M'." in out
    assert primary.run(f"{VOL} get replication bandwidth_limit").strip() == \
        "bandwidth_limit=50M"


def test_set_blackout_and_none(primary):
    out = primary.run(f"{VOL} set replication blackout=8:00-18:00,22:00-06:00")
    assert saved(primary.state_dir)["blackout"] == ["08:00-18:00", "22:00-06:00"]
    assert primary.fake.calls[-1][2] == {"bandwidth_limit": None,
                                         "blackout": ["08:00-18:00", "22:00-06:00"]}
    assert "Parameter blackout is now '08:00-18:00,22:00-06:00'." in out
    primary.run(f"{VOL} set replication blackout=none bandwidth_limit=none")
    assert saved(primary.state_dir)["blackout"] == []
    text = primary.run(f"{VOL} get replication")
    assert "bandwidth_limit=none" in text and "blackout=none" in text


@pytest.mark.parametrize("cmdline, message", [
    ("bandwidth_limit=fast", "bandwidth_limit 'fast' does not parse: use a rate per second "
                             "with K, M or G, e.g. bandwidth_limit=50M, or "
                             "bandwidth_limit=none for no limit; nothing changed"),
    ("bandwidth_limit=0", "bandwidth_limit '0' is out of range: from 1K to 1T per second, or "
                          "none; nothing changed"),
    ("bandwidth_limit=50X", "bandwidth_limit '50X' does not parse"),
    ("bandwidth_limit=-5", "bandwidth_limit '-5' is out of range"),
    ("bandwidth_limit=2T", "bandwidth_limit '2T' is out of range"),
    ("blackout=8-18", "blackout window '8-18' does not parse: use HH:MM-HH:MM windows"),
    ("blackout=25:00-06:00", "blackout window '25:00-06:00': hour must be in 0..23"),
    ("blackout=08:00-08:00", "blackout window '08:00-08:00' is empty (start equals end)"),
    ("bandwidth_limit=50M blackout=8-18", "blackout window '8-18' does not parse"),
    ("speed=50M", "no parameter speed in group 'replication' (parameters: bandwidth_limit, "
                  "blackout); nothing changed"),
])
def test_bad_settings_are_refused_and_nothing_changes(primary, cmdline, message):
    before = (primary.state_dir / "site.json").read_text()
    msg = refused(primary, f"{VOL} set replication {cmdline}")
    assert msg.startswith(message) and msg.endswith("nothing changed")
    assert (primary.state_dir / "site.json").read_text() == before
    assert primary.fake.calls == [] and primary.applied == []


def test_a_setting_the_transmitter_refuses_is_undone(primary):
    primary.fake.refuse("set", "bandwidth_limit: must be positive bytes/s")
    msg = refused(primary, f"{VOL} set replication bandwidth_limit=2M")
    assert msg == ("the new settings refused by the transmitter of vol1: bandwidth_limit: "
                   "must be positive bytes/s; nothing changed")
    assert saved(primary.state_dir)["bandwidth_limit"] is None
    assert primary.applied[-1]["vol1"]["bandwidth_limit"] is None


def test_a_refusal_that_says_nothing_changed_is_not_repeated(primary):
    primary.fake.refuse("set", "set: bandwidth_limit: must be positive bytes/s, got 0 "
                               "(nothing changed)")
    assert refused(primary, f"{VOL} set replication bandwidth_limit=2M").endswith(
        "got 0 (nothing changed)")


def test_a_setting_with_the_transmitter_stopped_is_saved(primary):
    primary.fake.not_running("set", "transmitter-vol1.sock")
    out = primary.run(f"{VOL} set replication bandwidth_limit=1G")
    assert saved(primary.state_dir)["bandwidth_limit"] == 1 << 30
    assert "the settings take effect when it runs" in out


def test_set_global_still_works_on_a_volume(primary):
    primary.run(f"{VOL} set global auto_cd_after_create=false")
    assert primary.shell.prefs["auto_cd_after_create"] is False


def test_a_hand_configured_volume_is_changed_live_only_and_says_so(primary):
    (primary.state_dir / "site.json").unlink()
    out = primary.run(f"{VOL} pause")
    assert primary.fake.calls == [("transmitter-vol1.sock", "pause", {})]
    assert "changed live only, not saved" in out and "(saved)" not in out
    assert "its settings are changed there" in refused(primary, f"{VOL} get replication")


def test_status_of_a_volume_is_its_primary_block_only(make_shell, daemons, tmp_path):
    """An appliance that is the primary of vol1 and the DR of another site's vol1: the
    volume's status shows its own block; the replica is under /replication/replicas."""
    from recorded_states import recorded
    snap = daemons.load("healthy")
    snap["receiver"] = recorded("dr_promoted")["receiver"]
    write_site(tmp_path / "replication")
    sh = make_shell()
    assert sh.run(f"{VOL} status") == (
        "vol1 role:primary peer:dr (192.0.2.2:7700)\n"
        "  link:connected replication:replicating journal:2% in-sync\n")


def test_ls_of_a_saved_volume_whose_transmitter_does_not_answer(make_shell, daemons,
                                                                tmp_path):
    write_site(tmp_path / "replication")
    sh = make_shell()
    assert sh.root.get_node(VOL).summary() == (
        "its transmitter does not answer: 'systemctl status appliance-transmitter@vol1'", False)


# --- help and completion -------------------------------------------------------------------


def test_help_and_tab_completion(primary):
    node = primary.root.get_node(VOL)
    assert node.ui_complete_pause({}, "j", "what") == ["journal "]
    assert node.ui_complete_resume({}, "", "what") == ["shipping", "journal"]
    assert node.ui_complete_verify({}, "t", "repair") == ["true "]
    assert node.ui_complete_set({"group": "replication"}, "b", "bandwidth_limit") == []
    assert "bandwidth_limit=" in node.ui_complete_set({"group": "replication"}, "",
                                                     "parameter")
    assert node.ui_complete_set({"group": "replication"}, "", "blackout")[0] == "none"
    assert "replication" in node.ui_complete_set({}, "r", "group")[0]
    assert "Compares the DR copy" in primary.run(f"{VOL} help verify")
    assert "what=journal" in primary.run(f"{VOL} help pause")
    text = primary.run(f"{VOL} set replication")
    assert "bandwidth_limit=bandwidth" in text and "blackout=blackout" in text


# --- over real control sockets ---------------------------------------------------------------


@pytest.fixture
def serving(tmp_path):
    """Control servers (the daemons' own ControlServer) on real unix sockets."""
    import asyncio
    import threading

    from appliance.control.server import ControlServer
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def serve(path: Path, commands: dict) -> None:
        server = ControlServer(path, commands)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        servers.append(server)

    yield serve
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_the_commands_reach_the_daemons_sockets(make_shell, daemons, tmp_path, serving):
    """The shell's real caller: the transmitter's socket by the volume's name, the
    handler's socket, JSON arguments, a CommandError's reason back as the message."""
    from appliance.control.client import call
    from appliance.control.server import CommandError

    got: list[tuple[str, dict]] = []

    def record(cmd, result):
        def handler(args):
            got.append((cmd, args))
            return result
        return handler

    def refuse_discard(args):
        raise CommandError("pause first: discard drops the records queued for the peer and "
                           "needs shipping paused; nothing changed")

    serving(tmp_path / "run" / "transmitter-vol1.sock", {
        "status": lambda args: {}, "pause": record("pause", {"paused": True}),
        "set": record("set", {"bandwidth_limit": 52428800.0, "blackout": []}),
        "discard": refuse_discard})
    serving(tmp_path / "handler.sock", {
        "pause-journal": record("pause-journal", {"volume": "vol1", "changed": True})})
    daemons.load("healthy")
    write_site(tmp_path / "replication")
    sh = make_shell(calls=call)
    sh.ctx.apply_volume = lambda name: None
    sh.run(f"{VOL} pause")
    sh.run(f"{VOL} set replication bandwidth_limit=50M")
    sh.run(f"{VOL} pause what=journal")
    assert got == [("pause", {}), ("set", {"bandwidth_limit": 52428800.0, "blackout": []}),
                   ("pause-journal", {"volume": "vol1"})]
    assert refused(sh, f"{VOL} discard") == (
        "discard refused by the transmitter of vol1: pause first: discard drops the records "
        "queued for the peer and needs shipping paused; nothing changed")
    (tmp_path / "handler.sock").unlink()          # the handler is not running
    assert refused(sh, f"{VOL} resume what=journal").startswith(
        "the handler does not answer (cannot talk to control socket")


def test_a_command_waits_as_long_as_the_daemon_works_a_status_briefly(tmp_path):
    """pause-journal, rollback, promote answer once done: a status timeout would report a
    failure while they go on. A status is waited for briefly (the whole status asks many)."""
    from targetcli_ext.config import ShellConfig
    from targetcli_ext.context import ReplicationContext

    waited: list[tuple[str, float]] = []

    def caller(path, cmd, args=None, *, timeout):
        waited.append((cmd, timeout))
        return {}

    config = ShellConfig(state_dir=tmp_path)
    ctx = ReplicationContext(config, collect=lambda: {}, caller=caller)
    ctx.call(tmp_path / "handler.sock", "pause-journal", volume="vol1")
    ctx.status_of(tmp_path / "exporter.sock")
    assert waited == [("pause-journal", config.command_timeout_s),
                      ("status", config.status_timeout_s)]
    assert config.command_timeout_s >= 60 > config.status_timeout_s
