"""/replication/replicas on a DR appliance: one node per replica the receiver reports (named
by the primary's volume name, else its uuid), its one-line state in 'ls', and the failover
commands, each a receiver control call {"volume": <uuid>} whose result or refusal is
printed (docs/failover.md)."""

from __future__ import annotations

import re

import pytest
from configshell_fb import ExecutionError
from recorded_states import recorded
from shell_fakes import FakeDaemons, refused

from targetcli_ext.replica_nodes import UIReplicas, promote_text

UUID = "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91"


@pytest.fixture
def dr(make_shell, daemons):
    def make(state: str = "dr_healthy", name: str | None = "vol1"):
        snap = daemons.load(state)
        if name is not None:
            snap["receiver"]["volumes"][UUID]["name"] = name
        sh = make_shell()
        sh.fake = FakeDaemons()
        sh.ctx.call = sh.fake
        replication = sh.root.get_node("/replication")
        if "replicas" not in {c.name for c in replication.children}:
            UIReplicas(replication)       # until the coordinator wires it into UIReplication
        return sh
    return make


def ls_lines(out: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            (re.search(r"o- (\S+) \.+ \[(.*)\]$", line) for line in out.splitlines()) if m}


def test_replicas_are_named_by_the_primarys_volume_name_or_uuid(dr):
    sh = dr()
    lines = ls_lines(sh.run("/replication/replicas ls"))
    assert lines["replicas"] == "Replicas: 1 (1 consistent and connected)"
    assert lines["vol1"] == f"consistent, connected, in sync, {UUID}"
    sh = dr(name=None)
    assert UUID in ls_lines(sh.run("/replication/replicas ls"))


def test_ls_colour(dr):
    node = dr().root.get_node("/replication/replicas/vol1")
    assert node.summary()[1] is True                   # consistent and connected: green
    node = dr("dr_no_primary").root.get_node("/replication/replicas/vol1")
    assert node.summary() == (f"consistent, disconnected, behind, {UUID}", False)
    node = dr("inconsistent").root.get_node("/replication/replicas/vol1")
    assert node.summary()[0].startswith("inconsistent since 21:48:20")
    node = dr("dr_promoted").root.get_node("/replication/replicas/vol1")
    assert node.summary() == (f"promoted since 22:08:20, disconnected, {UUID}", None)


def test_status_of_one_replica(dr):
    sh = dr("dr_promoted")
    assert sh.run("/replication/replicas/vol1 status").splitlines()[:2] == [
        "vol1 role:dr primary:site-a",
        "  link:disconnected since 22:08:10 replica:promoted since 22:08:20"]


def test_promote_calls_the_receiver_and_prints_what_to_do_next(dr):
    sh = dr()
    mirror = f"/var/lib/appliance/replicas/{UUID}/mirror"
    sh.fake.answers["promote"] = {"volume": UUID, "promoted_at_seq": 48223, "generation": 2,
                                  "former_primary": "site-a", "mirror": mirror,
                                  "time": 1699999700.0, "next_steps": "promoted: ..."}
    out = sh.run("/replication/replicas/vol1 promote")
    assert sh.fake.calls == [("receiver.sock", "promote", {"volume": UUID})]
    lines = out.splitlines()
    assert lines[0] == (f"Promoted vol1 ({UUID}): {mirror} holds the primary's image after "
                        f"seq 48223, generation 2.")
    assert lines[1] == "'site-a' is fenced off: the receiver refuses it ('promoted')."
    assert (f"     /backstores/user:mirror create name=vol1 size=10737418240 "
            f"cfgstring=mirror={mirror};journal=/var/lib/appliance/journals/vol1.jnl") in lines
    assert "receiver said" not in out


def test_promote_refused_shows_the_reason_and_nothing_changed(dr):
    sh = dr("inconsistent")
    sh.fake.answers["promote"] = ExecutionError(
        f"volume {UUID} is inconsistent (a resync or full copy was under way): run "
        f"'appliance-dr rollback {UUID}' first to restore its last consistent image, then "
        f"promote")
    assert refused(sh, "/replication/replicas/vol1 promote") == (
        f"promote of vol1 refused by the receiver: volume {UUID} is inconsistent (a resync "
        f"or full copy was under way): run 'appliance-dr rollback {UUID}' first to restore "
        f"its last consistent image, then promote; nothing changed")


@pytest.mark.parametrize("cmd, answer, said", [
    ("demote", {"demoted_keeping_generation": 2},
     "vol1 is a DR replica again (generation 2 kept): the primary resyncs it when it "
     "connects."),
    ("rollback", {"rolled_back_to_seq": 48100},
     "vol1 is back at its last consistent image (seq 48100): it can be promoted now."),
    ("invalidate", {"invalidated_at_seq": 48223},
     "vol1: the primary's next contact is a full copy (its image at seq 48223 is kept until "
     "then)."),
])
def test_each_failover_command_calls_the_receiver(dr, cmd, answer, said):
    sh = dr()
    sh.fake.answers[cmd] = {"volume": UUID, **answer, "mirror": "/m"}
    out = sh.run(f"/replication/replicas/vol1 {cmd}")
    assert sh.fake.calls == [("receiver.sock", cmd, {"volume": UUID})]
    assert said in out


