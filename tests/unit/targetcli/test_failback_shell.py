"""Failback from the shell on the old primary site (docs/shell.md, "Failback"): the replicated
volume's transmitter is stopped and retired, a replica of the same name takes its place over
the OLD mirror with the old journal as failback_journal and the peer's identity as the only
primary, and the receiver reloads; refused, with every file unchanged, while the backstore
exists or on bad input. 'replicas create failback_journal=' is the general path; 'resolve'
decides a split brain; the replica's status shows what the failback found."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import tomllib
import uuid

import pytest
from shell_fakes import FakeDaemons, mirror_backstore, refused

from appliance.replication.config import receiver_config
from appliance.replication.dr.failback import FailbackPlan
from appliance.volume.identity import mirror_volume_uuid
from appliance.volume.promotion_base import PromotionBase
from targetcli_ext import restore
from targetcli_ext.daemon_config import HEADER
from targetcli_ext.identity import ensure_certificate
from targetcli_ext.operations import Notes
from targetcli_ext.replica_nodes import UIReplicas, promote_text
from targetcli_ext.status_text import render_volume, volume_views

NEW = "0b5e4c1d-2a3f-5e6d-8c7b-9a0f1e2d3c4b"       # the new primary's volume uuid
UUID = "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91"      # the recorded DR states' replica
TX_UNIT = "appliance-transmitter@disk0.service"


@pytest.fixture(scope="module")
def peer_cert(tmp_path_factory):
    """The promoted site's certificate (identity 'site-b'; made once: openssl is slow)."""
    return ensure_certificate(tmp_path_factory.mktemp("site-b"), "site-b")


def files(state_dir) -> dict:
    return {p.relative_to(state_dir): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(state_dir.rglob("*")) if p.is_file() and p.name != ".site.lock"}


@pytest.fixture
def site_a(make_shell, lio, tmp_path, peer_cert):
    """Site A, the old primary: disk0 replicated to peer b, its files on disk."""
    der = ssl.PEM_cert_to_DER_cert(peer_cert.cert.read_text())
    sh = make_shell(fetch=lambda address, timeout: der)
    sh.run(f"/replication/peers create name=b address=192.0.2.2:7700 "
           f"fingerprint={peer_cert.fingerprint}")
    vols = tmp_path / "volumes"
    vols.mkdir()
    for suffix in ("img", "jnl", "jnl.bitmap"):
        (vols / f"disk0.{suffix}").write_bytes(b"")
    sh.so = mirror_backstore(lio, "disk0", vols)
    sh.vols = vols
    sh.run("/replication/volumes create backstore=disk0 peer=b")
    sh.units.log.clear()
    sh.calls.log.clear()
    return sh


def delete_backstore(sh, lio) -> None:
    """'delete disk0' in /backstores/user:mirror: the handler stops serving it."""
    lio.storage_objects.remove(sh.so)


def receiver_volumes(sh) -> list[dict]:
    path = sh.state_dir / "receiver.toml"
    assert path.read_text().startswith(HEADER)
    doc = tomllib.loads(path.read_text())
    receiver_config(doc, str(path))                 # the receiver takes it as it is
    return doc.get("volume", [])


def test_failback_refused_while_the_backstore_exists(site_a):
    before = files(site_a.state_dir)
    said = refused(site_a, f"/replication/volumes/disk0 failback uuid={NEW}")
    assert said == (
        "backstore user:mirror/disk0 still exists: its handler holds the volume's journal and "
        "mirror. Delete /backstores/user:mirror/disk0 first (the hosts lose that LUN; its "
        "files stay), then run failback again; nothing changed")
    assert files(site_a.state_dir) == before
    assert site_a.units.log == [] and site_a.calls.log == []
    assert "disk0" in {c.name for c in site_a.root.get_node("/replication/volumes").children}


