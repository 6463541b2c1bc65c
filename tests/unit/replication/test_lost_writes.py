"""The lost-write report: from a real journal, its table, its files, where it goes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from test_repl_config import tx

from appliance.journal import Journal, JournalReader, OpKind, WriteOp
from appliance.replication import lost_writes
from appliance.replication.config import DEFAULT_REPORT_DIR, transmitter_config

VOL = uuid.UUID(int=7)


def journal_with(path: Path, ops: list[WriteOp]) -> None:
    journal = Journal.create(path, size=4 << 20, volume_uuid=VOL, volume_block_size=512,
                             volume_blocks=4096)
    try:
        for op in ops:
            journal.append([op])
        journal.sync()
    finally:
        journal.close()


def report(at: int) -> lost_writes.LostWriteReport:
    return lost_writes.LostWriteReport(volume="vol1", volume_uuid=str(VOL), block_size=512,
                                       promoted_at_seq=at, promoted_by="dr-site", head_seq=at,
                                       written_at=1.0)


def test_the_report_lists_every_record_after_the_promotion_with_its_data(tmp_path):
    ops = [WriteOp(OpKind.WRITE, 8 * i, 2, bytes([i]) * 1024) for i in range(1, 6)]
    ops.insert(3, WriteOp(OpKind.UNMAP, 100, 16, b""))
    journal_with(tmp_path / "journal", ops)
    reader = JournalReader(tmp_path / "journal", volume_uuid=VOL)
    try:
        got = lost_writes.collect(reader, report(3), data_out=tmp_path / "lost.data")
    finally:
        reader.close()
    assert [(w.seq, w.kind, w.lba, w.blocks) for w in got.writes] == [
        (4, "UNMAP", 100, 16), (5, "WRITE", 32, 2), (6, "WRITE", 40, 2)]
    assert got.head_seq == 6 and got.lost_bytes == 20 * 512 and got.reclaimed is None
    data = (tmp_path / "lost.data").read_bytes()
    assert data == bytes([4]) * 1024 + bytes([5]) * 1024
    assert [w.data_offset for w in got.writes] == [None, 0, 1024]
    assert os.stat(tmp_path / "lost.data").st_mode & 0o777 == 0o600

    paths = lost_writes.write(got, tmp_path / "reports")
    body = json.loads(Path(paths["json"]).read_text())
    assert body["lost_bytes"] == 20 * 512 and len(body["writes"]) == 3
    text = Path(paths["text"]).read_text()
    assert "promoted with this volume's image up to seq 3" in text
    assert "held writes up to seq 6" in text and "3 writes, 10240 bytes" in text
    assert "UNMAP" in text and text.count("\n") == 8
    # A restarted transmitter reads it back instead of collecting again.
    again = lost_writes.existing(tmp_path / "reports", "vol1", 3)
    assert again == got.summary(paths)
    assert again["first_seq"] == 4 and again["last_seq"] == 6 and again["writes"] == 3
    assert lost_writes.existing(tmp_path / "reports", "vol1", 4) is None


def test_nothing_lost_is_said_plainly(tmp_path):
    journal_with(tmp_path / "journal", [WriteOp(OpKind.WRITE, 0, 1, bytes(512))])
    reader = JournalReader(tmp_path / "journal", volume_uuid=VOL)
    try:
        got = lost_writes.collect(reader, report(1))
    finally:
        reader.close()
    assert got.writes == [] and "0 writes, 0 bytes." in lost_writes.table(got)


def test_reports_go_to_report_dir_beside_the_journal_or_to_the_default():
    assert transmitter_config(tx(report_dir="/srv/reports")).lost_write_dir == Path(
        "/srv/reports")
    cfg = transmitter_config(tx(journal="/var/lib/appliance/j/vol1.jnl"))
    assert cfg.lost_write_dir == Path("/var/lib/appliance/j")
    assert transmitter_config(tx(journal="/dev/vg0/jnl")).lost_write_dir == DEFAULT_REPORT_DIR
