"""Minimal failback (docs/failover.md, "Failback copies only what changed"): site A replicates
to B; B loses the link, A writes on, A stops; B is promoted and serves the promoted mirror
with a new journal, whose handler records the promotion's base instead of marking every chunk.
A comes back as B's DR over its old mirror, its receiver given A's old journal: it proves what
the mirror holds beyond the base, keeps A's own writes in a lost-write report, and B copies
exactly its own changes (as records) and A's extents (as regions), nothing else. A split
brain (A written after the promotion) is refused until the admin decides on A."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from repl_harness import (
    BLOCK,
    PY,
    REPO,
    appliancectl,
    converge,
    free_port,
    read,
    read_log,
    status,
    wait_for,
)
from test_repl_failback import (
    dr_tool,
    overlay,
    resync_done,
    start_failback_receiver,
    write_failback_receiver,
)

from appliance import storage
from appliance.volume.resync import ResyncSource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BLOCKS = 16384                    # 8 MiB: 128 bitmap chunks of 64 KiB
CHUNK = 64 * 1024
SHIPPED = 200                     # writes B has when it is promoted
UNSHIPPED = 15                    # A's writes B never got


def chunk_bytes(ops) -> int:
    """Bytes of the bitmap chunks these writes touch (what a resync of them copies)."""
    chunks = set()
    for op in ops:
        first = op.lba * BLOCK // CHUNK
        last = ((op.lba + op.nblocks) * BLOCK - 1) // CHUNK
        chunks.update(range(first, last + 1))
    return len(chunks) * CHUNK


def bitmap_state(bitmap: Path):
    with storage.open_file(bitmap) as io:
        source = ResyncSource(io)
        return source.header(), source.snapshot()


class Failover:
    """Site A with SHIPPED writes at B and UNSHIPPED more, stopped cleanly; B promoted and
    serving its mirror with a new journal (a writer that keeps the volume open)."""

    def __init__(self, pair, *, after_promotion: int = 0, slow: bool = False) -> None:
        self.pair = pair
        site_a = self.site_a = pair.site("site-a", blocks=BLOCKS, resync=True)
        self.vol = str(site_a.uuid)
        rx_b = pair.serve(site_a)
        w = pair.writer(site_a, SHIPPED).start()
        tx_a = pair.transmitter(site_a).start()
        wait_for(lambda: not w.running(), 60, "site A's first writes")
        assert w.popen.returncode == 0, w.output()[-3000:]
        converge(pair, site_a, timeout=30)
        rx_b.stop()                                     # B stops hearing from A
        tx_a.stop()
        self.write_a(SHIPPED + UNSHIPPED, seed=2)
        done = dr_tool(pair.rx_config, "promote", self.vol)
        assert done.returncode == 0, done.stderr
        self.promoted = json.loads(done.stdout)
        assert self.promoted["promoted_at_seq"] == SHIPPED, self.promoted
        if after_promotion:                             # A's hosts write on: a split brain
            self.write_a(SHIPPED + UNSHIPPED + after_promotion, seed=3)
        self.replica_mirror = pair.replica_dir(site_a.uuid) / "mirror"
        self.image_b = read(self.replica_mirror)
        self.image_a = read(site_a.mirror)
        # B serves the promoted mirror (the cfgstring names it; here through a link) with a
        # NEW journal and bitmap.
        self.port_a = free_port()
        d = pair.root / "site-b-primary"
        d.mkdir()
        (d / "mirror").symlink_to(self.replica_mirror)
        self.site_b = dataclasses.replace(
            pair.site("site-b", blocks=BLOCKS, vol=site_a.uuid, identity="dr-site",
                      cert="dr-site", port=self.port_a, resync=True, compression=not slow,
                      extra=f'generation = {self.promoted["generation"]}\n'
                            f'peer_identity = "site-a"\n'
                            + ("bandwidth_limit = 150000\n" if slow else "")),
            dir=d, log=pair.root / "writelog-site-b")
        _fix_site_b_config(self.site_b)
        self.w_b = pair.writer(self.site_b, 20, seed=4, linger=True).start()
        wait_for(lambda: len(read_log(self.site_b.log)) >= 20, 30, "the new primary's writes")

    def write_a(self, total: int, seed: int) -> None:
        w = self.pair.writer(self.site_a, total, seed=seed).start()
        wait_for(lambda: not w.running(), 60, f"site A's writes up to {total}")
        assert w.popen.returncode == 0, w.output()[-3000:]

    def start_receiver_a(self):
        """A's receiver: its old mirror is the replica of B's volume, its old journal proves
        what that mirror holds."""
        pair, site_a = self.pair, self.site_a
        self.rx_a_state = pair.root / "site-a-replicas"
        config, self.rx_a_control = write_failback_receiver(
            pair, site_a, self.port_a, failback_journal=site_a.journal)
        return start_failback_receiver(pair, config, self.rx_a_control)

    def a_volume(self) -> dict:
        return status(self.rx_a_control)["volumes"].get(self.vol) or {}


def wait_copied_back(pair, f: Failover, what: str) -> None:
    """The failback's resync done and A's old mirror equal to the new primary's."""
    try:
        wait_for(lambda: resync_done(f.site_b.control, f.rx_a_control, f.vol), 60, what)
        wait_for(lambda: read(f.site_a.mirror) == read(f.replica_mirror), 20,
                 "site A's mirror to equal the new primary's")
    except AssertionError:
        print(pair.logs())
        raise