def test_failback_retires_the_transmitter_and_receives_into_the_old_mirror(site_a, lio):
    vols = site_a.vols
    old_uuid = str(mirror_volume_uuid(f"{vols}/disk0.img"))
    delete_backstore(site_a, lio)
    out = site_a.run(f"/replication/volumes/disk0 failback uuid={NEW}")

    # The receiver's file: the old mirror, the old journal, the peer alone admitted.
    assert receiver_volumes(site_a) == [{
        "uuid": NEW, "size_bytes": 64 << 20, "block_size": 512,
        "mirror": f"{vols}/disk0.img", "allowed_primaries": ["site-b"],
        "failback_journal": f"{vols}/disk0.jnl"}]
    # The transmitter: stopped, its file gone, the volume out of site.json.
    assert site_a.units.log == [("stop", TX_UNIT)]
    assert not (site_a.state_dir / "transmitter-disk0.toml").exists()
    site = site_a.ctx.store.load()
    assert site.volumes == {}
    assert site.replicas["disk0"].failback_journal == f"{vols}/disk0.jnl"
    assert site.replicas["disk0"].allowed_primaries == ("site-b",)
    assert ("receiver.sock", "reload", {}) in site_a.calls.log
    # What the admin reads.
    lines = out.splitlines()
    assert lines[lines.index("Info: Receiver reloaded.") + 1] == (f"Volume disk0 is now the DR replica disk0 of volume {NEW} from peer b "
                        f"(192.0.2.2:7700), over this site's old mirror.")
    assert ("  transmitter: appliance-transmitter@disk0.service stopped, "
            "transmitter-disk0.toml removed (a boot does not start it again)") in lines
    assert (f"  replica:     mirror {vols}/disk0.img (67108864 bytes, 512-byte blocks), "
            f"failback_journal {vols}/disk0.jnl; only 'site-b' is admitted") in lines
    assert any(line.startswith("  1. on b: /replication/volumes create backstore=") for line in lines)
    assert "  3. run 'saveconfig': the saved configuration wins at boot" in lines
    assert "Receiver reloaded." in out
    assert old_uuid not in out                    # the uuids differ: no warning
    assert "disk0" not in {c.name for c in site_a.root.get_node("/replication/volumes").children}
    # The receiver reports it without a name until the new primary's first contact: the
    # shell names it as site.json does.
    site_a.daemons.snapshot = {"handler": None, "transmitters": {}, "errors": {}, "receiver": {
        "volumes": {NEW: {"name": "", "state": "consistent", "failback": None,
                          "link": {"state": "idle"}}}}}
    site_a.run("/replication/replicas refresh")
    assert site_a.run("/replication/replicas/disk0 status").startswith("disk0 role:dr\n")


def test_after_saveconfig_a_boot_keeps_the_replica_and_starts_no_transmitter(site_a, lio):
    delete_backstore(site_a, lio)
    site_a.run(f"/replication/volumes/disk0 failback uuid={NEW}")
    restore.save_replication(site_a.ctx, site_a.ctx.config.saved_config)
    (site_a.state_dir / "receiver.toml").unlink()
    site_a.units.log.clear()
    assert restore.restore(site_a.ctx, Notes()) is None
    assert [v["failback_journal"] for v in receiver_volumes(site_a)] == \
        [f"{site_a.vols}/disk0.jnl"]
    assert not [u for verb, u in site_a.units.log if u == TX_UNIT]
    assert not (site_a.state_dir / "transmitter-disk0.toml").exists()


@pytest.mark.parametrize("args, prepare, message", [
    ("", None, "uuid is missing: give the volume uuid of the new primary of disk0"),
    ("uuid=not-a-uuid", None, "uuid 'not-a-uuid' is not a uuid"),
    (f"uuid={NEW}", "keep-backstore", "backstore user:mirror/disk0 still exists"),
    (f"uuid={NEW}", "same-mirror", "backstore user:mirror/other still serves"),
    (f"uuid={NEW}", "hand-written", "transmitter-disk0.toml was written by hand"),
    (f"uuid={NEW}", "no-transmitter-file",
     "cannot tell where volume disk0's journal and mirror are"),
    (f"uuid={NEW}", "replica-name", "replica name 'disk0' is in use"),
    (f"uuid={NEW}", "provisioned", f"the receiver already keeps a replica of volume {NEW}"),
    (f"uuid={NEW}", "journal-gone", "failback_journal "),
    (f"uuid={NEW}", "stop-fails", "cannot stop the volume's transmitter"),
])
def test_bad_input_is_refused_naming_what_to_fix_and_nothing_changes(
        site_a, lio, tmp_path, args, prepare, message):
    from shell_fakes import FakeStorageObject
    if prepare != "keep-backstore":
        delete_backstore(site_a, lio)
    if prepare == "same-mirror":
        lio.storage_objects.append(FakeStorageObject(
            "other", "user", "", 64 << 20,
            config=f"mirror/mirror={site_a.vols}/disk0.img;journal={tmp_path}/other.jnl"))
    elif prepare == "hand-written":
        (site_a.state_dir / "transmitter-disk0.toml").write_text("# mine\n")
    elif prepare == "no-transmitter-file":
        (site_a.state_dir / "transmitter-disk0.toml").unlink()
    elif prepare == "replica-name":
        site_a.run(f"/replication/replicas create name=disk0 uuid={UUID} mirror=/dev/vg0/r1 "
                   f"size_bytes=1048576")
    elif prepare == "provisioned":
        snap = {"handler": None, "transmitters": {}, "errors": {},
                "receiver": {"volumes": {NEW: {"name": "disk0", "state": "consistent"}}}}
        site_a.daemons.snapshot = snap
    elif prepare == "journal-gone":
        (site_a.vols / "disk0.jnl").unlink()
    elif prepare == "stop-fails":
        site_a.units.failing[TX_UNIT] = "Unit not loaded"
    site_a.units.log.clear()
    site_a.calls.log.clear()
    before = files(site_a.state_dir)
    said = refused(site_a, f"/replication/volumes/disk0 failback {args}".rstrip())
    assert message in said
    assert said.endswith("; nothing changed")
    assert files(site_a.state_dir) == before
    assert site_a.calls.log == []
    assert site_a.units.log in ([], [("stop", TX_UNIT)] if prepare == "stop-fails" else [])
    assert "disk0" in {c.name for c in site_a.root.get_node("/replication/volumes").children}


