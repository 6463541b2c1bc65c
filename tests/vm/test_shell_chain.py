"""Issue 15 in VMs with real LIO: replication run only through the appliance's targetcli.

One lab for the module (three VMs, shared by its tests, in this order), built by the very
functions ``make demo`` runs (``vmlab.demo.build_chain``): both appliances paired with
``/replication/peers create`` (TLS, pinned fingerprints read from ``/replication info``), the
user:mirror disk, its target and a mutual-CHAP ACL for the host, ``/replication/volumes
create``, ``saveconfig``; the host logs in with CHAP, makes ext4 and writes files. Then:

- the DR converges byte for byte (SHA-256 of both mirrors);
- issue 19: ``/replication set link kernel_tls=true`` on both appliances puts the link's TLS in
  both guests' kernels (status, ``/proc/net/tls_stat``); a SIGKILL of the transmitter and a cut
  of the connection (``ss -K``) later it is back in the kernel and the DR converges; every
  step below runs over kernel TLS;
- issue 16: each exporter, moved to its management address by the setup's
  ``/replication/monitoring set exporter``, runs under its unit and listens there only; a scrape
  during replication shows the DR's applied sequence rising; a journal pause raises the
  LoggingToBitmap alert once (status text, the journal's MESSAGE_ID) and the resume clears it
  once; after the reboot both exporters answer again on the saved address;
- an initiator without the credentials (or with a wrong secret) is refused;
- an interactive targetcli session on a terminal: help text, Tab completion, ``ls``;
- every bad input of issue 15 item 7 is refused, naming what to fix, with nothing changed; a
  wrong fingerprint is refused by each side's pairing;
- pause (the DR is behind while paused), discard (needs a resync), resume (converges);
- issue 17: ``set sync mode=sync`` from the shell: the host's synced writes wait for the DR;
  with the DR's receiver stopped they stall once for the fall-back time, the volume says
  ``sync-degraded`` (status text, the SyncDegraded alert) and returns to ``sync`` by itself once
  the receiver is back; ``sync-on-flush`` is left set and survives the reboot below;
- issue 18, point in time: ``set retention retain=1h`` on the DR's replica, two rounds of files
  (the second overwrites and deletes some of the first), ``recover at=seq:`` the point between
  them; the image equals the DR's mirror at that point byte for byte, served read-only as the
  printed next steps say (read-only loop device, ``/backstores/block ... readonly=true``, a
  target of the DR), the host's ``fsck.ext4 -n`` finds it clean and, mounted ``ro,noload``, it
  holds every file as it was then and none written after; a point before the window is
  refused with the range; then all of it removed and retention turned off again;
- ``saveconfig``, both appliances rebooted: replication resumes with no other step;
- issue 17, a consistency group through targetcli: ``/replication/groups create``, two member
  backstores (``group=db``) exported as LUNs 0 and 1 of one target with the host's CHAP ACL;
  the host writes a slot of the log LUN, synced, then the same slot of the data LUN, in a
  loop; the DR's provisioned replica (one mirror per member) equals the primary's members
  byte for byte, and the status texts show the group, its members and its consistent point;
- the demo's ``--check`` failover: the DR replica promoted through targetcli, served on
  a target of the DR, mounted by the host with every file intact;
- last, issue 18 part 4, the demo's failback: the host writes on the promoted copy, the old
  primary (target, LUN, backstore deleted) becomes its DR over its old mirror with
  ``failback uuid=``, the DR replicates back with ``/replication/volumes create``, and only
  the host's new writes cross (as journal records; nothing marked, no hash pass) until both
  mirrors are equal byte for byte;
- then the same for consistency group ``db``: the DR promotes its replica and makes it a
  group of its own (``/replication/groups create ... promoted=``), serves the members as LUNs
  0 and 1 and the host makes dependent writes there; the old primary's receiver refuses that
  promoted copy (``failback-first``) until the old primary (target and member backstores
  deleted) becomes its DR with ``/replication/groups/db failback uuid=``; only the host's
  writes cross, as records, until every old member equals the DR's byte for byte.

This module replaces test_demo.py's run of ``python -m vmlab.demo --check`` (which booted its
own three VMs for the same chain): the demo's setup and check functions run here, on VMs the
other tests share, which keeps the VM tier within its time budget.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time

import pytest

from appliance.exporter.alerts import KINDS
from vmlab import appliance as ap
from vmlab import demo
from vmlab import groups as grp
from vmlab import monitoring as mon
from vmlab import replication as rp
from vmlab.demo import DR_ADDR, MANIFEST, MNT, PRIMARY_ADDR, Chain
from vmlab.machine import Machine
from vmlab.shell_session import Step, prompt, pty_session

SIZE = "256M"
JOURNAL = "64M"
VOLUME = "disk0"
SITE_JSON = f"{ap.STATE_DIR}/replication/site.json"


def say(msg: str) -> None:
    print(f"[shell-chain] {msg}", flush=True)


@pytest.fixture(scope="module")
def chain(lab) -> Chain:
    t0 = time.monotonic()
    built = demo.build_chain(lab, size=SIZE, journal_size=JOURNAL, port=0, files=12, log=say)
    say(f"chain built through targetcli in {time.monotonic() - t0:.0f} s")
    return built


def tx(chain: Chain) -> dict:
    return rp.daemon_status(chain.primary, rp.transmitter_sock(VOLUME)) or {}


def random_fingerprint() -> str:
    return "SHA256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(secrets.token_bytes(16)).digest())


def snapshot(machine: Machine) -> dict:
    """What a refused command must leave as it was: the shell's tree, the site settings, the
    generated daemon files and LIO's configuration."""
    tree = ap.targetcli(machine, "ls", "/").text
    files = machine.run(f"cd {ap.STATE_DIR}/replication && ls -la --time-style=+%s . peers 2>/dev/null; "
                        f"sha256sum site.json *.toml peers/* 2>/dev/null", check=False).text
    lio = machine.run("ls /sys/kernel/config/target/core/user_*/ /sys/kernel/config/target/iscsi/",
                      check=False).text
    # status figures move (lag, times): keep the tree's names, not its summaries
    names = [line.split("[")[0].rstrip(" .") for line in tree.splitlines()]
    return {"tree": names, "files": files, "lio": lio}


