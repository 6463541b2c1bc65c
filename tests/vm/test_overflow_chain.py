"""The whole chain through a journal overflow (issue 13), in three VMs: an application host
(open-iscsi, ext4, files written with fsync), the primary appliance (a user:mirror LUN with a
small journal) and the DR appliance (receiver), with replication configured exactly as
``make demo`` configures it (vmlab/replication.py: the transmitter's TOML names no mirror and
no bitmap).

Under steady host writes the replication link is cut (qemu's ``set_link`` on the DR's
private NIC: the host's iSCSI link to the primary is untouched) until more than the journal's
size has been written and the volume logs to its dirty-region bitmap; then the link comes
back, the host writes a little more, stops, unmounts, and the DR's mirror must become equal,
byte for byte, to what the host reads from the LUN. Both daemons' ``appliancectl status``
are polled throughout; no poll may claim the DR in sync while it is known to be behind, and
both must say in sync with zero lag once it has converged.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass

import pytest

from vmlab import appliance as ap
from vmlab import replication
from vmlab.machine import Machine, MachineSpec
from vmlab.overflow import (
    WRITER,
    Poll,
    StatusPoller,
    bitmap_header,
    chunk_hashes,
    is_logging,
    writer_progress,
)

PRIMARY = "192.168.77.11"
DR = "192.168.77.12"
HOST = "192.168.77.50"
LUN = ap.LunSpec("ovf0", size="256M", journal_size="32M")
LUN_BYTES = replication.size_bytes(LUN.size)
JOURNAL_BYTES = replication.size_bytes(LUN.journal_size)
VOLUME = replication.ReplicatedVolume(LUN, primary="primary", dr="dr", dr_address=DR)
TX_SOCK = f"/run/appliance/transmitter-{LUN.name}.sock"
RX_SOCK = "/run/appliance/receiver.sock"
HANDLER_SOCK = "/run/appliance-handler/handler.sock"
BITMAP = f"{ap.STATE_DIR}/journals/{LUN.name}.jnl.bitmap"
DR_MIRROR = f"{ap.STATE_DIR}/replicas/{VOLUME.uuid}/mirror"
PRIMARY_MIRROR = f"{ap.STATE_DIR}/volumes/{LUN.name}.img"
MNT = "/mnt/data"
WRITER_LOG = "/root/writer.log"
STOP_WRITER = "/root/stop-writer"

WRITE_CHUNK = 1 << 20            # one file of 1 MiB per write, fsync'd
WRITER_FILES = 48                # ring of file names: 48 MiB of the 256 MiB file system
WRITER_RATE = 6 << 20            # bytes/s at most: steady, not flat out (2 cores, 3 VMs)
CUT_BYTES = JOURNAL_BYTES * 5 // 4   # written during the cut, at least
POST_RESTORE_S = 10.0            # host writes on after the link returns
LONGEST_WRITE_LIMIT_S = 10.0     # a host write may take this long at most, cut or not
CUT_TIMEOUT_S = 300.0
CONVERGE_TIMEOUT_S = 180.0       # from the host's unmount to the DR equal to what it reads
SETTLE_TIMEOUT_S = 60.0          # from convergence to both statuses saying in sync


@dataclass
class Chain:
    primary: Machine
    dr: Machine
    host: Machine
    device: str


def say(msg: str) -> None:
    print(f"[overflow] {msg}", flush=True)


def wait_for(what: str, predicate, timeout: float, interval: float = 1.0, detail=lambda: ""):
    """Poll predicate() until it returns something truthy; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s. {detail()}")
        time.sleep(interval)


def tx_status(primary: Machine) -> dict | None:
    result = primary.run(["appliancectl", "--socket", TX_SOCK, "status", "--json"], timeout=30,
                         check=False)
    return json.loads(result.text) if result.rc == 0 else None


def rx_status(dr: Machine) -> dict | None:
    result = dr.run(["appliancectl", "--socket", RX_SOCK, "status", "--json"], timeout=30,
                    check=False)
    return json.loads(result.text) if result.rc == 0 else None


def rx_volume(status: dict | None) -> dict | None:
    if not status:
        return None
    return status.get("volumes", {}).get(str(VOLUME.uuid))