def test_a_failure_after_the_stop_starts_the_transmitter_again(site_a, lio, monkeypatch):
    delete_backstore(site_a, lio)
    before = files(site_a.state_dir)

    def cannot_save(site):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(site_a.ctx.store, "save", cannot_save)
    said = refused(site_a, f"/replication/volumes/disk0 failback uuid={NEW}")
    assert "No space left on device" in said and said.endswith("nothing changed")
    assert site_a.units.log == [("stop", TX_UNIT), ("start", TX_UNIT)]
    assert files(site_a.state_dir) == before


# --- the general path: /replication/replicas create failback_journal= ----------------------


def test_replicas_create_takes_a_failback_journal(site_a, lio):
    delete_backstore(site_a, lio)
    vols = site_a.vols
    out = site_a.run(f"/replication/replicas create name=r1 uuid={NEW} mirror={vols}/disk0.img "
                     f"size_bytes=67108864 failback_journal={vols}/disk0.jnl")
    assert (f"Created replica r1 of volume {NEW} on {vols}/disk0.img, failback from journal "
            f"{vols}/disk0.jnl.") in out
    (table,) = receiver_volumes(site_a)
    assert table["failback_journal"] == f"{vols}/disk0.jnl"
    assert table["mirror"] == f"{vols}/disk0.img"
    assert "allowed_primaries" not in table        # the first primary binds it


@pytest.mark.parametrize("journal, message", [
    ("relative.jnl", "failback_journal 'relative.jnl' must be an absolute path"),
    ("{vols}/missing.jnl", "failback_journal '{vols}/missing.jnl' does not exist"),
    ("{vols}/disk0.img", "is the mirror itself"),
    ("{vols}/disk0.jnl", "backstore user:mirror/disk0 still serves"),
])
def test_replicas_create_refuses_a_bad_failback_journal(site_a, journal, message):
    vols = site_a.vols
    journal, message = journal.format(vols=vols), message.format(vols=vols)
    before = files(site_a.state_dir)
    said = refused(site_a, f"/replication/replicas create name=r1 uuid={NEW} "
                           f"mirror={vols}/disk0.img size_bytes=67108864 "
                           f"failback_journal={journal}")
    assert message in said and said.endswith("; nothing changed")
    assert files(site_a.state_dir) == before


def test_site_json_without_the_new_keys_is_unchanged(site_a):
    site_a.run(f"/replication/replicas create name=r1 uuid={NEW} mirror=/dev/vg0/r1 "
               f"size_bytes=1048576")
    import json
    saved = json.loads((site_a.state_dir / "site.json").read_text())
    assert saved["replicas"]["r1"] == {"uuid": NEW, "mirror": "/dev/vg0/r1",
                                       "size_bytes": 1048576, "block_size": 512}


# --- resolve, and the replica's status ------------------------------------------------------


def plan_summary(**found) -> dict:
    """What failback_admission reports, in the shape of the real plan's summary."""
    base = PromotionBase(uuid.UUID(UUID), 48223, 2, 1699999000 * 10**9)
    plan = FailbackPlan(base, 48224, found.pop("head_seq", 48240), records=17,
                        extents=[(0, 128), (4096, 64)],
                        after_promotion=found.pop("after", []))
    return {**plan.summary(512), **found}


