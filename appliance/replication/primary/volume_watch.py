"""What the primary holds that the DR may lack, read from the volume's own files.

The transmitter's status must never say "in sync" while the primary holds writes the DR lacks
(docs/protocol.md, "What status derives from"). Those writes are in two places: journal
records above the peer's acknowledged seq, and chunks marked in the dirty-region bitmap
while the writer logs to it (a journal overflow, a full copy). ``VolumeWatch.poll`` reads
both from the files the writer (the handler, another process) keeps, without touching its
state: the journal's published head and the bitmap's header and bits.

The mirror and bitmap are found from the journal itself (its volume-files slot), so that a
transmitter can always resync; ``resolve_files`` refuses a configuration naming other files.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance import storage
from appliance.journal import JournalError, JournalReader, VolumeFiles
from appliance.volume.errors import VolumeError
from appliance.volume.resync import ResyncSource, region_extent

JOURNALING = "journaling"
LOGGING_TO_BITMAP = "logging-to-bitmap"
# What reading the volume's files may raise while the handler has not created them yet, is
# creating them, or they are damaged: reported in status, never fatal to the transmitter.
UNREADABLE = (OSError, ValueError, JournalError, VolumeError)


class FilesMismatch(ValueError):
    """The transmitter's configuration names other mirror/bitmap files than the volume."""


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def resolve_files(published: VolumeFiles | None, mirror: Path | None, bitmap: Path | None,
                  where: str) -> VolumeFiles | None:
    """The volume's mirror and bitmap: as its journal names them (the writer publishes them
    at every open); the configured ``mirror``/``bitmap`` only for a journal written by an
    older handler that names none. A configuration naming other files is refused."""
    if published is not None:
        for key, configured, actual in (("mirror", mirror, published.mirror),
                                        ("bitmap", bitmap, published.bitmap)):
            if configured is not None and not _same_file(configured, actual):
                raise FilesMismatch(
                    f"{where}: {key!r} is {str(configured)!r} but the volume's journal names "
                    f"{actual!r} (the handler's {key}); remove {key!r} from the transmitter "
                    f"configuration: the transmitter finds it from the journal")
        return published
    if mirror is not None and bitmap is not None:
        return VolumeFiles(str(mirror), str(bitmap))
    return None


@dataclass(frozen=True, slots=True)
class VolumeView:
    """The volume as last read; ``volume_state`` is "unknown" until a read succeeds."""

    volume_state: str = "unknown"
    dirty_bytes: int = 0
    logging_since: float | None = None      # epoch seconds
    head_seq: int = 0                       # newest seq the writer published as durable
    backlog_bytes: int = 0                  # journal bytes from the acked seq to that head
    error: str | None = None                # why the files could not be read
    journal_paused: bool = False            # the admin paused journaling (docs/volume.md)


class VolumeWatch:
    """Reads the volume's journal head and bitmap; one instance per transmitter, used from
    a worker thread (its own journal reader and bitmap handle: it never shares the
    session's)."""

    def __init__(self, journal: Path, volume_uuid: uuid.UUID) -> None:
        self.journal = journal
        self.volume_uuid = volume_uuid
        self._reader: JournalReader | None = None
        self._bitmap: tuple[str, ResyncSource, storage.BlockIO] | None = None

    def published_files(self) -> VolumeFiles | None:
        return self._journal_reader().volume_files()

    def poll(self, acked_seq: int, files: VolumeFiles | None, volume_bytes: int) -> VolumeView:
        try:
            reader = self._journal_reader()
            head = reader.writer_checkpoint().head_seq - 1
            backlog = reader.backlog_bytes(acked_seq + 1)
            if files is None:
                return VolumeView(head_seq=head, backlog_bytes=backlog,
                                  error="the volume's journal names no mirror and bitmap")
            snap = self._source(files.bitmap).snapshot()
        except UNREADABLE as err:
            self.close()
            return VolumeView(error=f"{type(err).__name__}: {err}")
        dirty = sum(region_extent(snap.chunk_size, first, count, volume_bytes)[1]
                    for first, count in snap.runs)
        return VolumeView(
            volume_state=LOGGING_TO_BITMAP if snap.logging else JOURNALING,
            dirty_bytes=max(0, dirty),
            logging_since=snap.logging_since_ns / 1e9 if snap.logging_since_ns else None,
            head_seq=head, backlog_bytes=backlog, journal_paused=snap.journal_paused)

    def dirty_regions(self, files: VolumeFiles, volume_bytes: int) -> list[tuple[int, int]]:
        """(byte offset, length) of every dirty region of the bitmap: written, not shipped."""
        snap = self._source(files.bitmap).snapshot()
        return [region_extent(snap.chunk_size, first, count, volume_bytes)
                for first, count in snap.runs]

    def _journal_reader(self) -> JournalReader:
        if self._reader is None:
            self._reader = JournalReader(self.journal, volume_uuid=self.volume_uuid)
        return self._reader

    def _source(self, bitmap: str) -> ResyncSource:
        if self._bitmap is None or self._bitmap[0] != bitmap:
            self._close_bitmap()
            io = storage.open_file(bitmap)
            try:
                self._bitmap = (bitmap, ResyncSource(io), io)
            except BaseException:
                io.close()
                raise
        return self._bitmap[1]

    def _close_bitmap(self) -> None:
        if self._bitmap is not None:
            self._bitmap[2].close()
            self._bitmap = None

    def close(self) -> None:
        self._close_bitmap()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class OldestUnacked:
    """When the oldest write the peer has not acknowledged was first seen: the recovery
    point while records wait unshipped (a lost link, a pause), when no record timestamp is
    at hand. Samples (head seq, first seen) at each poll; the estimate is late by at most
    one poll interval."""

    MAX_SAMPLES = 1024      # beyond, pairs merge: coarser, and never younger than the truth

    def __init__(self) -> None:
        self._samples: list[tuple[int, float]] = []

    def observe(self, head_seq: int, acked_seq: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._samples = [s for s in self._samples if s[0] > acked_seq]
        if head_seq > acked_seq and (not self._samples or self._samples[-1][0] < head_seq):
            self._samples.append((head_seq, now))
        if len(self._samples) > self.MAX_SAMPLES:
            # A merged pair keeps the later head and the earlier time: its writes may look
            # older than they are, never younger (the recovery point is not understated).
            pairs = zip(self._samples[::2], self._samples[1::2], strict=False)
            merged = [(later[0], earlier[1]) for earlier, later in pairs]
            if len(self._samples) % 2:
                merged.append(self._samples[-1])
            self._samples = merged

    def since(self) -> float | None:
        """Epoch seconds of the oldest unacknowledged write seen, None if none."""
        return self._samples[0][1] if self._samples else None