@pytest.fixture(scope="module")
def chain(lab) -> Chain:
    t0 = time.monotonic()
    primary, dr, host = lab.boot(
        MachineSpec("primary", private_address=f"{PRIMARY}/24"),
        MachineSpec("dr", private_address=f"{DR}/24"),
        ap.host_spec("host", f"{HOST}/24", memory_mib=768),
    )
    say(f"three VMs booted in {time.monotonic() - t0:.0f} s")
    t1 = time.monotonic()
    iqn = ap.create_lun(primary, LUN)
    replication.configure(primary, dr, VOLUME)
    device = ap.host_login(host, PRIMARY, iqn)
    host.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device],
             timeout=300)
    host.run(f"mkdir -p {MNT} && mount {device} {MNT}")
    wait_for("the transmitter replicating to the DR",
             lambda: (tx_status(primary) or {}).get("link", {}).get("state") == "replicating",
             timeout=180, detail=lambda: f"last status: {replication.status(primary, TX_SOCK)}")
    say(f"LUN, replication, iSCSI login and ext4 ready in {time.monotonic() - t1:.0f} s")
    return Chain(primary, dr, host, device)


def read_lun(host: Machine, device: str, into: dict) -> None:
    """Per-MiB hashes of the whole LUN as the host reads it (run on a thread)."""
    try:
        into["hashes"] = chunk_hashes(host, device, LUN_BYTES, timeout=600)
    except Exception as err:  # reported by the test
        into["error"] = f"{type(err).__name__}: {err}"
    finally:
        into["end"] = time.monotonic()


def in_sync_claim(side: str, poll: Poll) -> str | None:
    """Why this poll fails to say 'behind' (None: it says the DR is behind)."""
    if poll.status is None:
        return None                      # no answer: no claim (kept in the record)
    if side == "tx":
        s = poll.status
        if s.get("in_sync") is not False:
            return f"in_sync={s.get('in_sync', '<absent>')!r}"
        if not (s.get("lag_bytes", 0) > 0 or s.get("lag_records", 0) > 0):
            return f"in_sync=false but lag_bytes={s.get('lag_bytes')!r}, lag_records={s.get('lag_records')!r}"
        return None
    vol = rx_volume(poll.status)
    if vol is None:
        return f"no volume {VOLUME.uuid} in the receiver's status"
    if vol.get("in_sync") is not False:
        return f"in_sync={vol.get('in_sync', '<absent>')!r}"
    return None


def claims_zero_lag(side: str, poll: Poll) -> bool:
    """The poll's lag figures say nothing is missing on the DR (absent lag_bytes: only
    lag_records counts)."""
    if poll.status is None:
        return False
    s = poll.status if side == "tx" else (rx_volume(poll.status) or {})
    return not s.get("lag_bytes") and not s.get("lag_records")


def in_sync_with_zero_lag(side: str, poll: Poll) -> bool:
    if poll.status is None:
        return False
    if side == "tx":
        s = poll.status
        return s.get("in_sync") is True and s.get("lag_bytes") == 0 and s.get("lag_records") == 0
    vol = rx_volume(poll.status) or {}
    return vol.get("in_sync") is True and vol.get("lag_bytes") == 0


def brief(side: str, poll: Poll) -> str:
    if poll.status is None:
        return f"error: {poll.error}"
    s = poll.status if side == "tx" else (rx_volume(poll.status) or {})
    keys = (("in_sync", "lag_bytes", "lag_records", "volume_state", "dirty_bytes",
             "recovery_point_age_s", "resync_blocked", "head_seq", "acked_seq")
            if side == "tx" else ("in_sync", "lag_bytes", "behind_reason", "state", "lag_records",
                                  "applied_seq"))
    shown = {k: s.get(k, "<absent>") for k in keys}
    if side == "tx":
        shown["link"] = s.get("link", {}).get("state")
        shown["resync"] = (s.get("resync") or {}).get("state")
    return json.dumps(shown)