# --------------------------------------------------------------------------- the chain


def test_dr_converges_byte_for_byte(chain):
    done = demo.converge(chain, say)
    say(f"converged {done.seconds:.0f} s after the host stopped writing")
    for text in (done.primary_status, done.dr_status):
        assert "link:connected" in text and "in-sync" in text, text
    assert done.primary_status.startswith(f"{VOLUME} role:primary peer:dr"), done.primary_status
    assert "role:dr primary:primary" in done.dr_status, done.dr_status


def kernel_tls_of(status: dict | None) -> str:
    return str(((status or {}).get("link") or {}).get("tls") or "")


def test_kernel_tls_from_targetcli_survives_a_kill_and_converges(chain):
    """Issue 19: '/replication set link kernel_tls=true' on both appliances puts the link's
    encryption in both guests' kernels (kTLS; this host's kernel has no tls module). Each
    side's status says so and the kernels count the connections; the transmitter, killed
    with SIGKILL while the host writes, comes back under systemd in the kernel again, as
    after a cut of the connection by the DR's kernel, and the DR converges byte for byte. The rest of the module then runs over kernel TLS."""
    primary, dr, host = chain.primary, chain.dr, chain.host
    for machine in (dr, primary):
        (result,) = demo.shell(machine, ["/replication set link kernel_tls=true"], say)
        assert not result.refused, result.message
        assert "Parameter kernel_tls is now 'true'." in result.stdout, result.stdout
    in_kernel = rp.wait_for(
        "the transmitter's link encrypted in the kernel",
        lambda: (s := tx(chain)).get("link", {}).get("state") == "replicating"
        and kernel_tls_of(s).startswith("kernel (tx+rx), TLSv1.2 ECDHE-") and s, 120,
        detail=lambda: json.dumps(tx(chain).get("link"))[:2000])
    say(f"primary's link: {kernel_tls_of(in_kernel)}")
    rp.wait_for("the DR's link encrypted in the kernel",
                lambda: kernel_tls_of(rp.replica_of(dr, chain.volume_uuid))
                .startswith("kernel (tx+rx), TLSv1.2 ECDHE-"), 60,
                detail=lambda: json.dumps(rp.replica_of(dr, chain.volume_uuid))[:2000])
    for machine in (primary, dr):       # the kernel's own count (net/tls/tls_proc.c)
        stats = dict(line.split() for line in machine.run("cat /proc/net/tls_stat").text
                     .splitlines() if line.strip())
        assert int(stats["TlsCurrTxSw"]) >= 1 and int(stats["TlsCurrRxSw"]) >= 1, stats

    unit = "appliance-transmitter@disk0.service"
    pid = primary.run(f"systemctl show -p MainPID --value {unit}").text.strip()
    sent = tx(chain).get("records_sent", 0)
    writer = threading.Thread(target=demo.write_files, args=(host, "ktls", 8), daemon=True)
    writer.start()
    rp.wait_for("the transmitter shipping the host's new writes",
                lambda: tx(chain).get("records_sent", 0) > sent, 120)
    primary.run(f"systemctl kill -s KILL {unit}")
    say(f"killed the transmitter (pid {pid}) with SIGKILL while the host writes")
    writer.join(300)
    assert not writer.is_alive(), "the host's writes did not finish in 300 s"
    chain.files_written += 8
    rp.wait_for("the transmitter back under systemd, in the kernel again",
                lambda: primary.run(f"systemctl show -p MainPID --value {unit}").text.strip()
                not in ("0", pid) and (s := tx(chain)).get("link", {}).get("state")
                == "replicating" and kernel_tls_of(s).startswith("kernel (tx+rx)"), 120,
                detail=lambda: json.dumps(tx(chain).get("link"))[:2000])
    # A cut: the DR's kernel destroys the connection (ss -K, sock_diag), both ends see it
    # reset; the transmitter connects again, in the kernel again.
    connects = tx(chain).get("link", {}).get("connects", 0)
    dr.run(f"ss -K -t state established '( sport = :{rp.REPLICATION_PORT} )'")
    rp.wait_for("the transmitter connected again after the cut, in the kernel",
                lambda: (s := tx(chain)).get("link", {}).get("connects", 0) > connects
                and s["link"].get("state") == "replicating"
                and kernel_tls_of(s).startswith("kernel (tx+rx)"), 120,
                detail=lambda: json.dumps(tx(chain).get("link"))[:2000])
    done = demo.converge(chain, say)
    say(f"converged over kernel TLS {done.seconds:.0f} s after the host stopped writing")
    for text in (done.primary_status, done.dr_status):
        assert "encryption: kernel (tx+rx), TLSv1.2 ECDHE-" in text, text


