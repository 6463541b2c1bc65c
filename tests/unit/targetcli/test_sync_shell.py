"""The replication mode from the shell (/replication/volumes/<name>, group 'sync'): 'set sync'
asks the handler (set-sync, on the backstore's name) with every value parsed first and the
values not given kept from the handler's status; 'get sync' shows what the handler runs with;
a refused value, a handler refusal or a handler that does not answer changes nothing (and
site.json is never touched: the handler keeps the mode itself).

The handler is ``FakeHandler``: it answers status and set-sync from its state, checking the
settings with the handler's own ``SyncSettings.parse`` and refusing as it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from configshell_fb import ExecutionError
from shell_fakes import refused

from appliance.volume.sync_mode import SyncSettings, SyncSettingsError

FP = "SHA256:" + ":".join(["5E"] * 32)
VOL = "/replication/volumes/vol1"
SINCE = 1699999800.0            # 22:10:00 UTC, 200 s before the recorded moment


def write_site(state_dir: Path, backstore: str = "disk7") -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "site.json").write_text(json.dumps({
        "version": 3, "identity": "site-a", "listen": "0.0.0.0:7700",
        "peers": {"dr": {"address": "192.0.2.2:7700", "fingerprint": FP}},
        "volumes": {"vol1": {"backstore": backstore, "peer": "dr", "paused": False,
                             "bandwidth_limit": None, "blackout": []}}, "replicas": {}}))


class FakeHandler:
    """The handler's control socket: ``status`` and ``set-sync`` of one backstore."""

    def __init__(self, backstore: str) -> None:
        self.backstore = backstore
        self.calls: list[tuple[str, str, dict]] = []
        self.sync: dict | None = {"mode": "async", "fallback_s": 10.0, "hold": False, "effective": "async",
                     "degraded_since": None, "degraded_reason": None, "holding_since": None,
                     "acked_seq": 0, "waits": 0, "wait_seconds": 0.0, "max_wait_s": 0.0,
                     "fallbacks": 0}
        self.down = False
        self.refusal: str | None = None

    def __call__(self, socket, cmd: str, **args):
        self.calls.append((Path(socket).name, cmd, dict(args)))
        if self.down:
            raise ExecutionError(f"cannot talk to control socket {socket}: [Errno 2] No such "
                                 f"file or directory")
        if cmd == "status":
            entry = {} if self.sync is None else {"sync": dict(self.sync)}
            return {"role": "handler", "volumes": {self.backstore: entry}}
        assert cmd == "set-sync", cmd
        if self.refusal:
            raise ExecutionError(self.refusal)
        name = args.pop("volume")
        if name != self.backstore:
            raise ExecutionError(f"no volume {name!r} is served by this handler (it serves "
                                 f"{self.backstore}); nothing changed")
        try:
            new = SyncSettings.parse(**args).as_dict()
        except SyncSettingsError as err:
            raise ExecutionError(f"{err}; nothing changed") from None
        changed = any(self.sync[k] != v for k, v in new.items())
        if changed:
            self.sync.update(new, effective=new["mode"], degraded_since=None,
                             degraded_reason=None)
        return {"volume": name, "changed": changed, "sync": dict(self.sync)}


@pytest.fixture
def primary(make_shell, daemons, tmp_path):
    """vol1 on backstore disk7, replicated (site.json, a healthy transmitter); the handler
    fake."""
    daemons.load("healthy")
    write_site(tmp_path / "replication")
    sh = make_shell()
    sh.handler = FakeHandler("disk7")
    sh.ctx.call = sh.handler
    sh.site_before = (sh.state_dir / "site.json").read_text()
    return sh


def set_sync_calls(sh) -> list[dict]:
    return [args for sock, cmd, args in sh.handler.calls if cmd == "set-sync"]


# --- set sync -------------------------------------------------------------------------------


def test_set_sync_asks_the_handler_with_the_backstore_name_and_saves_nothing(primary):
    out = primary.run(f"{VOL} set sync mode=sync fallback=5s hold=false")
    assert primary.handler.calls == [("handler.sock", "set-sync", {
        "volume": "disk7", "mode": "sync", "fallback_s": 5.0, "hold": False})]
    assert "Parameter mode is now 'sync'." in out
    assert "Parameter fallback is now '5s'." in out
    assert "Parameter hold is now 'false'." in out
    assert ("Replication mode of vol1 is now sync, falling back to async after 5s; the "
            "handler keeps it across restarts.") in out
    assert (primary.state_dir / "site.json").read_text() == primary.site_before
    assert primary.handler.sync["mode"] == "sync"


