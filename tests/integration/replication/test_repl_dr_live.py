"""The DR side run with its receiver running (the shell's way, issue 15): replicas provisioned
for volumes a paired primary offers (byte for byte; refused with ``no-space`` and nothing
created when they do not fit), ``reload`` adding and removing a volume while another volume's
session stays up, ``promote`` / ``rollback`` / ``invalidate`` / ``demote`` over the control
socket (refusals leave the link alone), and ``forget`` of provisioned replicas. Real receiver,
transmitter and writer processes on loopback, TLS with the test CA."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from repl_harness import (
    BLOCK,
    PY,
    REPO,
    converge,
    match_prefix,
    read,
    read_log,
    status,
    wait_for,
)

from appliance.control.client import ControlError, call

pytestmark = pytest.mark.integration


def write_rx(pair, sites, *, provision: bool = False, journal: int = 4 << 20,
             extra_volumes: list[uuid.UUID] = (), blocks: int = 2048) -> None:
    """The receiver's config: ``[[volume]]`` tables for ``sites`` (and never-paired
    ``extra_volumes``), provisioning settings first (top-level keys before any table)."""
    pair.volumes = [(s.uuid, s.blocks) for s in sites] + [(v, blocks) for v in extra_volumes]
    pair.write_rx_config()
    top = f"provision = {'true' if provision else 'false'}\nprovision_journal_size = {journal}\n"
    pair.rx_config.write_text(top + pair.rx_config.read_text())


def start_rx(pair, sites, **kw):
    write_rx(pair, sites, **kw)
    rx = pair.receiver().start()
    pair.wait_rx_up(rx)
    return rx


def ctl(pair, cmd: str, **args):
    return call(pair.rx_control, cmd, args, timeout=60)


def volume(pair, site_or_uuid) -> dict:
    vid = getattr(site_or_uuid, "uuid", site_or_uuid)
    return pair.rx_status()["volumes"][str(vid)]


def write_all(pair, site, ops: int, **kw):
    w = pair.writer(site, ops, **kw).start()
    if not kw.get("linger"):
        wait_for(lambda: w.popen.poll() is not None, 60, f"the writer of {site.name}")
        assert w.popen.returncode == 0, w.output()[-3000:]
    return w


def link_state(site, state: str, timeout: float = 20) -> dict:
    return wait_for(lambda: (s := status(site.control))["link"]["state"] == state and s,
                    timeout, f"{site.name}'s transmitter to say {state}")


def dr_tool(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "appliance.replication.dr.dr_tool", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_an_offered_volume_is_provisioned_converges_and_is_reopened_at_start(pair):
    site = pair.site("site-a", blocks=4096, extra='name = "vol1"\n')
    rx = start_rx(pair, [], provision=True)
    write_all(pair, site, 300)
    pair.transmitter(site).start()
    converge(pair, site)
    vol = volume(pair, site)
    assert (vol["name"], vol["provisioned"], vol["primary"]) == ("vol1", True, "site-a"), vol
    spec = json.loads((pair.replica_dir(site.uuid) / "provisioned.json").read_text())
    assert (spec["size_bytes"], spec["block_size"], spec["primary"], spec["name"],
            spec["journal_size"]) == (4096 * BLOCK, BLOCK, "site-a", "vol1", 4 << 20), spec
    assert f"volume {site.uuid} ('vol1'): provisioned a replica" in rx.output()
    assert pair.rx_status()["refused_offers"] == []

    # At start the receiver reopens it (no [[volume]] names it) and replication resumes.
    rx.stop()
    rx.start()
    pair.wait_rx_up(rx)
    assert volume(pair, site)["provisioned"]
    link_state(site, "replicating")
    write_all(pair, site, 400, seed=2)
    converge(pair, site)

    # appliance-dr finds it too (offline), by name.
    rx.stop()
    state = json.loads(dr_tool(pair.rx_config, "state").stdout)
    assert [(s["uuid"], s["name"], s["provisioned"], s["state"]) for s in state] == \
        [(str(site.uuid), "vol1", True, "consistent")], state
    refused = dr_tool(pair.rx_config, "rollback", "vol1")
    assert refused.returncode == 1 and "is consistent; nothing to roll back" in refused.stderr


def test_no_space_is_refused_with_the_numbers_and_nothing_is_created(pair):
    """A journal larger than the free space (the mirror alone would need a big disk): the
    offer is refused on both sides with the figures; after a reload with a journal that fits
    the same offer is provisioned and converges."""
    pair.rx_state.mkdir()
    free = os.statvfs(pair.rx_state).f_bavail * os.statvfs(pair.rx_state).f_frsize
    rx = start_rx(pair, [], provision=True, journal=2 * free + (1 << 30))
    site = pair.site("site-a", blocks=2048, extra='name = "big"\n')
    write_all(pair, site, 100)
    tx = pair.transmitter(site).start()
    st = link_state(site, "refused:no-space")
    error = st["link"]["last_error"]
    assert f"free in {pair.rx_state}: free space or provision a replica on a block device" \
        in error and "needs " in error and "(mirror 1 MiB + journal " in error, error
    (offer,) = pair.rx_status()["refused_offers"]
    assert (offer["volume"], offer["name"], offer["primary"], offer["code"]) == \
        (str(site.uuid), "big", "site-a", "no-space"), offer
    assert offer["count"] >= 1 and offer["reason"] in error
    assert pair.rx_status()["volumes"] == {}
    assert list(pair.rx_state.iterdir()) == [], "a refused offer created files"
    assert f"volume {site.uuid}: no-space: needs " in rx.output()
    print("refused:", error)

    write_rx(pair, [], provision=True, journal=4 << 20)
    assert ctl(pair, "reload") == {"added": [], "removed": [], "changed": [], "unchanged": 0}
    converge(pair, site)
    assert pair.rx_status()["refused_offers"] == []
    assert tx.running()


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_on_a_small_file_system_what_does_not_fit_is_refused_and_what_fits_converges(
        pair, small_fs):
    """state_dir on an 8 MiB file system, 2 MiB journals: a 16 MiB volume is refused with the
    free space the file system really has, a 2 MiB one beside it is provisioned."""
    pair.rx_state = small_fs / "replicas"
    start_rx(pair, [], provision=True, journal=2 << 20)
    big, small = pair.site("site-a", blocks=32768), pair.site("site-c", blocks=4096)
    write_all(pair, big, 50)
    write_all(pair, small, 200)
    pair.transmitter(big).start()
    error = link_state(big, "refused:no-space")["link"]["last_error"]
    assert "needs 19 MiB (mirror 16 MiB + journal 2 MiB + 1 MiB for its state), 8 MiB " in error
    assert f"free in {pair.rx_state}: free space or provision a replica on a block " \
           f"device" in error, error
    pair.transmitter(small).start()
    converge(pair, small)
    assert sorted(p.name for p in pair.rx_state.iterdir()) == [str(small.uuid)]
    assert [o["code"] for o in pair.rx_status()["refused_offers"]] == ["no-space"]
    print("refused:", error)


def test_reload_adds_and_removes_a_volume_while_the_other_session_stays_up(pair):
    a, c = pair.site("site-a", blocks=2048), pair.site("site-c", blocks=2048)
    rx = start_rx(pair, [a])
    write_all(pair, a, 200)
    write_all(pair, c, 200)
    pair.transmitter(a).start()
    pair.transmitter(c).start()
    converge(pair, a)
    link_state(c, "refused:unknown-volume")
    offers = pair.rx_status()["refused_offers"]
    assert [(o["volume"], o["code"]) for o in offers] == [(str(c.uuid), "unknown-volume")]
    before = volume(pair, a)["link"]
    assert before["connects"] == 1 and before["state"] == "connected", before

    write_rx(pair, [a, c])
    assert ctl(pair, "reload") == {"added": [str(c.uuid)], "removed": [], "changed": [],
                                   "unchanged": 1}
    converge(pair, c)
    assert pair.rx_status()["refused_offers"] == []

    # A change that needs a restart is refused naming it; nothing changes.
    good = pair.rx_config.read_text()
    pair.rx_config.write_text(good.replace('identity = "dr-site"', 'identity = "elsewhere"'))
    with pytest.raises(ControlError, match="identity changed .*restart of the receiver.*"
                                           "nothing changed"):
        ctl(pair, "reload")
    pair.rx_config.write_text(good.replace("[[volume]]", "[[volume]]\nsize = 1", 1))
    with pytest.raises(ControlError, match=r"unknown setting \[\[volume\]\] #1 size: did you "
                                           r"mean size_bytes\?.*nothing changed"):
        ctl(pair, "reload")
    assert set(pair.rx_status()["volumes"]) == {str(a.uuid), str(c.uuid)}

    write_rx(pair, [a])
    assert ctl(pair, "reload") == {"added": [], "removed": [str(c.uuid)], "changed": [],
                                   "unchanged": 1}
    link_state(c, "refused:unknown-volume")
    assert set(pair.rx_status()["volumes"]) == {str(a.uuid)}
    after = volume(pair, a)["link"]
    assert (after["connects"], after["state"]) == (1, "connected"), after
    write_all(pair, a, 300, seed=3)
    converge(pair, a)
    assert volume(pair, a)["link"]["connects"] == 1
    assert rx.running()


def test_promote_rollback_invalidate_demote_with_the_receiver_running(pair):
    # 1 MB/s: a full copy of the 2 MiB volume takes about two seconds, long enough to be
    # caught inconsistent.
    site = pair.site("site-a", blocks=4096, extra='name = "vol1"\nbandwidth_limit = 1000000\n')
    spare = uuid.uuid4()
    start_rx(pair, [site], extra_volumes=[spare])
    w = write_all(pair, site, 200, linger=True)
    pair.transmitter(site).start()
    wait_for(lambda: len(read_log(site.log)) >= 200, 60, "the writer's 200 ops")
    converge(pair, site)
    vid = str(site.uuid)
    connects = volume(pair, site)["link"]["connects"]

    # Refusals: the reason, nothing changed, the link left alone.
    for cmd, target, words in (
            ("rollback", vid, "is consistent; nothing to roll back"),
            ("demote", "vol1", "is not promoted; nothing to demote"),
            ("promote", str(spare), "was never paired with a primary"),
            ("invalidate", str(spare), "was never paired with a primary"),
            ("promote", "nope", "no volume 'nope' on this receiver")):
        with pytest.raises(ControlError, match=f"{words}.*nothing changed"):
            ctl(pair, cmd, volume=target)
    with pytest.raises(ControlError, match="unknown argument"):
        ctl(pair, "promote", volume=vid, force=True)
    assert volume(pair, site)["link"]["connects"] == connects
    assert volume(pair, site)["link"]["state"] == "connected"

    # invalidate: the session is closed, the next contact is a full copy (inconsistent while
    # it runs, the invalidated image kept recoverable); promote is refused meanwhile,
    # rollback restores that image.
    done = ctl(pair, "invalidate", volume="vol1")
    image_seq = done["invalidated_at_seq"]
    assert done["volume"] == vid and image_seq >= 200, done
    v = wait_for(lambda: (v := volume(pair, site))["state"] == "inconsistent"
                 and v["link"]["connects"] > connects and v, 20, "the full copy to begin")
    assert v["last_consistent_seq"] == image_seq, v
    with pytest.raises(ControlError, match="inconsistent.*roll it back first.*nothing changed"):
        ctl(pair, "promote", volume="vol1")
    back = ctl(pair, "rollback", volume=vid)
    assert back["rolled_back_to_seq"] == image_seq, back
    replica = pair.replica_dir(site.uuid)
    assert (replica / f"journal.invalidated-{image_seq}").exists()
    assert match_prefix(read(replica / "mirror"), read_log(site.log)).ops_in_prefix == 200
    # ... and the primary's next contact copies the volume again, to the same bytes.
    converge(pair, site)
    assert volume(pair, site)["state"] == "consistent"

    # promote (by name): the old primary is fenced off, its link refused with 'promoted'.
    p = ctl(pair, "promote", volume="vol1")
    assert (p["generation"], p["former_primary"], p["volume"]) == (2, "site-a", vid), p
    assert "serve it with a NEW journal" in p["next_steps"]
    st = link_state(site, "refused:promoted")
    assert "fenced off" in st["link"]["last_error"]
    assert volume(pair, site)["state"] == "promoted"
    image = read(replica / "mirror")

    # demote: a DR replica again; the fenced primary (generation 1) stays refused.
    d = ctl(pair, "demote", volume=vid)
    assert d["demoted_keeping_generation"] == 2, d
    link_state(site, "refused:stale-generation")
    assert volume(pair, site)["state"] == "consistent"
    assert read(replica / "mirror") == image
    w.stop()


def test_forget_drops_provisioned_replicas_and_says_what_remains(pair):
    a, c = pair.site("site-a", blocks=2048, extra='name = "va"\n'), pair.site("site-c",
                                                                              blocks=2048)
    configured = uuid.uuid4()
    rx = start_rx(pair, [], provision=True, extra_volumes=[configured])
    for s in (a, c):
        write_all(pair, s, 100)
    txa, txc = pair.transmitter(a).start(), pair.transmitter(c).start()
    converge(pair, a)
    converge(pair, c)
    with pytest.raises(ControlError, match="configured by a \\[\\[volume\\]\\] table.*remove it "
                                           "from the configuration.*nothing changed"):
        ctl(pair, "forget", volume=str(configured))
    with pytest.raises(ControlError, match="remove_data must be true or false"):
        ctl(pair, "forget", volume="va", remove_data="yes")
    connects_c = volume(pair, c)["link"]["connects"]

    txa.stop()
    da = pair.replica_dir(a.uuid)
    kept = ctl(pair, "forget", volume="va", remove_data=False)
    assert kept["removed"] == [str(da / "provisioned.json")], kept
    assert {str(da / f) for f in ("mirror", "journal", "state.json")} <= set(kept["kept"]), kept
    assert str(a.uuid) not in pair.rx_status()["volumes"]
    # Its primary offers it again: the files left are never adopted; the offer says so.
    txa.start()
    st = link_state(a, "refused:unknown-volume")
    assert f"{da} holds files" in st["link"]["last_error"], st["link"]

    txc.stop()
    dc = pair.replica_dir(c.uuid)
    gone = ctl(pair, "forget", volume=str(c.uuid), remove_data=True)
    assert gone["kept"] == [] and str(dc) in gone["removed"], gone
    assert str(dc / "mirror") in gone["removed"] and not dc.exists()
    assert connects_c == 1

    # Neither comes back at the next start.
    rx.stop()
    rx.start()
    pair.wait_rx_up(rx)
    assert set(pair.rx_status()["volumes"]) == {str(configured)}