def test_exporter_on_the_management_address_shows_the_dr_applying(chain):
    """Issue 16 on the image: each appliance's exporter, moved to its management address by
    ``/replication/monitoring set exporter`` during the setup, runs under its hardened unit,
    listens there only, and a scrape (parsed by prometheus_client) during replication shows
    the DR's applied sequence rising."""
    primary, dr, host = chain.primary, chain.dr, chain.host
    listen = f"{mon.MGMT_ADDR}:{mon.EXPORTER_PORT}"
    for machine in (primary, dr):
        active = machine.run(["systemctl", "is-active", "appliance-exporter.service"],
                             check=False).text.strip()
        assert active == "active", rp.unit_logs(machine, ["appliance-exporter.service"])
        lines = machine.run(["ss", "-ltnH", f"sport = :{mon.EXPORTER_PORT}"]).text.splitlines()
        local = [line.split()[3] for line in lines if line.strip()]
        assert local == [listen], f"{machine.name}: listening on {local}, expected only {listen}"
        info = ap.targetcli(machine, "/replication/monitoring", "info").text
        say(f"{machine.name}: /replication/monitoring info\n{info}")
        assert f"listen:   {listen}" in info, info

    scraped = mon.scrape(primary)
    say("primary's scrape (samples):\n" + "\n".join(
        line for line in scraped.splitlines() if line and not line.startswith("#")))
    fams = mon.families(scraped)
    vp = {"volume": VOLUME, "peer": "dr"}      # the peer as paired (/replication/peers)
    types = {name: fams[name].type for name in fams}
    expected = {"appliance_build_info": "gauge", "appliance_handler_up": "gauge",
                "appliance_journal_capacity_bytes": "gauge", "appliance_write_ops": "counter",
                "appliance_command_latency_seconds": "histogram",
                "appliance_acknowledged_sequence": "gauge", "appliance_link_up": "gauge",
                "appliance_replication_state": "gauge",
                "appliance_payload_bytes_sent": "counter"}
    assert {n: types.get(n) for n in expected} == expected, types
    assert mon.sample(fams, "appliance_journal_capacity_bytes", volume=VOLUME) > 0
    assert mon.sample(fams, "appliance_write_ops", "appliance_write_ops_total", volume=VOLUME) > 0
    assert mon.sample(fams, "appliance_link_up", **vp) == 1.0, fams["appliance_link_up"].samples
    assert mon.sample(fams, "appliance_replication_state", **vp,
                      appliance_replication_state="replicating") == 1.0

    def dr_applied() -> float | None:
        return mon.sample(mon.families(mon.scrape(dr)), "appliance_dr_applied_sequence",
                          volume=VOLUME, peer="primary")

    before = dr_applied()
    assert before is not None and before > 0, mon.scrape(dr)[:3000]
    seen = [before]
    writer = threading.Thread(target=demo.write_files, args=(host, "scraped", 8), daemon=True)
    writer.start()
    try:
        rp.wait_for("the DR's applied sequence rising in two scrapes while the host writes",
                    lambda: (seen.append(dr_applied() or 0) or len(set(seen)) >= 3), 240,
                    interval=1.0, detail=lambda: f"applied seqs scraped: {seen}")
    finally:
        writer.join(timeout=600)
    chain.files_written += 8
    assert not writer.is_alive(), "the host's writes did not finish within 600 s"
    say(f"DR applied sequence scraped during replication: {seen}")
    assert seen == sorted(seen) and seen[-1] > before, seen


def test_chap_refuses_an_initiator_without_the_credentials(chain):
    port = chain.primary.ports[ap.ISCSI_PORT]
    attrs = ap.targetcli(chain.primary, f"/iscsi/{chain.iqn}/tpg1", "get", "attribute",
                         "authentication", "generate_node_acls").text
    assert re.search(r"authentication=1", attrs) and re.search(r"generate_node_acls=0", attrs), attrs
    refusals = {
        "unknown initiator": ap.libiscsi_refused(port, chain.iqn),
        "the host's name without CHAP": ap.libiscsi_refused(port, chain.iqn, initiator=chain.chap.initiator),
        "the host's name, wrong secret": ap.libiscsi_refused(
            port, chain.iqn, initiator=chain.chap.initiator, user=chain.chap.userid,
            password="not-the-secret-1"),
    }
    for case, text in refusals.items():
        say(f"refused ({case}): {text.strip().splitlines()[-1]}")
    # the host, with the secret, is in: its session is up and uses CHAP
    session = chain.host.run(["iscsiadm", "-m", "session", "-P", "2"]).text
    assert chain.iqn in session and "username: " + chain.chap.userid in session, session


def test_interactive_session_on_a_terminal(chain):
    steps = [
        Step("", r"> $"),
        Step("cd /replication\r", prompt("/replication")),
        Step("help\r", r"AVAILABLE COMMANDS.*- info.*- status.*" + prompt("/replication")),
        Step("help info\r", r"fingerprint.*" + prompt("/replication")),
        Step("peers/ create name=x fi\t", r"fingerprint=$"),
        Step("\t", r"SHA256: ?$"),
        Step("\x15\r", prompt("/replication")),
        Step("ls /\r", r"o- replication .*o- peers .*o- dr .*o- volumes .*o- disk0 .*"
             + prompt("/replication")),
        Step("exit\r", r"$"),
    ]
    exchanges = pty_session(chain.primary, ["targetcli"], steps)
    transcript = "".join(f"\n>>> {e.send!r}\n{e.output}" for e in exchanges)
    say(f"terminal session:{transcript}")
    help_text = exchanges[3].output
    assert "identity" in help_text and "certificate" in help_text, help_text


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_changes_nothing(chain):
    primary, dr = chain.primary, chain.dr
    ap.targetcli_batch(primary, [f"/backstores/fileio create name=plain "
                                 f"file_or_dev={ap.STATE_DIR}/volumes/plain.img size=16M"])
    before = {m.name: snapshot(m) for m in (primary, dr)}
    fp = random_fingerprint()
    cases = {
        primary: {
            "address that does not parse": f"/replication/peers create name=x address=192.168.77.12 fingerprint={fp}",
            "address with a bad port": f"/replication/peers create name=x address=192.168.77.12:99999 fingerprint={fp}",
            "backstore that does not exist": "/replication/volumes create backstore=nosuch peer=dr",
            "backstore not user:mirror": "/replication/volumes create backstore=plain peer=dr",
            "backstore already replicated": f"/replication/volumes create backstore={VOLUME} peer=dr",
            "peer that does not exist": f"/replication/volumes create backstore={VOLUME}x peer=nobody",
            "fingerprint that does not parse": "/replication/peers create name=x address=192.168.77.12:7700 fingerprint=SHA256:zz:11",
            "peer name in use": f"/replication/peers create name=dr address=192.168.77.99:7700 fingerprint={fp}",
            "bandwidth limit out of range": f"/replication/volumes/{VOLUME} set replication bandwidth_limit=0",
            "bandwidth limit that does not parse": f"/replication/volumes/{VOLUME} set replication bandwidth_limit=-5",
            "blackout window that does not parse": f"/replication/volumes/{VOLUME} set replication blackout=25:00-26:00",
            "wrong fingerprint for the DR": f"/replication/peers create name=dr2 address={DR_ADDR}:7700 fingerprint={fp}",
        },
        dr: {
            "wrong fingerprint for the primary": f"/replication/peers create name=primary2 address={PRIMARY_ADDR}:7700 fingerprint={fp}",
        },
    }
    problems = []
    for machine, lines in cases.items():
        results = ap.targetcli_lines(machine, list(lines.values()), keep_going=True)
        for (case, line), result in zip(lines.items(), results, strict=True):
            say(f"{machine.name}: {case}:\n  {line}\n  -> {result.message or result.stdout.strip()}")
            if not result.refused:
                problems.append(f"{machine.name}: {case} was accepted: {line}\n{result.stdout}")
            elif "nothing changed" not in result.message:
                problems.append(f"{machine.name}: {case}: the refusal does not say that nothing "
                                f"changed: {result.message}")
            if case.startswith("wrong fingerprint") and "presented" not in result.message:
                problems.append(f"{machine.name}: {case}: the refusal does not name the "
                                f"certificate presented: {result.message}")
    after = {m.name: snapshot(m) for m in (primary, dr)}
    for name in before:
        for what in before[name]:
            if before[name][what] != after[name][what]:
                problems.append(f"{name}: a refused command changed {what}:\nbefore: "
                                f"{before[name][what]}\nafter: {after[name][what]}")
    ap.targetcli_batch(primary, ["/backstores/fileio delete plain"])
    assert not problems, "\n\n".join(problems)


