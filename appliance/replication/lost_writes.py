"""The lost-write report of an old primary (docs/failover.md, "What a failover lost").

When the DR was promoted, its copy holds this primary's writes up to the seq it was promoted
at; every write this primary's journal holds beyond that seq never became part of the new
primary's image. The first time a transmitter meets the promoted DR (REFUSE ``promoted`` with
``promoted_at_seq``), it lists them from its own journal before anything can overwrite them (a
failback copies the new primary's image over this volume): seq, the primary's time, kind and
LBA range of each, and the dirty regions written while the volume logged to its bitmap (those
have no seq). Written as JSON and as a readable table, and with ``export_data`` also the data
of every WRITE / WRITE SAME as a file an admin can inspect or replay (offsets in the JSON).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.journal import JournalReader, OpKind, RecordsGone

KIND_NAMES = {OpKind.WRITE: "WRITE", OpKind.WRITE_SAME: "WRITE SAME", OpKind.UNMAP: "UNMAP"}
READ_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class LostWrite:
    seq: int
    time: float             # the primary's clock, seconds since the epoch
    kind: str
    lba: int
    blocks: int
    data_offset: int | None = None   # in the exported data file (None: not exported / UNMAP)
    data_bytes: int = 0


@dataclass
class LostWriteReport:
    volume: str                      # the volume's name (backstore), else its uuid
    volume_uuid: str
    block_size: int
    promoted_at_seq: int             # the DR's image holds every write up to this
    promoted_by: str                 # the receiver that refused us as promoted
    head_seq: int                    # the newest seq this journal held
    writes: list[LostWrite] = field(default_factory=list)
    reclaimed: tuple[int, int] | None = None   # seqs gone from this journal (see collect)
    dirty_regions: list[tuple[int, int]] = field(default_factory=list)   # (byte offset, len)
    written_at: float = 0.0
    data_file: str | None = None

    @property
    def lost_bytes(self) -> int:
        return sum(w.blocks for w in self.writes) * self.block_size

    def summary(self, paths: dict[str, str]) -> dict:
        """What status shows."""
        return {"promoted_at_seq": self.promoted_at_seq, "promoted_by": self.promoted_by,
                "writes": len(self.writes),
                "first_seq": self.writes[0].seq if self.writes else None,
                "last_seq": self.writes[-1].seq if self.writes else None,
                "bytes": self.lost_bytes, "dirty_regions": len(self.dirty_regions),
                "reclaimed": list(self.reclaimed) if self.reclaimed else None,
                "written_at": self.written_at, **paths}


def collect(reader: JournalReader, report: LostWriteReport, *,
            data_out: Path | None = None) -> LostWriteReport:
    """Fill ``report.writes`` with every record after ``promoted_at_seq`` the journal holds.
    Records the journal already reclaimed (a DR that acknowledged them, then was rolled back
    or invalidated before its promotion) are named as a range in ``report.reclaimed``."""
    start = report.promoted_at_seq + 1
    data = _private(data_out, "wb") if data_out is not None else None
    try:
        for record in _records(reader, start, report):
            op = record.op
            offset = None
            nbytes = len(op.data) if op.kind is not OpKind.UNMAP else 0
            if data is not None and nbytes:
                offset = data.tell()
                data.write(op.data)
            report.writes.append(LostWrite(
                record.seq, record.timestamp_ns / 1e9, KIND_NAMES.get(op.kind, str(op.kind)),
                op.lba, op.nblocks, offset, nbytes))
        if data is not None:
            data.flush()
            os.fsync(data.fileno())
    finally:
        if data is not None:
            data.close()
    return report


def _records(reader: JournalReader, start: int, report: LostWriteReport) -> Iterator:
    seq = start
    while True:
        try:
            batch = reader.read(seq, READ_BYTES)
        except RecordsGone:
            if report.reclaimed is None:
                anchor = reader.writer_checkpoint()
                oldest = max(min(reader.acked_seq, anchor.mirror_durable_seq) + 1,
                             reader.sb.first_seq)
                report.reclaimed = (seq, oldest - 1)
                seq = oldest
                continue
            raise
        if not batch:
            return
        for record in batch:
            report.head_seq = max(report.head_seq, record.seq)
            yield record
        seq = batch[-1].seq + 1


def write(report: LostWriteReport, directory: Path) -> dict[str, str]:
    """``<volume>-promoted-at-<seq>.json`` and ``.txt`` in ``directory`` (made durable: this
    is the only record of what was lost once a failback overwrites the volume)."""
    base = stem(directory, report.volume, report.promoted_at_seq)
    paths = {"json": str(base.with_suffix(".json")), "text": str(base.with_suffix(".txt"))}
    body = asdict(report)
    body["lost_bytes"] = report.lost_bytes
    write_durably(Path(paths["json"]), json.dumps(body, indent=1) + "\n")
    write_durably(Path(paths["text"]), table(report))
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return paths


def stem(directory: Path, volume: str, promoted_at_seq: int) -> Path:
    return directory / f"lost-writes-{volume}-promoted-at-{promoted_at_seq}"


def existing(directory: Path, volume: str, promoted_at_seq: int) -> dict | None:
    """The summary of a report written before (a restarted transmitter): the journal may
    have moved on since, so it is never collected twice."""
    path = stem(directory, volume, promoted_at_seq).with_suffix(".json")
    try:
        body = json.loads(path.read_text())
        writes = [LostWrite(**w) for w in body.pop("writes")]
        body.pop("lost_bytes", None)
        report = LostWriteReport(**{**body, "writes": writes})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return report.summary({"json": str(path), "text": str(path.with_suffix(".txt"))})


def write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with _private(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _private(path: Path, mode: str):
    """A file only root reads (in a directory only root enters): the lost writes are the
    application's data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), mode)


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def table(report: LostWriteReport) -> str:
    """The report as an admin reads it."""
    bs = report.block_size
    lines = [
        f"Writes of volume {report.volume} ({report.volume_uuid}) that the DR never had",
        f"The DR ({report.promoted_by}) was promoted with this volume's image up to seq "
        f"{report.promoted_at_seq}; this journal held writes up to seq {report.head_seq}.",
        f"{len(report.writes)} writes, {report.lost_bytes} bytes"
        + (f"; data in {report.data_file}" if report.data_file else "") + ".",
    ]
    if report.reclaimed:
        lines.append(f"Seqs {report.reclaimed[0]}..{report.reclaimed[1]} were reclaimed from "
                     "this journal (the DR had acknowledged them before it was rolled back): "
                     "not listed.")
    if report.dirty_regions:
        lines.append(f"Also {len(report.dirty_regions)} regions written while the volume logged "
                     "to its dirty bitmap (no seq, no time): byte offset and length below.")
    lines += ["", f"{'seq':>12}  {'time (UTC, primary clock)':<23}  {'kind':<10}  "
                  f"{'lba':>12}  {'blocks':>7}  {'bytes':>9}"]
    for w in report.writes:
        lines.append(f"{w.seq:>12}  {_when(w.time):<23}  {w.kind:<10}  {w.lba:>12}  "
                     f"{w.blocks:>7}  {w.blocks * bs:>9}")
    for offset, length in report.dirty_regions:
        lines.append(f"{'-':>12}  {'-':<23}  {'dirty':<10}  {offset // bs:>12}  "
                     f"{length // bs:>7}  {length:>9}")
    return "\n".join(lines) + "\n"