def test_a_parameter_not_given_keeps_the_handlers_value(primary):
    primary.handler.sync.update(mode="sync", fallback_s=5.0, hold=False)
    out = primary.run(f"{VOL} set sync fallback=500ms")
    assert [c[1] for c in primary.handler.calls] == ["status", "set-sync"]
    assert set_sync_calls(primary) == [{"volume": "disk7", "mode": "sync", "fallback_s": 0.5,
                                        "hold": False}]
    assert "Parameter fallback is now '500ms'." in out
    primary.run(f"{VOL} set sync mode=sync-on-flush")
    assert set_sync_calls(primary)[-1] == {"volume": "disk7", "mode": "sync-on-flush",
                                           "fallback_s": 0.5, "hold": False}
    primary.run(f"{VOL} set sync mode=async")
    assert primary.handler.sync["mode"] == "async" and primary.handler.sync["fallback_s"] == 0.5


def test_units_and_spellings_of_the_values(primary):
    for text, seconds in (("2s", 2.0), ("1m", 60.0), ("250ms", 0.25), ("10ms", 0.01),
                          ("1h", 3600.0), ("30", 30.0)):
        primary.run(f"{VOL} set sync mode=sync fallback={text} hold=no")
        assert set_sync_calls(primary)[-1]["fallback_s"] == seconds, text
    primary.run(f"{VOL} set sync mode=SYNC-ON-FLUSH fallback=2s hold=yes")
    assert set_sync_calls(primary)[-1] == {"volume": "disk7", "mode": "sync-on-flush",
                                           "fallback_s": 2.0, "hold": True}


def test_hold_true_warns_that_host_writes_then_wait(primary):
    out = primary.run(f"{VOL} set sync mode=sync hold=true")
    assert "sync, holding writes while the DR does not answer (no fall-back)" in out
    assert ("hold=true: while the DR does not answer, host writes to vol1 wait for it, "
            "however long") in out


def test_the_same_setting_again_changes_nothing_and_says_so(primary):
    primary.run(f"{VOL} set sync mode=sync fallback=5s hold=false")
    out = primary.run(f"{VOL} set sync mode=sync fallback=5s hold=false")
    assert "The replication mode of vol1 already was so: nothing changed." in out


def test_a_volume_configured_by_hand_is_its_own_backstore(primary):
    (primary.state_dir / "site.json").unlink()
    primary.handler.backstore = "vol1"
    primary.run(f"{VOL} set sync mode=sync fallback=5s hold=false")
    assert set_sync_calls(primary)[0]["volume"] == "vol1"
    assert not (primary.state_dir / "site.json").exists()


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ("mode=fast", "mode='fast' is not a replication mode: give mode=async, mode=sync or "
                  "mode=sync-on-flush; nothing changed"),
    ("mode=sync fallback=5x", "fallback='5x' is not a duration: give a duration from 10ms to "
                              "1h with ms, s or m, e.g. fallback=5s or fallback=500ms; "
                              "nothing changed"),
    ("fallback=2h", "fallback='2h' is out of range: give a duration from 10ms to 1h"),
    ("fallback=5ms", "fallback='5ms' is out of range"),
    ("fallback=0", "fallback='0' is out of range"),
    ("fallback=-1s", "fallback='-1s' is not a duration"),
    ("mode=sync hold=maybe", "hold='maybe' is neither true nor false: use hold=true or "
                             "hold=false; nothing changed"),
    ("mode=sync speed=5", "no parameter speed in group 'sync' (parameters: mode, fallback, "
                          "hold); nothing changed"),
    ("effective=sync", "no parameter effective in group 'sync'"),
])
def test_bad_values_are_refused_before_the_handler_is_asked(primary, params, message):
    msg = refused(primary, f"{VOL} set sync {params}")
    assert msg.startswith(message) and msg.endswith("; nothing changed"), msg
    assert primary.handler.calls == []
    assert primary.handler.sync["mode"] == "async"
    assert (primary.state_dir / "site.json").read_text() == primary.site_before


def test_a_refusal_of_the_handler_is_shown_once_with_nothing_changed(primary):
    primary.handler.refusal = ("mode 'sync' is not a replication mode: give one of async; "
                               "nothing changed")
    assert refused(primary, f"{VOL} set sync mode=sync fallback=5s hold=false") == (
        "set-sync refused by the handler: mode 'sync' is not a replication mode: give one of "
        "async; nothing changed")
    primary.handler.refusal = None
    primary.handler.backstore = "other"
    assert refused(primary, f"{VOL} set sync mode=sync fallback=5s hold=false") == (
        "set-sync refused by the handler: no volume 'disk7' is served by this handler (it "
        "serves other); nothing changed")


