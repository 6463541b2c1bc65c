"""The transmitter's JournalReader in its own process, while the writer appends.

The journal is small, so the writer can only go on because the other process reads,
acknowledges (persisted in its checkpoint slot) and so frees space.
"""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from appliance.journal import Journal, JournalFull, JournalReader
from tests.support.journal_reader_child import expected_op

RECORDS = 600
TIMEOUT_S = 60


def test_reader_process_follows_writer_and_frees_space(tmp_path):
    path = tmp_path / "journal"
    journal = Journal.create(path, size=(8 + 8 * 16) * 4096, volume_uuid=uuid.uuid4(),
                             volume_block_size=512, volume_blocks=1000,
                             segment_size=16 * 4096)
    seq = 1
    while True:  # fill the journal before the reader starts: it must free space to go on
        batch = [expected_op(s) for s in range(seq, seq + 5)]
        try:
            got = journal.append(batch)
        except JournalFull:
            break
        journal.sync()
        journal.set_mirror_durable(got[-1])
        seq = got[-1] + 1
    assert seq < RECORDS // 2
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.journal_reader_child", str(path), str(RECORDS),
         str(TIMEOUT_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[3])
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while seq <= RECORDS:
            batch = [expected_op(s) for s in range(seq, min(seq + 5, RECORDS + 1))]
            try:
                got = journal.append(batch)
            except JournalFull:
                assert time.monotonic() < deadline, "the reader process never freed space"
                assert child.poll() is None, child.stderr.read()
                time.sleep(0.002)  # wait for the other process to acknowledge
                continue
            assert got.start == seq
            journal.sync()
            journal.set_mirror_durable(got[-1])
            seq = got[-1] + 1
        out, err = child.communicate(timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    summary = json.loads(out)
    assert summary["read"] == RECORDS and summary["acked"] == RECORDS
    assert journal.usage().acked_seq == RECORDS
    journal.close()
    with JournalReader(path) as reader:
        assert reader.acked_seq == RECORDS