# --------------------------------------------------------------------------- steering


def test_pause_resume_and_discard(chain):
    primary, dr, host = chain.primary, chain.dr, chain.host
    node = f"/replication/volumes/{VOLUME}"
    demo.shell(primary, [f"{node} pause"], say)
    rp.wait_for("the transmitter saying paused:admin",
                lambda: tx(chain).get("link", {}).get("state") == "paused:admin", 60,
                detail=lambda: rp.shell_status(primary))
    demo.write_files(host, "paused", 6)
    chain.files_written += 6
    behind = rp.wait_for(
        "the primary's status saying the DR is behind while paused",
        lambda: (s := tx(chain)).get("in_sync") is False and (s.get("lag_records") or s.get("lag_bytes")) and s,
        60, detail=lambda: rp.shell_status(primary))
    say(f"paused: lag {behind.get('lag_records')} records, {behind.get('lag_bytes')} bytes")
    rp.wait_for("the DR's status saying it is behind while the primary is paused",
                lambda: (rp.replica_of(dr, chain.volume_uuid) or {}).get("in_sync") is False, 60,
                detail=lambda: rp.shell_status(dr))
    dr_text = rp.shell_status(dr)
    say(f"DR while paused:\n{dr_text}")
    assert "in-sync" not in dr_text, dr_text
    text = rp.shell_status(primary)
    assert "paused" in text and "behind" in text, text

    demo.shell(primary, [f"{node} discard"], say)
    status = rp.wait_for("the primary's status saying the volume needs a resync after discard",
                         lambda: (s := tx(chain)).get("needs_resync") is True and s, 60,
                         detail=lambda: json.dumps(tx(chain))[:2000])
    say(f"after discard: needs_resync, {status.get('lag_bytes')} bytes dirty\n{rp.shell_status(primary)}")
    assert "resync" in rp.shell_status(primary)

    demo.shell(primary, [f"{node} resume"], say)
    done = demo.converge(chain, say)
    say(f"resumed: converged byte for byte in {done.seconds:.0f} s")
    assert "in-sync" in done.primary_status and "paused" not in done.primary_status, done.primary_status
    assert not tx(chain).get("needs_resync"), json.dumps(tx(chain))[:2000]


def test_journal_pause_and_resume(chain):
    primary, host = chain.primary, chain.host
    node = f"/replication/volumes/{VOLUME}"
    kind = KINDS["LoggingToBitmap"]     # also raised and cleared by the discard test before
    earlier = {i: len(mon.journal_entries(primary, i)) for i in (kind.raised_id, kind.cleared_id)}
    demo.shell(primary, [f"{node} pause what=journal"], say)
    handler = json.loads(primary.run(["appliancectl", "--socket", "/run/appliance-handler/handler.sock",
                                      "status", "--json"]).text)
    say(f"handler while journaling is paused: {json.dumps(handler)[:1500]}")
    assert '"journal_paused": true' in json.dumps(handler), json.dumps(handler)[:3000]
    demo.write_files(host, "journal-paused", 4)
    chain.files_written += 4
    text = rp.shell_status(primary)
    say(f"primary while journaling is paused:\n{text}")
    assert "journal:paused" in text, text
    # the exporter's alert: in the status an admin reads, and in the journal with its id
    text = rp.wait_for("the LoggingToBitmap alert in targetcli /replication status",
                       lambda: "LoggingToBitmap" in (t := rp.shell_status(primary)) and t, 60,
                       detail=lambda: rp.shell_status(primary))
    say(f"primary's status with the alert:\n{text}")
    rp.wait_for("the raised alert in the journal with its MESSAGE_ID",
                lambda: mon.journal_entries(primary, kind.raised_id)[earlier[kind.raised_id]:], 60)
    demo.shell(primary, [f"{node} resume what=journal"], say)
    done = demo.converge(chain, say)
    say(f"journal resumed: the dirty regions resynced, converged in {done.seconds:.0f} s")
    assert "in-sync" in done.primary_status and "journal:paused" not in done.primary_status, \
        done.primary_status
    cleared = rp.wait_for("the cleared alert in the journal with its MESSAGE_ID",
                          lambda: mon.journal_entries(primary, kind.cleared_id)[earlier[kind.cleared_id]:],
                          60)
    raised = mon.journal_entries(primary, kind.raised_id)[earlier[kind.raised_id]:]
    for entry in (*raised, *cleared):
        say(f"journal: {entry.get('SYSLOG_IDENTIFIER')} {entry.get('MESSAGE')}")
    assert len(raised) == 1 and len(cleared) == 1, (raised, cleared)   # once each
    assert raised[0].get("VOLUME") == VOLUME and "paused" in raised[0]["MESSAGE"], raised[0]
    assert "LoggingToBitmap" not in rp.shell_status(primary)


HANDLER_SOCK = "/run/appliance-handler/handler.sock"


def handler_sync(machine: Machine) -> dict:
    """The handler's sync status of the volume (its mode, effective mode and waits)."""
    status = json.loads(machine.run(["appliancectl", "--socket", HANDLER_SOCK, "status",
                                     "--json"]).text)
    return status["volumes"][VOLUME]["sync"]