def test_a_handler_that_does_not_answer(primary):
    primary.handler.down = True
    for cmdline in ("set sync mode=sync fallback=5s hold=false", "set sync fallback=1s",
                    "get sync"):
        msg = refused(primary, f"{VOL} {cmdline}")
        assert msg.startswith("the handler does not answer (cannot talk to control socket")
        assert msg.endswith("check 'systemctl status appliance-handler'; nothing changed")
    assert primary.handler.sync["mode"] == "async"


def test_a_handler_that_does_not_serve_the_backstore_or_know_modes(primary):
    primary.handler.backstore = "disk9"
    assert refused(primary, f"{VOL} set sync fallback=1s") == (
        "the handler does not serve backstore 'disk7' (it serves: disk9): check that it is in "
        "/backstores/user:mirror; nothing changed")
    primary.handler.backstore = "disk7"
    primary.handler.sync = None       # an older handler: no sync entry in its status
    assert refused(primary, f"{VOL} get sync").startswith(
        "the handler does not report a replication mode for disk7")


# --- get sync -------------------------------------------------------------------------------


def test_get_sync_shows_what_the_handler_runs_with(primary):
    primary.handler.sync.update(mode="sync", fallback_s=5.0, effective="sync")
    assert primary.run(f"{VOL} get sync").splitlines() == [
        "mode=sync", "fallback=5s", "hold=false", "effective=sync [ro]"]
    assert primary.run(f"{VOL} get sync fallback mode").splitlines() == [
        "fallback=5s", "mode=sync"]
    assert [c[1] for c in primary.handler.calls] == ["status", "status"]   # one call each
    assert "no parameter speed in group 'sync'" in refused(primary, f"{VOL} get sync speed")


def test_get_sync_effective_after_a_fall_back_and_while_holding(primary):
    primary.handler.sync.update(
        mode="sync", effective="sync-degraded", degraded_since=SINCE,
        degraded_reason="the DR did not acknowledge the write (seq 48230) within 5 s")
    assert primary.run(f"{VOL} get sync effective").strip() == (
        "effective=sync-degraded since 22:10:00: the DR did not acknowledge the write (seq "
        "48230) within 5 s [ro]")
    primary.handler.sync.update(mode="sync", effective="sync", degraded_since=None, hold=True,
                                degraded_reason=None, holding_since=SINCE)
    assert primary.run(f"{VOL} get sync effective hold").splitlines() == [
        "effective=sync, holding writes since 22:10:00 (the DR has not acknowledged them) [ro]",
        "hold=true"]


# --- help and completion ---------------------------------------------------------------------


def test_completion_of_the_group_its_parameters_and_values(primary):
    node = primary.root.get_node(VOL)
    assert "sync " in node.ui_complete_set({}, "sy", "group")
    assert sorted(node.ui_complete_set({"group": "sync"}, "", "parameter")) == [
        "fallback=", "hold=", "mode="]
    assert sorted(node.ui_complete_set({"group": "sync", "mode": "sync"}, "",
                                       "parameter")) == ["fallback=", "hold="]
    assert node.ui_complete_set({"group": "sync"}, "", "mode") == [
        "async", "sync", "sync-on-flush"]
    assert node.ui_complete_set({"group": "sync"}, "s", "mode") == ["sync", "sync-on-flush"]
    assert node.ui_complete_set({"group": "sync"}, "sync-", "mode") == ["sync-on-flush "]
    assert node.ui_complete_set({"group": "sync"}, "t", "hold") == ["true "]
    assert "5s" in node.ui_complete_set({"group": "sync"}, "", "fallback")
    assert sorted(node.ui_complete_get({"group": "sync"}, "", "parameter")) == [
        "effective", "fallback", "hold", "mode"]


def test_help_names_the_modes_and_set_sync_lists_its_parameters(primary):
    text = primary.run(f"{VOL} help set")
    assert "set sync mode=sync fallback=5s hold=false" in text
    assert "mode=sync-on-flush" in text and "hold=true" in text
    listed = primary.run(f"{VOL} set sync")
    assert "mode=syncmode" in listed and "fallback=fallback" in listed
    assert "hold=holdflag" in listed and "effective" not in listed
    assert "get sync" in primary.run(f"{VOL} help get")
    assert primary.handler.calls == []