@pytest.fixture
def dr(make_shell, daemons):
    """Site A's receiver after the new primary's first contact, as the shell collects it."""
    def make(failback: dict, state: str = "consistent", link: str = "disconnected"):
        snap = daemons.load("dr_healthy")
        vol = snap["receiver"]["volumes"][UUID]
        vol.update(name="disk0", primary="site-b", state=state, failback=failback,
                   in_sync=False, resync_bytes_received=3 << 20,
                   inconsistent_since=1699999900.0 if state == "inconsistent" else None)
        vol["link"]["state"] = link
        sh = make_shell()
        sh.fake = FakeDaemons()
        sh.ctx.call = sh.fake
        replication = sh.root.get_node("/replication")
        if "replicas" not in {c.name for c in replication.children}:
            UIReplicas(replication)
        return sh
    return make


SPLIT = {"state": "split-brain", "report": "/var/lib/appliance/replicas/split-brain-disk0.json"}


def status_of(sh) -> str:
    snap = sh.daemons.snapshot
    (view,) = [v for v in volume_views(snap, now=snap["now"], tz=dt.UTC) if v.role == "dr"]
    return render_volume(view, now=snap["now"], tz=dt.UTC)


def test_a_split_brain_reads_with_the_report_and_the_two_choices(dr):
    sh = dr(plan_summary(**SPLIT, after=[(48230, 1699999100.0), (48231, 1699999101.0)]))
    assert status_of(sh) == (
        "disk0 role:dr primary:site-b\n"
        "  link:disconnected since 21:13:20 replica:consistent (failback: split brain) behind\n"
        "    failback: split brain: this site took 2 writes, the first at seq 48230 after the "
        "promotion (seq 48223), and site-b has written since: nothing is copied until you "
        "decide\n"
        "    report: both change sets: /var/lib/appliance/replicas/split-brain-disk0.json\n"
        "    do: read the report, then in /replication/replicas/disk0: 'resolve "
        "keep=new-primary' (site-b's image wins; this site's writes are kept with their data "
        "in a lost-write report first) or 'resolve keep=this-site' (this mirror takes nothing "
        "from site-b)")
    node = sh.root.get_node("/replication/replicas/disk0")
    assert node.summary()[1] is False                   # red: the admin must decide
    assert sh.run("/replication/replicas/disk0 status").startswith("disk0 role:dr")


@pytest.mark.parametrize("args, message", [
    ("keep=sideways", "keep is 'sideways' is not a choice: give keep=new-primary"),
    ("", "keep is missing: give keep=new-primary (the new primary's image wins) or "
         "keep=this-site (this site's writes win); nothing changed"),
    ("side=this-site", "Unexpected keyword parameter 'side'"),
])
def test_resolve_refuses_a_bad_keep_without_asking_the_receiver(dr, args, message):
    sh = dr(plan_summary(**SPLIT))
    said = refused(sh, f"/replication/replicas/disk0 resolve {args}".rstrip())
    assert message in said
    assert sh.fake.calls == []


def test_resolve_asks_the_receiver_and_says_what_follows(dr):
    sh = dr(plan_summary(**SPLIT))
    sh.fake.answers["resolve"] = {"volume": UUID, "name": "disk0", "keep": "new-primary",
                                  "report": SPLIT["report"]}
    out = sh.run("/replication/replicas/disk0 resolve keep=new-primary")
    assert sh.fake.calls == [("receiver.sock", "resolve", {"volume": UUID,
                                                           "keep": "new-primary"})]
    assert (f"Split brain of disk0 resolved: site-b's image wins (both change sets: "
            f"{SPLIT['report']}). Its transmitter retries by itself") in out
    sh.fake.answers["resolve"] = {"volume": UUID, "keep": "this-site"}
    out = sh.run("/replication/replicas/disk0 resolve keep=this-site")
    assert "this site's writes win. This mirror takes nothing from site-b" in out


def test_resolve_without_a_split_brain_is_the_receivers_refusal(dr):
    sh = dr(plan_summary(state="copying", lost_writes="/r/lost.txt"), state="inconsistent",
            link="connected")
    sh.fake.refuse("resolve", "volume disk0: no split brain was found at its primary's last "
                              "contact (state copying); nothing changed")
    assert refused(sh, "/replication/replicas/disk0 resolve keep=this-site") == (
        "resolve of disk0 refused by the receiver: volume disk0: no split brain was found at "
        "its primary's last contact (state copying); nothing changed")