def test_sync_mode_falls_back_when_the_dr_is_gone_and_returns(chain):
    primary, dr, host = chain.primary, chain.dr, chain.host
    node = f"/replication/volumes/{VOLUME}"
    demo.shell(primary, [f"{node} set sync mode=sync fallback=5s"], say)
    before = handler_sync(primary)
    assert before["mode"] == "sync" and before["fallback_s"] == 5.0, before
    demo.write_files(host, "sync", 3)
    chain.files_written += 3
    during = handler_sync(primary)
    say(f"handler in sync mode after the host's writes: {during}")
    assert during["effective"] == "sync" and during["waits"] > before["waits"], during
    assert during["fallbacks"] == before["fallbacks"], during
    text = rp.shell_status(primary)
    assert "mode:sync" in text and "sync-degraded" not in text, text

    dr.run("systemctl stop appliance-receiver", timeout=120)
    t0 = time.monotonic()
    demo.write_files(host, "sync-dr-gone", 2)
    chain.files_written += 2
    stalled = time.monotonic() - t0
    degraded = rp.wait_for("the volume saying sync-degraded with the DR's receiver stopped",
                           lambda: (st := handler_sync(primary))["effective"] == "sync-degraded"
                           and st, 60, detail=lambda: rp.shell_status(primary))
    say(f"DR gone: the host's writes took {stalled:.1f} s; {degraded}")
    assert degraded["fallbacks"] == before["fallbacks"] + 1, degraded
    text = rp.wait_for("SyncDegraded in targetcli /replication status",
                       lambda: "SyncDegraded" in (t := rp.shell_status(primary)) and t, 60,
                       detail=lambda: rp.shell_status(primary))
    say(f"primary while degraded:\n{text}")
    assert "sync-degraded" in text, text

    dr.run("systemctl start appliance-receiver", timeout=120)
    rp.wait_for("sync again once the DR caught up",
                lambda: handler_sync(primary)["effective"] == "sync", 180,
                detail=lambda: rp.shell_status(primary))
    done = demo.converge(chain, say)
    assert "in-sync" in done.primary_status and "sync-degraded" not in done.primary_status, \
        done.primary_status
    # Left set for the reboot test: the handler keeps it across the reboot.
    demo.shell(primary, [f"{node} set sync mode=sync-on-flush fallback=10s"], say)
    assert handler_sync(primary)["mode"] == "sync-on-flush"


def round_digests(host: Machine, round_name: str, root: str = MNT) -> dict[str, str]:
    """{path under root: SHA-256} of a round's files, as the host reads them now."""
    lines = host.run(f"cd {root} && sha256sum {round_name}/*.bin").text.splitlines()
    return {path: digest for digest, path in (line.split(maxsplit=1) for line in lines)}


def window_at_applied(dr: Machine, volume_uuid: str) -> dict | None:
    """The replica's retention window (receiver status) once its newest point is the seq
    the mirror has applied; None before."""
    replica = rp.replica_of(dr, volume_uuid) or {}
    window = replica.get("retention") or {}
    newest = window.get("newest") or {}
    return window if newest.get("seq") is not None and newest["seq"] == replica.get("applied_seq") \
        else None


def test_recover_a_point_in_time_and_mount_it_read_only(chain):
    """Issue 18 on real LIO: the DR keeps a window; the image recovered at the point between
    two rounds of the host's files is that point's file system, clean, served read-only."""
    dr, host = chain.dr, chain.host
    name = demo.replica_name(dr, VOLUME, chain.volume_uuid)
    node = f"/replication/replicas/{name}"
    demo.shell(dr, [f"{node} set retention retain=1h"], say)
    text = demo.shell(dr, [f"{node} get retention"], say)[-1].stdout
    assert "retain=1h" in text and "max=none" in text, text

    # round a, then the point: the host unmounted, the DR equal to the primary
    demo.write_files(host, "pit-a", 6)
    chain.files_written += 6
    then = round_digests(host, "pit-a")
    host.run(f"cp {MANIFEST} /root/pit-a.sha256")     # every file as it is at the point
    demo.converge(chain, say, remount=False)
    try:
        window = rp.wait_for(
            "the DR's retention window reaching its applied seq after convergence",
            lambda: window_at_applied(dr, chain.volume_uuid), 60,
            detail=lambda: json.dumps(rp.replica_of(dr, chain.volume_uuid))[:3000])
        point = window["newest"]["seq"]
        image_then = rp.file_digest(dr, chain.dr_mirror, chain.size)
    finally:
        host.run(f"mount {chain.device} {MNT}", timeout=120)
    say(f"point: seq {point} ({window['newest'].get('time_utc')}), window from seq "
        f"{window['oldest']['seq']}; the DR's mirror then: sha256 {image_then[:16]}...")
    assert window["oldest"]["seq"] < point, window

    # round b, and round a changed: one file overwritten, one deleted (the manifest follows,
    # for the failover check at the end)
    demo.write_files(host, "pit-b", 4)
    host.run(f"set -e; cd {MNT}; head -c 65536 /dev/urandom > pit-a/file1.bin; rm pit-a/file2.bin; "
             f"sed -i -e '/ pit-a\\/file[12]\\.bin$/d' {MANIFEST}; "
             f"sha256sum pit-a/file1.bin >> {MANIFEST}; sync")
    chain.files_written += 4 - 1
    demo.converge(chain, say)

    text = demo.shell(dr, [f"{node} get retention window"], say)[-1].stdout
    assert f"window=seq {window['oldest']['seq']} (" in text, text
    refused = ap.targetcli_lines(dr, [f"{node} recover at=seq:1"], keep_going=True)[-1]
    say(f"a point before the window: {refused.describe()}")
    assert refused.refused and "outside the retention window" in refused.message \
        and f"recoverable: seq {window['oldest']['seq']} (" in refused.message \
        and "nothing changed" in refused.message, refused.describe()

    out = demo.shell(dr, [f"{node} recover at=seq:{point}"], say)[-1].stdout
    path = f"{chain.dr_mirror.rsplit('/', 1)[0]}/recovered-{point}.img"
    assert f"Recovered {name} at seq {point} (" in out and path in out, out
    # the printed next steps, as an admin follows them
    losetup = re.search(r"^\s*(losetup --find --show --read-only \S+)", out, re.M)
    create = re.search(r"^\s*(/backstores/block create name=(\S+) dev=/dev/loopN readonly=true)\s*$",
                       out, re.M)
    remove = re.search(r"^\s*(/backstores/block delete \S+); losetup -d /dev/loopN; rm (\S+)\s*$",
                       out, re.M)
    assert losetup and create and remove and remove.group(2) == path, out
    assert dr.run(["stat", "-c", "%a", path]).text.strip() == "400"
    assert rp.file_digest(dr, path, chain.size) == image_then, \
        f"{path} differs from the DR's mirror at seq {point}"
    loop = dr.run(losetup.group(1)).text.strip()
    assert re.fullmatch(r"/dev/loop\d+", loop), loop
    backstore = create.group(2)
    lun = ap.LunSpec(backstore, backstore="block")
    iqn = ap.target_iqn(dr.name, backstore)
    demo.shell(dr, [create.group(1).replace("/dev/loopN", loop),
                    *ap.target_lines(iqn, lun, chain.chap)], say)
    device = ap.host_login(host, DR_ADDR, iqn, chap=chain.chap)
    pit_mnt = "/mnt/pit"
    try:
        fsck = host.run(["fsck.ext4", "-n", "-f", device], timeout=300, check=False)
        say(f"host: fsck.ext4 -n -f {device}: exit {fsck.rc}\n{fsck.text.strip()}")
        assert fsck.rc == 0, fsck.describe()
        host.run(f"mkdir -p {pit_mnt} && mount -o ro,noload {device} {pit_mnt}", timeout=120)
        try:
            check = host.run(f"cd {pit_mnt} && sha256sum --quiet -c /root/pit-a.sha256 && "
                             f"wc -l < /root/pit-a.sha256", timeout=300, check=False)
            assert check.rc == 0, f"files differ from the point's: {check.describe()}"
            recovered = round_digests(host, "pit-a", pit_mnt)
            assert recovered == then, f"pit-a at the point: {then}\nrecovered: {recovered}"
            after = host.run(f"ls -A {pit_mnt}").text.split()
            assert "pit-b" not in after, after
            say(f"recovered seq {point}, mounted read-only on the host: all "
                f"{check.text.strip()} files of the point intact, pit-a as written, no pit-b")
        finally:
            host.run(f"umount {pit_mnt}", timeout=120, check=False)
    finally:
        ap.host_logout(host, DR_ADDR, iqn)
        host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", DR_ADDR, "-o", "delete"], check=False)

    # removed as the printed text says (the target first: it holds the backstore)
    demo.shell(dr, [f"/iscsi delete {iqn}", remove.group(1)], say)
    dr.run(f"losetup -d {loop} && rm {path}")
    left = dr.run(f"losetup -a; ls {path}", check=False).text
    assert path not in left, left
    assert backstore not in ap.targetcli(dr, "ls", "/backstores").text
    demo.shell(dr, [f"{node} set retention retain=none max=none"], say)
    text = demo.shell(dr, [f"{node} get retention window"], say)[-1].stdout
    assert "retention is off" in text, text