def _fix_site_b_config(site_b) -> None:
    """pair.site wrote the journal, mirror and bitmap under site-b/: point them at the new
    primary's directory, and drop the duplicate peer_identity it had set for a DR."""
    text = site_b.tx_config.read_text()
    old_dir = site_b.tx_config.parent / "site-b"
    text = text.replace(str(old_dir / "journal"), str(site_b.dir / "journal"))
    text = text.replace(str(old_dir / "mirror"), str(site_b.dir / "mirror"))
    text = text.replace(str(old_dir / "bitmap"), str(site_b.dir / "bitmap"))
    text = text.replace('peer_identity = "dr-site"\n', "").replace("generation = 1\n", "")
    site_b.tx_config.write_text(text)


def test_failback_copies_only_the_new_primarys_changes_and_the_old_sites_own(pair):
    f = Failover(pair)
    ops_a = read_log(f.site_a.log)
    assert len(ops_a) == SHIPPED + UNSHIPPED
    # B's handler adopted the promoted image: its bitmap marks nothing, and names the base.
    header, snap = bitmap_state(f.site_b.dir / "bitmap")
    assert snap.dirty_chunks == 0, snap
    assert header.base is not None and (header.base.seq, str(header.base.lineage)) == \
        (SHIPPED, f.vol), header

    f.start_receiver_a()
    tx_b = pair.transmitter(f.site_b).start()
    wait_copied_back(pair, f, "the failback to complete on site A")
    f.w_b.stop()
    tx_b_status = status(f.site_b.control)
    r = tx_b_status["resync"]
    tx_b.stop()

    final = read(f.replica_mirror)
    assert final == overlay(f.image_b, read_log(f.site_b.log)), "the new primary lost writes"
    assert read(f.site_a.mirror) == final
    # What was copied: B's 20 writes as records, and only the chunks of A's own writes (a
    # restarted writer submits its last logged op again: seq 201 is op 200 once more).
    beyond = ops_a[SHIPPED - 1:]
    mine = chunk_bytes(beyond)
    print(f"failback: {r}; A's own writes touch {mine} bytes of chunks")
    assert r["failback_marked_bytes"] == mine and r["total_bytes"] == mine, (r, mine)
    assert mine < BLOCKS * BLOCK // 4, "the test's writes should touch few chunks"
    assert tx_b_status["acked_seq"] == 20, tx_b_status
    # A's writes that B never had were kept, with their data, before they were overwritten.
    reports = sorted(f.rx_a_state.glob(f"{f.vol}/lost-writes-*-promoted-at-{SHIPPED}.json"))
    assert len(reports) == 1, list(f.rx_a_state.rglob("*"))
    body = json.loads(reports[0].read_text())
    assert [w["seq"] for w in body["writes"]] == list(range(SHIPPED + 1,
                                                           SHIPPED + len(beyond) + 1))
    assert [(w["lba"], w["blocks"]) for w in body["writes"]] == \
        [(op.lba, op.nblocks) for op in beyond]
    data = Path(body["data_file"]).read_bytes()
    for w, op in zip(body["writes"], beyond, strict=True):
        if op.kind != "U":
            assert data[w["data_offset"]:w["data_offset"] + w["data_bytes"]] == op.data()
    failback = f.a_volume()["failback"]
    assert failback["state"] == "done" and failback["records"] == len(beyond), failback
    assert failback["new_primary"] == "dr-site", failback
    assert f.a_volume()["state"] == "consistent"