def test_a_failback_copying_shows_what_it_copies(dr):
    sh = dr(plan_summary(state="copying", lost_writes="/r/lost-writes-disk0.txt"),
            state="inconsistent", link="connected")
    assert status_of(sh) == (
        "disk0 role:dr primary:site-b (192.0.2.1:51324)\n"
        "  link:connected replica:inconsistent since 22:11:40 (failback under way) behind\n"
        "    failback: copying from site-b: this site's old mirror holds the promoted image "
        "(seq 48223) plus 2 extents (96.0 KiB) written here since (17 journal records): only "
        "those and what site-b changed are copied; 3.0 MiB received so far\n"
        "    lost writes: this site's writes site-b never had, with their data: "
        "/r/lost-writes-disk0.txt\n"
        "    do: let the failback finish: the mirror is inconsistent until then, with no "
        "earlier image to roll back to ('status' on site-b shows the progress and ETA)")
    assert sh.root.get_node("/replication/replicas/disk0").summary()[1] is None


def test_a_failback_without_writes_of_this_site_names_no_lost_writes(dr):
    sh = dr({**plan_summary(state="done", lost_writes="/r/l.txt"), "records": 0,
             "dirty_chunks": 0, "extents": 0, "bytes": 0}, link="connected")
    text = status_of(sh)
    assert "plus 0 extents (0 B) written here since (0 journal records)" in text, text
    assert "lost writes" not in text, text


def test_a_finished_failback_and_a_full_copy(dr):
    sh = dr(plan_summary(state="copying", lost_writes="/r/l.txt"), link="connected")
    sh.daemons.snapshot["receiver"]["volumes"][UUID]["in_sync"] = True
    text = status_of(sh)
    assert "replica:consistent in-sync" in text
    assert ("    failback: copied: this site's old mirror holds the promoted image (seq 48223) "
            "plus 2 extents (96.0 KiB) written here since (17 journal records); those and "
            "what site-b changed were copied") in text
    sh = dr({"state": "full-copy", "reason": "the old journal /j no longer holds seq 48224"},
            state="inconsistent", link="connected")
    assert ("    failback: full copy: this site cannot prove what its old mirror holds (the old "
            "journal /j no longer holds seq 48224), so site-b copies the whole volume") in \
        status_of(sh).splitlines()


def test_the_new_primary_refused_for_a_split_brain_is_told_where_to_decide():
    from targetcli_ext.status_text import _primary_advice
    advice = _primary_advice({}, "refused:split-brain", "192.0.2.1:7700", "disk0", False)
    assert advice.endswith("'resolve keep=new-primary' (this site wins) or 'resolve "
                           "keep=this-site' in /replication/replicas/disk0")


def test_promote_prints_the_uuid_the_old_site_fails_back_with():
    mirror = f"/var/lib/appliance/replicas/{UUID}/mirror"
    text = promote_text("disk0", UUID, {"mirror": mirror, "former_primary": "site-a"}, 1 << 30)
    new = mirror_volume_uuid(mirror)
    assert f"     (that volume's uuid: {new})" in text.splitlines()
    assert (f"  3. once site-a's site is back, make it the DR over its old mirror: there, "
            f"delete /backstores/user:mirror/disk0, then /replication/volumes/disk0 failback "
            f"uuid={new}") in text.splitlines()


def test_help_of_failback(site_a):
    assert "OLD mirror" in site_a.run("/replication/volumes/disk0 help failback")


def test_help_and_completion_of_resolve(dr):
    sh = dr(plan_summary(**SPLIT))
    node = sh.root.get_node("/replication/replicas/disk0")
    assert node.ui_complete_resolve({}, "n", "keep") == ["new-primary "]
    assert "split brain" in sh.run("/replication/replicas/disk0 help resolve")


def test_info_shows_the_uuid_the_other_site_names(site_a, lio):
    vols = site_a.vols
    lines = site_a.run("/replication/volumes/disk0 info").splitlines()
    assert f"uuid:        {mirror_volume_uuid(f'{vols}/disk0.img')}" in lines
    assert f"journal:     {vols}/disk0.jnl" in lines
    assert "peer:        b" in lines
    delete_backstore(site_a, lio)
    lines = site_a.run("/replication/volumes/disk0 info").splitlines()
    assert "backstore:   disk0 (not in LIO now)" in lines