def test_dr_converges_after_journal_overflow_and_status_never_lies(chain, vm_logs_dir):
    primary, dr, host = chain.primary, chain.dr, chain.host
    marks: dict[str, float] = {"begin": time.monotonic()}
    behind_evidence: list[tuple[float, str]] = []   # (time, why the DR was behind then)
    probes: list[dict] = []

    def probe(phase: str):
        """The primary's bitmap header: ground truth for 'the volume logs to its bitmap'."""
        start = time.monotonic()
        header = bitmap_header(primary, BITMAP)
        probes.append({"phase": phase, "start": start, "end": time.monotonic(),
                       "logging": is_logging(header),
                       "overflow_seq": header.overflow_seq if header else None})
        if is_logging(header):
            behind_evidence.append((start, "the primary's bitmap header says logging-to-bitmap"))
        return header

    pollers = {"tx": StatusPoller("tx", primary, TX_SOCK).start(),
               "rx": StatusPoller("rx", dr, RX_SOCK).start()}
    try:
        # ---- steady writes, link up
        host.write_file("/root/writer.py", WRITER.encode())
        host.run(f"rm -f {STOP_WRITER} {WRITER_LOG}; nohup python3 /root/writer.py {MNT}/w {WRITER_LOG} "
                 f"{STOP_WRITER} {WRITE_CHUNK} {WRITER_FILES} {WRITER_RATE} >/root/writer.out 2>&1 "
                 "</dev/null & echo $! > /root/writer.pid")
        wait_for("8 MiB written by the host with the link up",
                 lambda: writer_progress(host, WRITER_LOG).total_bytes >= 8 << 20, timeout=120,
                 detail=lambda: str(writer_progress(host, WRITER_LOG)))
        wait_for("the DR applying the host's writes",
                 lambda: (rx_volume(rx_status(dr)) or {}).get("applied_seq", 0) > 0,
                 timeout=60, detail=lambda: replication.status(dr, RX_SOCK))
        assert probe("before the cut") is not None, f"no valid bitmap header in {BITMAP}"

        # ---- cut the replication link until the journal has overflowed
        at_cut = writer_progress(host, WRITER_LOG).total_bytes
        dr.set_private_link(False)
        marks["cut"] = time.monotonic()
        say(f"link cut after {at_cut >> 20} MiB of host writes")
        overflow_seen_at = None
        deadline = marks["cut"] + CUT_TIMEOUT_S
        while True:
            progress = writer_progress(host, WRITER_LOG)
            now = time.monotonic()
            cut_bytes = progress.total_bytes - at_cut
            if cut_bytes > JOURNAL_BYTES:
                marks.setdefault("cut_bytes_over_journal", now)
            assert progress.error is None, f"host write failed during the cut: {progress.error}"
            header = probe("cut")
            if is_logging(header) and overflow_seen_at is None:
                overflow_seen_at = probes[-1]["end"]
                marks["bitmap_logging_seen"] = overflow_seen_at
            tx_after = [p for p in pollers["tx"].snapshot()
                        if overflow_seen_at is not None and p.start >= overflow_seen_at]
            if overflow_seen_at is not None and cut_bytes >= CUT_BYTES and len(tx_after) >= 3:
                break
            if now >= deadline:
                raise AssertionError(
                    f"the journal did not overflow within {CUT_TIMEOUT_S:.0f} s of the cut: "
                    f"{cut_bytes >> 20} MiB written during the cut (journal {JOURNAL_BYTES >> 20} MiB), "
                    f"bitmap header {header}; host writer {progress}")
            time.sleep(1.0)
        cut_progress = writer_progress(host, WRITER_LOG)
        # The handler's own account, as an admin asks it on the primary: what the DR lacks.
        handler = primary.run(["appliancectl", "--socket", HANDLER_SOCK, "status", "--json"],
                              timeout=30, check=False)
        handler_volume = (json.loads(handler.text).get("volumes", {}).get(LUN.name)
                          if handler.rc == 0 else None)
        dr.set_private_link(True)
        marks["restore"] = time.monotonic()
        cut_bytes = cut_progress.total_bytes - at_cut
        behind_evidence.append((marks["restore"], "the link was cut after the overflow until here"))
        say(f"link restored after {marks['restore'] - marks['cut']:.0f} s; "
            f"{cut_bytes / 2**20:.0f} MiB written during the cut")

        # ---- a little more writing with the link back, then stop and unmount
        while time.monotonic() < marks["restore"] + POST_RESTORE_S:
            probe("after the cut")
            time.sleep(1.0)
        host.run(f"touch {STOP_WRITER}; pid=$(cat /root/writer.pid); for i in $(seq 1 1200); do "
                 "kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; echo 'writer did not stop' >&2; exit 1",
                 timeout=180)
        final = writer_progress(host, WRITER_LOG)
        assert final.error is None, f"host write failed: {final.error}"
        host.run(f"sync && umount {MNT} && blockdev --flushbufs {chain.device}", timeout=120)
        marks["host_unmounted"] = time.monotonic()

        # ---- wait for the DR to hold exactly what the host reads. The host's read of the
        # whole LUN through iSCSI is slow under TCG (25-60 s), so it runs alongside; until it
        # is done the DR is compared with the primary's mirror (a local read of seconds).
        host_read: dict = {}
        reader = threading.Thread(target=read_lun, args=(host, chain.device, host_read), daemon=True)
        reader.start()
        primary_hashes = chunk_hashes(primary, PRIMARY_MIRROR, LUN_BYTES)
        dr_reads: list[tuple[float, float, list[str]]] = []
        deadline = marks["host_unmounted"] + CONVERGE_TIMEOUT_S
        while True:
            probe("converging")
            start = time.monotonic()
            got = chunk_hashes(dr, DR_MIRROR, LUN_BYTES)
            dr_reads.append((start, time.monotonic(), got))
            reference = host_read.get("hashes", primary_hashes)
            if got == reference:
                if "hashes" in host_read or "error" in host_read or time.monotonic() >= deadline:
                    break
                reader.join(timeout=max(0.0, deadline - time.monotonic()))  # then compare again
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        reader.join(timeout=max(30.0, deadline - time.monotonic()))
        if "hashes" not in host_read:
            raise AssertionError(f"the host's read of its LUN did not finish: {host_read.get('error', 'still running')}")
        expected = host_read["hashes"]
        marks["host_read"] = host_read["end"]
        assert len(expected) == LUN_BYTES >> 20, f"the host read {len(expected)} MiB of the LUN"
        # The DR only moves forward: every read that differs proves it was behind when it began.
        differing: list[int] = []
        for start, end, got in dr_reads:
            differing = [i for i, (x, y) in enumerate(zip(expected, got, strict=True)) if x != y]
            if differing:
                behind_evidence.append((start, f"the DR's mirror differed from the host's LUN "
                                               f"in {len(differing)} MiB"))
                marks.pop("converged", None)
            else:
                marks.setdefault("converged", end)
        converged = not differing

        # ---- once converged, both sides must say so within a bounded time
        # (the host's read may have finished well after the DR matched: the time is taken
        # from the polls, from the DR read that first matched)
        settled = None
        if converged:
            def first_in_sync() -> float | None:
                ends = []
                for side, poller in pollers.items():
                    after = [p for p in poller.snapshot() if p.start >= marks["converged"]]
                    first = next((p for p in after if in_sync_with_zero_lag(side, p)), None)
                    if first is None or not in_sync_with_zero_lag(side, after[-1]):
                        return None
                    ends.append(first.end)
                return max(ends)
            with contextlib.suppress(AssertionError):
                settled = wait_for("", first_in_sync,
                                   timeout=max(5.0, marks["converged"] + SETTLE_TIMEOUT_S - time.monotonic()))
    finally:
        for poller in pollers.values():
            poller.stop()

    # ---- analysis
    polls = {side: poller.snapshot() for side, poller in pollers.items()}
    overflow_at = min(t for t in (marks.get("bitmap_logging_seen"), marks.get("cut_bytes_over_journal"))
                      if t is not None)
    for p in polls["tx"]:
        if p.status and p.status.get("volume_state") == "logging-to-bitmap" and p.end < overflow_at:
            overflow_at = p.end
    behind_until = max(t for t, _ in behind_evidence)
    problems: list[str] = []
    if (handler_volume is None or handler_volume.get("state") != "logging-to-bitmap"
            or handler_volume.get("peer_holds_everything") is not False
            or not handler_volume.get("peer_lag_dirty_bytes")):
        problems.append(f"the handler's status did not say what the DR lacks at the end of the "
                        f"cut: {handler_volume if handler_volume else handler.text[-500:]}")

    if final.longest_s >= LONGEST_WRITE_LIMIT_S:
        problems.append(f"a host write stalled: it took {final.longest_s:.1f} s "
                        f"(limit {LONGEST_WRITE_LIMIT_S:.0f} s)")
    primary_diff = sum(x != y for x, y in zip(expected, primary_hashes, strict=True))
    if not converged:
        problems.append(
            f"the DR did not converge: {CONVERGE_TIMEOUT_S:.0f} s after the host unmounted, the DR's "
            f"mirror still differs from what the host reads in {len(differing)} of {len(expected)} MiB "
            f"(the primary's mirror differs from it in {primary_diff} MiB)")

    for side in ("tx", "rx"):
        window = [p for p in polls[side] if p.start >= overflow_at and p.end <= behind_until]
        lies = [(p, why) for p in window if (why := in_sync_claim(side, p))]
        if lies:
            p, why = lies[0]
            zero = [p for p, _ in lies if claims_zero_lag(side, p)]
            message = (f"{side} status did not say the DR was behind in {len(lies)} of {len(window)} "
                       f"polls between the overflow (+{overflow_at - marks['cut']:.1f} s after the cut) "
                       f"and the last moment the DR was known behind (+{behind_until - marks['cut']:.1f} s); "
                       f"first at +{p.start - marks['cut']:.1f} s: {why}: {brief(side, p)}")
            if zero:
                message += (f"; {len(zero)} of them reported zero lag, first at "
                            f"+{zero[0].start - marks['cut']:.1f} s: {brief(side, zero[0])}")
            problems.append(message)
        if not window:
            problems.append(f"no {side} status poll answered between the overflow and convergence")

    during_cut = [p for p in polls["tx"] if p.start >= marks["cut"] and p.end <= marks["restore"]]
    if not any(p.status and p.status.get("volume_state") == "logging-to-bitmap" for p in during_cut):
        states = sorted({str((p.status or {}).get("volume_state", "<absent>")) for p in during_cut})
        problems.append(f"the transmitter never reported volume_state 'logging-to-bitmap' during the "
                        f"cut ({len(during_cut)} polls; volume_state seen: {', '.join(states)})")

    if converged and settled is None:
        last = {side: polls[side][-1] for side in polls if polls[side]}
        problems.append(f"the DR converged but the statuses did not both say in sync with zero lag "
                        f"within {SETTLE_TIMEOUT_S:.0f} s: "
                        + "; ".join(f"{side}: {brief(side, p)}" for side, p in last.items()))

    # ---- figures, kept and printed whatever the outcome
    figures = {
        "cut_bytes_mib": round(cut_bytes / 2**20, 1),
        "journal_mib": JOURNAL_BYTES >> 20,
        "host_bytes_total_mib": round(final.total_bytes / 2**20, 1),
        "longest_host_write_s": final.longest_s,
        "cut_seconds": round(marks["restore"] - marks["cut"], 1),
        "overflow_after_cut_s": round(overflow_at - marks["cut"], 1),
        "converged_after_restore_s": (round(marks["converged"] - marks["restore"], 1)
                                      if converged else None),
        # the DR reads are seconds apart (slower while the host reads the LUN alongside), so
        # the convergence above is an upper bound; this is when the statuses first said so
        "tx_in_sync_after_restore_s": next((round(p.start - marks["restore"], 1) for p in polls["tx"]
                                            if p.start >= marks["restore"] and p.status
                                            and p.status.get("in_sync") is True), None),
        "statuses_in_sync_after_convergence_s": (round(settled - marks["converged"], 1)
                                                 if settled else None),
        "host_final_read_s": round(marks["host_read"] - marks["host_unmounted"], 1),
        "primary_mirror_mib_differing_from_host": primary_diff,
        "polls": {side: len(v) for side, v in polls.items()},
        "poll_errors": {side: sum(p.status is None for p in v) for side, v in polls.items()},
        "test_seconds": round(time.monotonic() - marks["begin"], 1),
    }
    say("figures: " + json.dumps(figures))
    for side in ("tx", "rx"):
        for p in polls[side][:: max(1, len(polls[side]) // 12)]:
            say(f"  {side} +{p.start - marks['cut']:6.1f}s {brief(side, p)}")
    record = vm_logs_dir / __name__
    record.mkdir(parents=True, exist_ok=True)
    (record / "episode.json").write_text(json.dumps({
        "marks": {k: v - marks["cut"] for k, v in marks.items()}, "figures": figures,
        "behind_evidence": [(t - marks["cut"], why) for t, why in behind_evidence],
        "probes": [{**pr, "start": pr["start"] - marks["cut"], "end": pr["end"] - marks["cut"]}
                   for pr in probes],
        "polls": {side: [{**asdict(p), "start": p.start - marks["cut"], "end": p.end - marks["cut"]}
                         for p in v] for side, v in polls.items()},
    }, indent=1))
    say(f"every poll and probe: {record / 'episode.json'}")

    assert not problems, "\n".join(problems)