def test_a_split_brain_is_reported_and_copies_nothing_until_the_admin_decides(pair):
    f = Failover(pair, after_promotion=10)
    f.start_receiver_a()
    tx_b = pair.transmitter(f.site_b).start()
    st = wait_for(lambda: (s := status(f.site_b.control))["link"]["state"] ==
                  "refused:split-brain" and s, 30, "the new primary to be refused: split brain")
    assert "split brain" in st["link"]["last_error"], st["link"]
    found = wait_for(lambda: (f.a_volume().get("failback") or {}).get("state") ==
                     "split-brain" and f.a_volume()["failback"], 10, "A's split-brain status")
    # (10 writes and the restarted writer's repeat of its last one)
    assert found["written_after_promotion"] == 11, found
    report = json.loads(Path(found["report"]).read_text())
    assert len(report["this_site"]["written_after_promotion"]) == 11
    # The new primary's side as its journal has published it (rewritten at every contact).
    wait_for(lambda: json.loads(Path(found["report"]).read_text())["new_primary_changed"]
             ["head_seq"] == 20, 20, "the report to show the new primary's 20 writes")
    assert read(f.site_a.mirror) == f.image_a, "a split brain must copy nothing"
    refused = subprocess.run([PY, "-m", "appliance.control.cli", "--socket",
                              str(f.rx_a_control), "call", "resolve",
                              json.dumps({"volume": f.vol, "keep": "sideways"})],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "keep must be one of" in refused.stderr, refused

    appliancectl(f.rx_a_control, "call", "resolve",
                 json.dumps({"volume": f.vol, "keep": "new-primary"}))
    wait_copied_back(pair, f, "the failback to complete once the admin chose the new primary")
    f.w_b.stop()
    tx_b.stop()
    ops_a = read_log(f.site_a.log)
    body = json.loads(next(f.rx_a_state.glob(f"{f.vol}/lost-writes-*.json")).read_text())
    assert len(body["writes"]) == len(ops_a) - SHIPPED + 2     # two restarts: two repeats


@pytest.mark.parametrize("victim", ["receiver", "transmitter"])
def test_a_failback_killed_mid_way_resumes_and_still_copies_only_what_changed(pair, victim):
    f = Failover(pair, slow=True)       # A's chunks take about 6 s
    ops_a = read_log(f.site_a.log)
    rx_a = f.start_receiver_a()
    tx_b = pair.transmitter(f.site_b).start()
    # Killed in the middle of the copy of A's extents.
    wait_for(lambda: status(f.site_b.control)["resync"]["state"] == "resyncing", 30,
             "the failback's copy under way")
    assert f.a_volume()["state"] == "inconsistent"
    (rx_a if victim == "receiver" else tx_b).kill9()
    (rx_a if victim == "receiver" else tx_b).start()
    if victim == "receiver":
        wait_for(lambda: rx_a.running() and status(f.rx_a_control), 20, "A's receiver again")
    wait_copied_back(pair, f, "the failback to complete after the kill")
    r = status(f.site_b.control)["resync"]
    f.w_b.stop()
    assert read(f.replica_mirror) == overlay(f.image_b, read_log(f.site_b.log))
    # Whatever the kill interrupted, only A's own extents were marked (again, if asked again).
    assert r["failback_marked_bytes"] in (0, chunk_bytes(ops_a[SHIPPED - 1:])), r
    header, snap = bitmap_state(f.site_b.dir / "bitmap")
    assert snap.dirty_chunks == 0, snap