# --------------------------------------------------------------------------- persistence


def test_saveconfig_reboot_both_and_replication_resumes(chain):
    primary, dr, host = chain.primary, chain.dr, chain.host
    for machine in (primary, dr):
        demo.shell(machine, ["saveconfig"], say)
        saved = machine.run("stat -c '%a %s' /etc/rtslib-fb-target/replication.json").text.split()
        assert saved[0] == "600" and int(saved[1]) > 2, f"{machine.name}: replication.json {saved}"
    host.run(f"umount {MNT}", timeout=120)
    errors: list[str] = []

    def reboot(machine: Machine) -> None:
        try:
            say(f"{machine.name} back in {machine.reboot():.0f} s")
        except Exception as err:
            errors.append(f"{machine.name}: {err}")

    threads = [threading.Thread(target=reboot, args=(m,)) for m in (primary, dr)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors and not any(t.is_alive() for t in threads), errors or "reboot hung"
    # no other step: the host's session recovers, it writes, the DR converges
    rp.wait_for("the transmitter replicating again after the reboot",
                lambda: tx(chain).get("link", {}).get("state") == "replicating", 240,
                detail=lambda: rp.shell_status(primary))
    host.run(f"mount {chain.device} {MNT}", timeout=300)
    demo.write_files(host, "after-reboot", 6)
    chain.files_written += 6
    done = demo.converge(chain, say)
    say(f"after the reboot of both appliances: converged in {done.seconds:.0f} s")
    assert handler_sync(primary)["mode"] == "sync-on-flush", handler_sync(primary)
    for machine in (primary, dr):       # the saved monitoring settings came back with them
        fams = mon.families(mon.scrape(machine))
        assert mon.sample(fams, "appliance_build_info") == 1.0, sorted(fams)
    assert "in-sync" in done.primary_status and "in-sync" in done.dr_status, \
        f"{done.primary_status}\n{done.dr_status}"


# --------------------------------------------------------------------------- consistency group

GROUP = grp.Group("db", peer="dr", members=("dblog", "dbdata"), size="32M", journal_size="32M")
GROUP_WRITES, GROUP_SLOTS = 96, 16


def test_a_consistency_group_replicates_its_luns_in_one_order(chain):
    """Issue 17 on real LIO: a group made through targetcli on the primary, two member
    backstores exported as LUNs 0 and 1 of one target with the host's CHAP ACL; the host
    writes block i % SLOTS of the log LUN, and only once that is synced the same block of the
    data LUN; the DR provisions the group's replica (one mirror per member) and, once the
    transmitter has shipped all, each member there equals the primary's byte for byte, and
    the status texts show the group, its members and its consistent point."""
    primary, dr, host = chain.primary, chain.dr, chain.host
    t0 = time.monotonic()
    iqn = ap.target_iqn(primary.name, GROUP.name)
    demo.shell(primary, [*GROUP.lines(iqn, chain.chap), "saveconfig"], say)
    layout = grp.primary_layout(primary, GROUP.name)
    group_uuid = layout["uuid"]
    say(f"group {GROUP.name}: uuid {group_uuid}, layout members "
        f"{[(m['name'], m['offset_blocks'], m['num_blocks']) for m in layout['members']]}")
    assert [m["name"] for m in layout["members"]] == list(GROUP.members), layout

    try:
        log_dev, data_dev = grp.host_login_luns(host, PRIMARY_ADDR, iqn, chain.chap, 2)
        size = host.run(["blockdev", "--getsize64", log_dev, data_dev]).text.split()
        assert size == [str(GROUP.size_bytes)] * 2, size
        w0 = time.monotonic()
        grp.dependent_writes(host, [log_dev, data_dev], writes=GROUP_WRITES, slots=GROUP_SLOTS)
        say(f"host: {GROUP_WRITES} dependent writes to {log_dev} then {data_dev} in "
            f"{time.monotonic() - w0:.0f} s")
        took = grp.wait_group_converged(primary, dr, GROUP, group_uuid, say=say)
    finally:
        ap.host_logout(host, PRIMARY_ADDR, iqn)
        host.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", PRIMARY_ADDR, "-o", "delete"],
                 check=False)

    # the bytes at the DR: every slot of each member holds the last write there, its own
    for k, member in enumerate(GROUP.members):
        expected = grp.expected_slots(GROUP_WRITES, GROUP_SLOTS, k)
        got = grp.read_slots(dr, grp.dr_member_mirror(group_uuid, member), GROUP_SLOTS)
        assert got == expected, f"the DR's {member}: {got}, expected {expected}"

    text = rp.wait_for(f"/replication/groups/{GROUP.name} status saying in sync",
                       lambda: "in-sync" in (t := grp.group_status(primary, GROUP.name)) and t,
                       60, detail=lambda: grp.group_status(primary, GROUP.name))
    say(f"primary: targetcli /replication/groups/{GROUP.name} status\n{text}")
    lines = text.splitlines()
    assert lines[0] == f"group {GROUP.name} role:primary peer:dr ({DR_ADDR}:7700)", text
    assert lines[1].startswith("  link:connected replication:replicating"), text
    point = re.search(r"^    consistent point: seq (\d+): the DR holds every member as of "
                      r"the same, newest write$", text, re.M)
    assert point, text
    # one journal, one seq space: every synced write of both LUNs is one record of the group
    assert int(point.group(1)) == GROUP_WRITES * len(GROUP.members), text
    assert "    members: 2, 512-byte blocks" in lines, text
    blocks = GROUP.size_bytes // 512
    for member, at in zip(GROUP.members, (0, blocks), strict=True):
        assert re.search(rf"^      {member}\s+32\.0 MiB  at block {at}$", text, re.M), text
    summary = ap.targetcli(primary, "/replication/groups", "status").text.strip()
    say(f"primary: targetcli /replication/groups status\n{summary}")
    assert f"group {GROUP.name} role:primary" in summary, summary

    replica = rp.replica_of(dr, group_uuid) or {}
    say(f"DR receiver status of the group: {json.dumps(replica.get('group'))}")
    assert [m["name"] for m in (replica.get("group") or {}).get("members", [])] \
        == list(GROUP.members), replica
    dr_text = ap.targetcli(dr, "/replication/replicas", "status").text.strip()
    say(f"dr: targetcli /replication/replicas status\n{dr_text}")
    info = ap.targetcli(dr, f"/replication/replicas/{GROUP.name}", "info", check=False)
    say(f"dr: targetcli /replication/replicas/{GROUP.name} info\n{info.text.strip()}")
    say(f"consistency group step: {time.monotonic() - t0:.0f} s in all, converged {took:.0f} s "
        f"after the host's last write")
    assert GROUP.name in dr_text and all(m in dr_text for m in GROUP.members), dr_text


