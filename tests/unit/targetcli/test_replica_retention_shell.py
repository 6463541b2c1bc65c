"""/replication/replicas/<name>: the point-in-time commands. 'set retention' parses each
value (refused naming the parameter, before any call) and asks the receiver's set-retention;
'get retention' and 'status'/'info' show the window the receiver reports; 'recover at=...'
asks the receiver's recover and prints the file, its point and what to do next."""

from __future__ import annotations

import pytest
from recorded_states import recorded  # noqa: F401  (the fixtures' recorded states)
from shell_fakes import FakeDaemons, refused

from targetcli_ext.replica_nodes import UIReplicas

UUID = "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91"
WINDOW = {"retain_s": 86400.0, "retain_bytes": 200 << 30, "enabled": True,
          "bytes": 3 << 29, "segments": 12,
          "oldest": {"seq": 48000, "time": 1796000000.25},
          "newest": {"seq": 48223, "time": 1796003600.5}}


@pytest.fixture
def dr(make_shell, daemons):
    def make(window: dict | None = WINDOW):
        snap = daemons.load("dr_healthy")
        vol = snap["receiver"]["volumes"][UUID]
        vol["name"] = "vol1"
        if window is not None:
            vol["retention"] = window
        sh = make_shell()
        sh.fake = FakeDaemons()
        sh.ctx.call = sh.fake
        replication = sh.root.get_node("/replication")
        if "replicas" not in {c.name for c in replication.children}:
            UIReplicas(replication)
        return sh
    return make


def test_set_retention_calls_the_receiver_with_parsed_values(dr):
    sh = dr()
    sh.fake.answers["set-retention"] = {"volume": UUID, "retention": WINDOW}
    out = sh.run("/replication/replicas/vol1 set retention retain=24h max=200G")
    assert sh.fake.calls == [("receiver.sock", "set-retention",
                              {"volume": UUID, "retain_s": 86400.0,
                               "retain_bytes": 200 << 30})]
    assert "Parameter retain is now '1d'." in out and "Parameter max is now '200G'." in out
    assert ("recoverable: seq 48000 (2026-11-30T00:53:20.250000Z) to seq 48223 "
            "(2026-11-30T01:53:20.500000Z), 1.5 GiB on disk") in out


def test_set_retention_refuses_a_bad_value_naming_it_before_any_call(dr):
    sh = dr()
    assert refused(sh, "/replication/replicas/vol1 set retention retain=soon").startswith(
        "retain='soon' does not parse: give a duration with s, m, h or d (e.g. retain=24h)")
    assert refused(sh, "/replication/replicas/vol1 set retention keep=1h") == (
        "no parameter keep in group 'retention' (parameters: retain, max); nothing changed")
    assert sh.fake.calls == []


def test_set_retention_off(dr):
    sh = dr()
    sh.fake.answers["set-retention"] = {"retention": {"retain_s": 0, "retain_bytes": 0,
                                                      "enabled": False}}
    out = sh.run("/replication/replicas/vol1 set retention retain=none max=none")
    assert sh.fake.calls[0][2] == {"volume": UUID, "retain_s": 0.0, "retain_bytes": 0}
    assert "Parameter retain is now 'none'." in out and "Retention of vol1: off" in out


def test_get_retention_status_and_info_show_the_window(dr):
    sh = dr()
    out = sh.run("/replication/replicas/vol1 get retention")
    assert out.splitlines() == [
        "retain=1d", "max=200G",
        "window=seq 48000 (2026-11-30T00:53:20.250000Z) to seq 48223 "
        "(2026-11-30T01:53:20.500000Z), 1.5 GiB on disk [ro]"]
    assert "  retention: retain=1d max=200G, recoverable: seq 48000" in sh.run(
        "/replication/replicas/vol1 status")
    assert "retention:   retain=1d max=200G" in sh.run("/replication/replicas/vol1 info")
    off = dr({"retain_s": 0, "retain_bytes": 0, "enabled": False})
    assert off.run("/replication/replicas/vol1 get retention window").strip() == \
        "window=none (retention is off) [ro]"


def test_recover_prints_the_file_and_the_next_step(dr):
    sh = dr()
    path = f"/var/lib/appliance/replicas/{UUID}/recovered-48120.img"
    sh.fake.answers["recover"] = {
        "volume": UUID, "path": path, "seq": 48120, "time": 1796001000.0,
        "time_utc": "2026-11-30T01:10:00.000000Z",
        "next_steps": f"recovered: {path} ...\n  /backstores/block create name=recovered-48120 "
                      f"dev=/dev/loopN readonly=true\n"}
    out = sh.run("/replication/replicas/vol1 recover at=2026-11-30T01:10:00Z")
    assert sh.fake.calls == [("receiver.sock", "recover",
                              {"volume": UUID, "at": "2026-11-30T01:10:00Z"})]
    assert out.splitlines()[0] == (f"Recovered vol1 at seq 48120 (2026-11-30T01:10:00.000000Z, "
                                   f"primary clock): {path}")
    assert "/backstores/block create name=recovered-48120 dev=/dev/loopN readonly=true" in out


def test_recover_outside_the_window_shows_the_receivers_range(dr):
    sh = dr()
    sh.fake.refuse("recover", f"recover refused: volume {UUID}: seq 5 is outside the retention "
                              f"window; recoverable: seq 48000 (...) to seq 48223 (...); "
                              f"nothing changed")
    assert refused(sh, "/replication/replicas/vol1 recover at=seq:5").startswith(
        f"vol1: recover refused: volume {UUID}: seq 5 is outside the retention window; "
        f"recoverable: seq 48000")
    assert refused(sh, "/replication/replicas/vol1 recover").startswith("say which point")
