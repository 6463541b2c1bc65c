"""The steering states in the status, from recorded daemon states: shipping paused by the
admin, a volume that needs a resync after 'discard', journaling paused, a DR refusing for
lack of space, a promoted DR replica, a verify that found differences (exact text)."""

from __future__ import annotations

import datetime as dt

import pytest
from recorded_states import recorded

from targetcli_ext.status_text import render_status, verify_detail, volume_views

PEERS = {"192.0.2.2:7700": "dr"}
UUID = "6f1c2a52-8d1e-5b7a-9c3e-2f4b1d0e7a91"
NO_SPACE = ("needs 10.3 GiB (mirror 10 GiB + journal 256 MiB + 1 MiB for its state), 4 GiB "
            "free in /var/lib/appliance/replicas: free space or provision a replica on a block "
            "device")

EXPECTED = {
    "paused_admin": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:paused (by admin) journal:7% behind
    lag: 210 records, 840.0 KiB, recovery point 12m00s ago
    why: shipping is paused by the admin (resume ships it): 210 journal records are not acknowledged by the peer yet
    do: shipping is paused by an admin and the journal fills meanwhile: run 'resume' in /replication/volumes/vol1 to ship again
""",
    "needs_resync": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:paused (by admin), logging-to-bitmap since 22:12:20 journal:0% behind
    lag: 0 records, 8.0 MiB, recovery point 12m00s ago
    why: shipping is paused by the admin (resume ships it): 8388608 bytes of dirty regions (logging to the bitmap) are not at the peer yet; 210 journal records were discarded by the admin, so a resync must ship their regions
    needs resync: 8.0 MiB dirty (210 queued journal records discarded at 22:12:20): run 'resume' or 'resync'
    do: run 'resume' in /replication/volumes/vol1: shipping starts again with a resync of the dirty regions
""",
    "journal_paused": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:logging-to-bitmap since 22:03:20 journal:paused behind
    lag: 0 records, 3.0 MiB, recovery point 10m00s ago
    why: 3145728 bytes of dirty regions (logging to the bitmap) are not at the peer yet
    journal: paused by an admin: writes go to the mirror and the dirty bitmap, not the journal (3.0 MiB dirty)
    do: run 'resume what=journal' in /replication/volumes/vol1 to journal again; the dirty regions are then resynced
""",
    "refused_no_space": f"""\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:refused (no-space) since 22:11:20 replication:stopped journal:0% behind
    reason: peer refused: no-space: {NO_SPACE}
    lag: 37 records, 148.0 KiB, recovery point 1m59s ago
    why: 37 journal records are not acknowledged by the peer yet
    do: free space in the DR's replica directory, or make the replica on a block device there ('/replication/replicas create' on the DR)
""",
    "dr_refused_offer": f"""\
vol1 role:dr primary:site-a
  link:refused (no-space) since 22:13:00 replica:none (not provisioned) behind
    reason: {NO_SPACE}
    offers: 3 refused, the last from 192.0.2.1:51330
    do: free space in the receiver's replica directory, or make the replica on a block device: /replication/replicas create name=vol1 uuid={UUID} mirror=/dev/<device> size_bytes=10737418240
""",
    "dr_promoted": """\
vol1 role:dr primary:site-a
  link:disconnected since 22:08:10 replica:promoted since 22:08:20
    failover: holds the primary's image after seq 48223; generation 2; 'site-a' is fenced off (refused with 'promoted')
    do: serve its mirror through a user:mirror backstore with a NEW journal (the line 'promote' printed; docs/failover.md); 'demote' makes it a DR replica again once the primary runs on the other site
""",
    "verify_differs": """\
vol1 role:primary peer:dr (192.0.2.2:7700)
  link:connected replication:replicating journal:2% in-sync
    verify: 2 regions of 1.0 MiB differ from the DR (finished 22:11:20): run 'verify repair=true' to copy them there
""",
}


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_each_steering_state_reads_as_expected(state):
    snap = recorded(state)
    assert render_status(snap, now=snap["now"], tz=dt.UTC, peer_names=PEERS) == \
        EXPECTED[state]


@pytest.mark.parametrize("state, health", [
    ("paused_admin", False), ("needs_resync", False), ("journal_paused", False),
    ("refused_no_space", False), ("dr_promoted", None), ("verify_differs", False),
    ("dr_refused_offer", False),
    ("healthy", True)])
def test_ls_colour_of_each_state(state, health):
    """Green only when nothing needs the admin: a pause, a paused journal, a refusal and
    differing regions are red; a promoted replica is plain (served here, by design)."""
    snap = recorded(state)
    [view] = volume_views(snap, now=snap["now"], tz=dt.UTC)
    assert view.health is health


def test_summaries_for_ls():
    snap = recorded("paused_admin")
    assert volume_views(snap, now=snap["now"])[0].summary() == \
        "primary, connected, paused (by admin), behind"
    snap = recorded("dr_promoted")
    [view] = volume_views(snap, now=snap["now"], tz=dt.UTC)
    assert (view.name, view.uuid) == ("vol1", UUID)
    assert view.summary() == "dr, disconnected, promoted since 22:08:20"


def test_an_unreplicated_volume_with_its_journal_paused_says_so():
    snap = recorded("journal_paused")
    snap["transmitters"] = {}
    assert render_status(snap, now=snap["now"], tz=dt.UTC).splitlines() == [
        "vol1 role:unreplicated",
        "  replication:none (no transmitter answers for this volume) journal:paused",
        "    alert: journaling journal paused: logging writes to the dirty-region bitmap (3 "
        "chunks of 1048576 bytes to resync); resume-journal to journal again (the resync then "
        "ships them)",
        "    journal: paused by an admin: writes go to the mirror and the dirty bitmap, not "
        "the journal (3.0 MiB dirty)",
        "    do: run 'resume what=journal' in /replication/volumes/vol1 to journal again; the "
        "dirty regions are then resynced"]


def test_after_resume_the_resync_ships_the_discarded_regions():
    snap = recorded("needs_resync")
    tx = snap["transmitters"]["vol1"]
    tx["link"]["state"], tx["paused"], tx["resync_blocked"] = "replicating", False, None
    tx["resync"].update(state="resyncing", total_bytes=8 << 20, done_bytes=2 << 20,
                        bytes_per_s=1 << 20, eta_s=6)
    lines = render_status(snap, now=snap["now"], tz=dt.UTC).splitlines()
    assert lines[1] == ("  link:connected replication:resync 25.0% (1.0 MiB/s, ETA 6s) "
                        "journal:0% behind")
    assert ("    needs resync: 8.0 MiB dirty (210 queued journal records discarded at "
            "22:12:20): the resync ships them") in lines
    assert not [line for line in lines if line.startswith("    do:")]


def test_paused_by_the_admin_while_the_link_is_down_says_paused_and_resume():
    snap = recorded("paused_admin")
    tx = snap["transmitters"]["vol1"]
    tx["link"].update(state="reconnecting", last_error="OSError: [Errno 113] No route to host")
    lines = render_status(snap, now=snap["now"], tz=dt.UTC).splitlines()
    assert lines[1].startswith("  link:connecting since 22:01:20 replication:paused (by admin)")
    assert lines[-1].startswith("    do: shipping is paused by an admin")


def test_paused_with_nothing_to_ship_is_in_sync_and_says_resume():
    snap = recorded("healthy")
    tx = snap["transmitters"]["vol1"]
    tx["link"]["state"], tx["paused"] = "paused:admin", True
    [view] = volume_views(snap, now=snap["now"])
    assert render_status(snap, now=snap["now"]).splitlines() == [
        "vol1 role:primary peer:192.0.2.2:7700",
        "  link:connected replication:paused (by admin) journal:2% in-sync",
        "    do: shipping is paused by an admin and the journal fills meanwhile: run 'resume' "
        "in /replication/volumes/vol1 to ship again"]
    assert view.health is None


def test_verify_running_failed_and_clean():
    now = 1700000000.0
    running = {"state": "running", "regions_total": 200, "regions_checked": 50}
    assert verify_detail(running, now=now) == \
        ("verify", "running, 25% (50/200 regions compared)")
    failed = {"state": "failed", "finished": now - 5, "error": "link lost"}
    assert verify_detail(failed, now=now, tz=dt.UTC) == \
        ("verify", "failed (finished 22:13:15): link lost")
    clean = {"state": "done", "finished": now - 60, "regions_checked": 10240,
             "differing": []}
    assert verify_detail(clean, now=now, tz=dt.UTC) == \
        ("verify", "no differences in 10240 regions (finished 22:12:20)")
    assert verify_detail(clean, now=now + 7200) is None       # an old clean verify: quiet
    repaired = {"state": "done", "finished": now - 60, "differing": [0], "repaired": True,
                "region_bytes": 1 << 20}
    assert verify_detail(repaired, now=now, tz=dt.UTC) == \
        ("verify", "1 regions of 1.0 MiB differed and were repaired (finished 22:12:20)")
    assert verify_detail({"state": "never-run"}, now=now) is None


def test_two_replicas_of_the_same_name_are_named_by_uuid():
    snap = recorded("dr_healthy")
    [(uuid, r)] = snap["receiver"]["volumes"].items()
    other = "0b7e5a3c-1111-5222-8333-444455556666"
    snap["receiver"]["volumes"] = {uuid: {**r, "name": "vol1"},
                                   other: {**r, "name": "vol1", "volume_uuid": other}}
    names = sorted(v.name for v in volume_views(snap, now=snap["now"]))
    assert names == sorted([uuid, other])