# --------------------------------------------------------------------------- failover (last)


def test_demo_check_failover_to_the_promoted_dr_copy(chain, lab):
    text = demo.instructions(chain, lab)
    assert "targetcli /replication status" in text and chain.iqn in text
    demo.check(chain, say)


def test_failback_copies_back_only_what_changed(chain):
    """Issue 18 part 4 on real LIO, after the failover above: the host writes files on the
    promoted copy; the old primary, its target and backstore deleted, becomes the DR of it
    over its OLD mirror ('/replication/volumes/disk0 failback uuid=' with the uuid 'promote'
    printed), the DR replicates back ('/replication/volumes create ... peer=primary'), and
    only what changed is copied: the old mirror ends equal to the DR's byte for byte (checked
    by demo.failback), the host's files went back as journal records, the DR's resync marked
    far less than the volume, and the replica's status says so."""
    t0 = time.monotonic()
    done = demo.failback(chain, say)
    say(f"failback step: {time.monotonic() - t0:.0f} s in all, {done.seconds:.0f} s from the "
        f"DR's '/replication/volumes create' to equal mirrors")
    assert done.new_uuid != chain.volume_uuid
    tx, resync = done.transmitter, done.resync
    assert tx["role"] == "transmitter" and tx["in_sync"] and tx["volume_uuid"] == done.new_uuid, tx
    # The old primary took no write after the promotion (the host had left it): nothing of
    # its own to mark, and the DR overflowed nothing; the host's files went as records, and
    # that is all that crossed (no hash pass: nothing skipped either).
    assert resync["failback_marked_bytes"] == 0 and resync["total_bytes"] == 0, resync
    assert resync["done_bytes"] == 0 and resync["skipped_bytes"] == 0, resync
    assert done.host_bytes <= tx["bytes_sent"] <= chain.size // 8, (done.host_bytes, tx)
    assert done.failback["state"] == "done" and done.failback["extents"] == 0, done.failback
    text = done.replica_status
    assert text.startswith(f"{VOLUME} role:dr primary:dr"), text
    assert "replica:consistent in-sync" in text, text
    assert (f"    failback: copied: this site's old mirror holds the promoted image (seq "
            f"{done.failback['base_seq']}) plus 0 extents (0 B) written here since (0 journal "
            f"records); those and what dr changed were copied") in text, text
    a_backstore_over_the_replicas_mirror_is_refused(chain)


