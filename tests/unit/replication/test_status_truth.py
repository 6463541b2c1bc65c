"""The rules status derives from (docs/protocol.md, "What status derives from"): the DR's
verdict from the primary's reports, the transmitter's files from the journal, the recovery
point estimate."""

import time
import uuid

import pytest

from appliance.journal import VolumeFiles
from appliance.replication.dr.sync_state import BadReport, PrimaryReport, dr_sync_status
from appliance.replication.primary.volume_watch import FilesMismatch, OldestUnacked, resolve_files

REPLICA = {"applied_seq": 100, "durable_seq": 100, "state": "consistent"}


def report(**changes) -> PrimaryReport:
    fields = {"head_seq": 100, "volume_state": "journaling", "dirty_bytes": 0, "lag_bytes": 0,
              "logging_since": None, "recovery_point_age_s": 0.0}
    fields.update(changes)
    return PrimaryReport.from_dict(fields, time.monotonic())


def verdict(replica=REPLICA, link="connected", rep=None, stale_after_s=5.0) -> dict:
    return dr_sync_status(replica, link, time.time(), rep, stale_after_s)


def test_in_sync_only_with_a_live_link_and_a_fresh_report_of_nothing_owed():
    assert verdict(rep=report())["in_sync"] is True
    assert verdict(rep=report())["lag_bytes"] == 0


# (Reports are made when the case runs: one made at collection could be stale by then.)
@pytest.mark.parametrize(("case", "kwargs", "words"), [
    ("no primary", lambda: {"link": "disconnected", "rep": None}, "no primary connected"),
    ("link lost after a good report", lambda: {"link": "disconnected", "rep": report()},
     "no primary connected"),
    ("no report yet", lambda: {"rep": None}, "first state report"),
    ("dirty regions", lambda: {"rep": report(volume_state="logging-to-bitmap",
                                             dirty_bytes=65536, lag_bytes=65536)},
     "dirty regions"),
    ("records not applied", lambda: {"rep": report(head_seq=140, lag_bytes=4096)},
     "40 records"),
    ("resync", lambda: {"replica": {**REPLICA, "state": "inconsistent"}, "rep": report()},
     "inconsistent"),
    ("promoted", lambda: {"replica": {**REPLICA, "state": "promoted"}, "rep": report()},
     "promoted"),
])
def test_every_path_where_the_primary_holds_more_says_behind(case, kwargs, words):
    got = verdict(**kwargs())
    assert got["in_sync"] is False, case
    assert words in got["behind_reason"], (case, got)


def test_a_stale_report_is_unknown_never_zero():
    old = PrimaryReport.from_dict({"head_seq": 100, "volume_state": "journaling",
                                   "dirty_bytes": 0, "lag_bytes": 0},
                                  time.monotonic() - 60)
    got = verdict(rep=old)
    assert got["in_sync"] is False and got["lag_bytes"] is None
    assert "s old" in got["behind_reason"]


def test_lag_counts_the_primarys_head_and_is_unknown_without_a_link():
    got = verdict(link="disconnected", rep=report(head_seq=150, lag_bytes=9999))
    assert got["lag_records"] == 50 and got["lag_bytes"] is None


@pytest.mark.parametrize("bad", [[], {"head_seq": "1"}, {"head_seq": 1, "volume_state": 3},
                                 {"head_seq": True, "volume_state": "journaling",
                                  "dirty_bytes": 0, "lag_bytes": 0}])
def test_a_malformed_report_is_refused(bad):
    with pytest.raises(BadReport):
        PrimaryReport.from_dict(bad, 0.0)


def test_files_come_from_the_journal_and_a_configuration_naming_others_is_refused(tmp_path):
    (tmp_path / "mirror").touch()
    (tmp_path / "bitmap").touch()
    published = VolumeFiles(str(tmp_path / "mirror"), str(tmp_path / "bitmap"))
    assert resolve_files(published, None, None, "cfg") == published
    assert resolve_files(published, tmp_path / "." / "mirror", None, "cfg") == published
    with pytest.raises(FilesMismatch, match="'bitmap' is .* remove 'bitmap'"):
        resolve_files(published, None, tmp_path / "other", "cfg")
    assert resolve_files(None, tmp_path / "m", tmp_path / "b", "cfg") == \
        VolumeFiles(str(tmp_path / "m"), str(tmp_path / "b"))
    assert resolve_files(None, None, None, "cfg") is None


def test_the_oldest_unacknowledged_write_is_never_reported_younger_than_seen():
    oldest = OldestUnacked()
    oldest.observe(0, 0, now=10.0)
    assert oldest.since() is None
    oldest.observe(5, 0, now=11.0)
    oldest.observe(9, 0, now=12.0)
    assert oldest.since() == 11.0
    oldest.observe(9, 5, now=13.0)          # seqs 1-5 acknowledged: 6-9 were seen at 12.0
    assert oldest.since() == 12.0
    oldest.observe(9, 9, now=14.0)
    assert oldest.since() is None
    for i in range(1, 3000):                # a long outage: samples merge, never get younger
        oldest.observe(i, 0, now=100.0 + i)
    assert len(oldest._samples) <= OldestUnacked.MAX_SAMPLES + 1
    assert oldest.since() == 101.0
    oldest.observe(2999, 1500, now=5000.0)
    assert oldest.since() <= 100.0 + 1501


def test_the_watch_reports_files_it_cannot_read_yet_instead_of_failing(tmp_path):
    """Before the handler has written the bitmap's header (or the journal at all), the
    transmitter keeps running and its status says why the volume is unknown."""
    from appliance.journal import Journal
    from appliance.replication.primary.volume_watch import VolumeWatch

    vol = uuid.UUID(int=7)
    watch = VolumeWatch(tmp_path / "journal", vol)
    assert "FileNotFoundError" in watch.poll(0, None, 1 << 20).error
    Journal.create(tmp_path / "journal", size=2 << 20, volume_uuid=vol, volume_block_size=512,
                   volume_blocks=2048).close()
    (tmp_path / "bitmap").write_bytes(bytes(8192))          # created, no header yet
    files = VolumeFiles(str(tmp_path / "mirror"), str(tmp_path / "bitmap"))
    view = watch.poll(0, files, 1 << 20)
    assert view.volume_state == "unknown" and "no valid header" in view.error
    watch.close()


def test_a_report_with_unknown_lag_bytes_is_taken_and_the_primarys_reason_is_passed_on():
    """A primary whose journal cannot be read yet sends lag_bytes null (unknown): taken, not
    a broken link; the DR then says behind in the primary's own words too."""
    rep = PrimaryReport.from_dict({"head_seq": 140, "volume_state": "journaling",
                                   "dirty_bytes": 0, "lag_bytes": None,
                                   "behind_reason": "shipping is paused by the admin"},
                                  time.monotonic())
    got = verdict(rep=rep)
    assert got["in_sync"] is False and got["lag_bytes"] is None
    assert "40 records" in got["behind_reason"]
    assert "the primary says: shipping is paused by the admin" in got["behind_reason"]
    with pytest.raises(BadReport):
        PrimaryReport.from_dict({"head_seq": 1, "volume_state": "journaling", "dirty_bytes": 0,
                                 "lag_bytes": 0, "behind_reason": 7}, 0.0)
