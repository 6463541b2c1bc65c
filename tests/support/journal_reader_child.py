"""A transmitter stand-in for cross-process journal tests.

    python -m tests.support.journal_reader_child JOURNAL LAST_SEQ DEADLINE_S

Reads every record up to LAST_SEQ with a JournalReader while another process appends,
checks each write's bytes against `expected_op`, acknowledges as it goes, and prints
one JSON line: {"read": n, "acked": seq, "batches": k}. Exits 1 (with a message on
stderr) if the records are wrong or the deadline passes.
"""

from __future__ import annotations

import json
import sys
import time

from appliance.journal import JournalReader, OpKind, WriteOp
from tests.support.journaling import make_op


def expected_op(seq: int) -> WriteOp:
    kind = (OpKind.WRITE, OpKind.WRITE_SAME, OpKind.UNMAP)[seq % 3]
    return make_op(kind, seq % 500, 1 + seq % 9, 512, seq)


def main(path: str, last_seq: int, deadline_s: float) -> int:
    deadline = time.monotonic() + deadline_s
    read = batches = 0
    with JournalReader(path) as reader:
        next_seq = reader.acked_seq + 1
        while next_seq <= last_seq:
            if time.monotonic() > deadline:
                print(f"reader timed out at seq {next_seq} of {last_seq}", file=sys.stderr)
                return 1
            records = reader.read(next_seq, 64 * 1024)
            if not records:
                time.sleep(0.002)  # caught up with the writer: poll again
                continue
            batches += 1
            for record in records:
                want = expected_op(record.seq)
                got = record.op
                if record.seq != next_seq or (got.kind, got.lba, got.nblocks, got.data) != (
                        want.kind, want.lba, want.nblocks, bytes(want.data)):
                    print(f"wrong record at seq {record.seq} (expected {next_seq})",
                          file=sys.stderr)
                    return 1
                next_seq += 1
                read += 1
            reader.acknowledge(next_seq - 1)
        print(json.dumps({"read": read, "acked": reader.acked_seq, "batches": batches}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