def a_backstore_over_the_replicas_mirror_is_refused(chain: Chain) -> None:
    """The old primary's mirror is its receiver's now: the admin's slip of serving it again
    ('/backstores/user:mirror create' over the old mirror= with a new journal) is refused with
    the reason (the handler's answer to targetcli's check before it creates), nothing is
    created, and the replica is left in sync byte for byte (docs/volume.md, "One writer per
    mirror")."""
    primary = chain.primary
    line = (f"/backstores/user:mirror create name={VOLUME}again size={chain.size} "
            f"cfgstring=mirror={chain.primary_mirror};journal={ap.STATE_DIR}/volumes/"
            f"{VOLUME}again.jnl")
    (result,) = ap.targetcli_lines(primary, [line], keep_going=True)
    say(f"{primary.name}: a backstore over the replica's mirror:\n  {line}\n  -> "
        f"{result.message or result.stdout.strip()}")
    assert result.refused and (f"mirror {chain.primary_mirror} is written by another process "
                               f"(a handler serving it as a LUN, or the DR receiver replicating "
                               f"into it)") in result.message, result.describe()
    listed = ap.targetcli_batch(primary, ["/backstores/user:mirror ls"])[-1].stdout
    assert f"{VOLUME}again" not in listed, listed
    assert primary.run(["test", "!", "-e", f"{ap.STATE_DIR}/volumes/{VOLUME}again.jnl"],
                       check=False).rc == 0, "the refused backstore created its journal"
    rp.wait_converged(chain.dr, primary, primary_mirror=chain.dr_mirror,
                      dr_mirror=chain.primary_mirror, size=chain.size, volume=VOLUME,
                      timeout=120, say=say)


FAILBACK_WRITES = 24        # the host's dependent writes on the DR: one record per LUN each


def test_a_consistency_group_fails_over_and_back_copying_only_what_changed(chain):
    """Issue 18 for a consistency group on real LIO, after the group test above: the DR
    promotes group db's replica and makes a group of its own over the promoted layout
    ('/replication/groups create ... promoted='), serves the members as LUNs 0 and 1 and the
    host makes dependent writes there; the old primary's receiver refuses the promoted copy
    ('failback-first') until the old primary, its target and member backstores deleted,
    becomes the DR of that group over its old members ('/replication/groups/db failback
    uuid='). Only the host's writes cross, as journal records
    (nothing marked, no hash pass), until every old member equals the DR's byte for byte and
    holds the host's new writes; the replica's status says so."""
    primary, dr, host = chain.primary, chain.dr, chain.host
    t0 = time.monotonic()
    promoted = grp.promote(dr, GROUP.name, peer=primary.name, journal_size=GROUP.journal_size,
                           log=say)
    assert list(promoted.mirrors) == list(GROUP.members), promoted.create_text
    assert promoted.at_seq == GROUP_WRITES * len(GROUP.members), promoted.promote_text
    assert all(f" size={GROUP.size_bytes} " in line for line in promoted.backstore_lines)

    # The DR serves the members at once (hosts cannot wait for the old site); its group's
    # transmitter connects to the old primary, whose receiver (provision = true) refuses the
    # promoted copy of a group it still serves as a primary: nothing is provisioned there.
    dr_iqn = ap.target_iqn(dr.name, GROUP.name)
    demo.shell(dr, promoted.serve_lines(dr_iqn, chain.chap), say)
    took = grp.host_writes_through(host, DR_ADDR, dr_iqn, chain.chap, len(GROUP.members),
                                   writes=FAILBACK_WRITES, slots=GROUP_SLOTS)
    say(f"host: {FAILBACK_WRITES} dependent writes on the DR's group {promoted.uuid} in "
        f"{took:.0f} s")
    sock = rp.transmitter_sock(GROUP.name)
    refused = rp.wait_for(
        f"{dr.name}'s group transmitter refused by the old primary until its failback",
        lambda: (s := rp.daemon_status(dr, sock) or {}).get("link", {}).get("state")
        == "refused:failback-first" and s, 120, detail=lambda: rp.status(dr, sock))
    say(f"dr: the group's transmitter before the failback: {refused['link']['last_error']}")
    assert rp.replica_of(primary, promoted.uuid) is None, "provisioned before the failback"
    out = grp.failback(primary, dr, GROUP, ap.target_iqn(primary.name, GROUP.name), promoted,
                       log=say)
    assert (f"Group {GROUP.name} is now the DR replica {GROUP.name} of group {promoted.uuid} "
            f"from peer dr ({DR_ADDR}:7700), over this site's old members (layout "
            f"{grp.GROUPS_DIR}/{GROUP.name}.group.json).") in out, out
    done = grp.wait_failed_back(primary, dr, GROUP, promoted, log=say)

    tx, resync, fb = done.transmitter, done.resync, done.failback
    records = FAILBACK_WRITES * len(GROUP.members)
    figures = ("failback_marked_bytes", "total_bytes", "done_bytes", "skipped_bytes")
    say(f"group failback: {time.monotonic() - t0:.0f} s in all, equal members {done.seconds:.0f} "
        f"s after the host's last write; the DR sent {tx.get('records_sent')} records "
        f"({tx.get('bytes_sent')} bytes; the host wrote {records} blocks), resync "
        f"{json.dumps({k: resync.get(k) for k in figures})}; the old primary's failback: "
        f"{json.dumps(fb)}")
    # the old primary took no write after the promotion: nothing of its own to mark, no
    # hash pass; the host's writes went as records, one per block, and nothing else
    assert resync.get("failback_marked_bytes") == 0 and resync.get("total_bytes") == 0, resync
    assert resync.get("done_bytes") == 0 and resync.get("skipped_bytes") == 0, resync
    assert tx["records_sent"] == records and tx["bytes_sent"] == records * 512, tx
    assert tx["acked_seq"] == records and tx["volume_uuid"] == promoted.uuid, tx
    assert fb["state"] == "done" and fb["extents"] == 0 and fb["records"] == 0, fb
    assert fb["base_seq"] == promoted.at_seq, fb
    for k, member in enumerate(GROUP.members):
        got = grp.read_slots(primary, GROUP.primary_mirror(member), GROUP_SLOTS)
        assert got == grp.expected_slots(FAILBACK_WRITES, GROUP_SLOTS, k), (member, got)
    text = done.status_text
    assert text.startswith(f"group {GROUP.name} role:dr primary:dr"), text
    assert "replica:consistent in-sync" in text, text
    assert (f"    failback: copied: this site's old mirror holds the promoted image (seq "
            f"{promoted.at_seq}) plus 0 extents (0 B) written here since (0 journal records); "
            f"those and what dr changed were copied") in text, text