def test_a_refusal_worded_by_the_receiver_is_not_repeated(dr):
    sh = dr()
    sh.fake.answers["demote"] = ExecutionError(
        f"demote refused: volume {UUID} is not promoted; nothing changed")
    assert refused(sh, "/replication/replicas/vol1 demote") == (
        f"vol1: demote refused: volume {UUID} is not promoted; nothing changed")


def test_a_receiver_that_does_not_answer(dr):
    sh = dr()
    sh.fake.answers["demote"] = ExecutionError(
        "cannot talk to control socket /run/appliance/receiver.sock: [Errno 111] Connection "
        "refused")
    assert refused(sh, "/replication/replicas/vol1 demote").startswith(
        "the receiver does not answer (cannot talk to control socket")


def test_forget_keeps_data_unless_asked_and_removes_the_node(dr):
    sh = dr()
    sh.fake.answers["forget"] = {"removed": [], "kept": [f"/var/lib/appliance/replicas/{UUID}"]}
    out = sh.run("/replication/replicas/vol1 forget")
    assert sh.fake.calls == [("receiver.sock", "forget", {"volume": UUID,
                                                          "remove_data": False})]
    assert f"kept on disk: /var/lib/appliance/replicas/{UUID}" in out
    assert "vol1" not in {c.name for c in sh.root.get_node("/replication/replicas").children}
    sh = dr()
    sh.run("/replication/replicas/vol1 forget remove_data=true")
    assert sh.fake.calls[-1][2] == {"volume": UUID, "remove_data": True}
    assert "remove_data='x' is neither true nor false" in refused(
        dr(), "/replication/replicas/vol1 forget remove_data=x")


def test_help_and_completion(dr):
    sh = dr()
    node = sh.root.get_node("/replication/replicas/vol1")
    assert node.ui_complete_forget({}, "f", "remove_data") == ["false "]
    commands = sh.run("/replication/replicas/vol1 help")
    for cmd in ("promote", "demote", "rollback", "invalidate", "forget", "status"):
        assert f"- {cmd}" in commands
    assert "Failover" in sh.run("/replication/replicas/vol1 help promote")


def test_no_receiver_no_replicas(dr):
    sh = dr("healthy", name=None)
    assert ls_lines(sh.run("/replication/replicas ls"))["replicas"] == "Replicas: 0"
    assert "no replicas" in sh.run("/replication/replicas status")


def test_promote_text_without_a_name_or_size():
    text = promote_text(UUID, UUID, {"mirror": "/dev/vg/r1"}, None)
    assert ("/backstores/user:mirror create name=vol-6f1c2a52 size=<size_bytes> "
            "cfgstring=mirror=/dev/vg/r1;journal=/var/lib/appliance/journals/"
            "vol-6f1c2a52.jnl") in text


def test_recorded_promoted_state_is_what_the_receiver_reports():
    r = recorded("dr_promoted")["receiver"]["volumes"][UUID]
    assert r["state"] == "promoted" and set(r["promoted"]) == {"at_seq", "former_primary",
                                                               "generation", "time"}


def test_create_and_forget_a_replica_on_the_admins_device(dr):
    """A replica on a block device the admin made is configured in site.json (and the
    receiver's TOML, by the context); forgetting it keeps the device's data."""
    sh = dr("dr_healthy", name=None)
    if not hasattr(sh.ctx, "add_replica"):
        pytest.skip("the context has no add_replica yet")
    out = sh.run(f"/replication/replicas create name=r1 uuid={UUID} mirror=/dev/vg0/r1 "
                 f"size_bytes=10737418240")
    assert f"Created replica r1 of volume {UUID} on /dev/vg0/r1." in out
    site = sh.ctx.store.load()
    assert site.replicas["r1"].mirror == "/dev/vg0/r1"
    assert "nothing changed" in refused(
        sh, f"/replication/replicas create name=r2 uuid={UUID} mirror=/dev/vg0/r2 "
            f"size_bytes=10737418240")
    # Before the primary's first contact the receiver knows no name: the node is named as
    # the admin named the replica here.
    assert "keeps its data" in refused(sh, "/replication/replicas/r1 forget remove_data=true")
    out = sh.run("/replication/replicas/r1 forget")
    assert "/dev/vg0/r1 is left as it is" in out
    assert "r1" not in sh.ctx.store.load().replicas
    assert not [c for c in sh.fake.calls if c[1] == "forget"]


def test_an_offer_the_receiver_refused_is_listed_red_with_what_to_do(dr):
    sh = dr("dr_refused_offer", name=None)
    lines = ls_lines(sh.run("/replication/replicas ls"))
    assert lines["replicas"] == "Replicas: 1 (0 consistent and connected)"
    assert lines["vol1"] == f"none (not provisioned), refused (no-space), behind, {UUID}"
    assert sh.root.get_node("/replication/replicas/vol1").summary()[1] is False
    assert "/replication/replicas create name=vol1" in sh.run("/replication/replicas status")
