"""Journal space: what an old segment still holds, and where the held records begin.

The writer may enter (overwrite) a segment only when every record in it is reclaimable
(docs/internals.md: acknowledged by the peer *and* durable on the mirror), so it asks which
seq the segment's old content ends at. Space is reclaimed a segment at a time, so `usage`
counts the bytes held from the start of the tail's segment. Pure reads of the record area.
"""

from __future__ import annotations

from appliance.journal.placement import ChainPoint
from appliance.journal.records import RecordKind
from appliance.journal.scan import Area, Walker, segment_holding


def last_seq_in(area: Area, segment: int, head_seq: int) -> int | None:
    """The newest seq the old content of `segment` holds (None: nothing held), given the
    writer's next seq `head_seq`."""
    segment_blocks = area.sb.segment_blocks
    start = area.probe(segment)
    if start is None or start.kind != RecordKind.BATCH or start.first_seq >= head_seq:
        return None
    walker = Walker(area, ChainPoint(start.position, start.first_seq, start.prev_crc),
                    check_first_link=False, window_blocks=segment_blocks)
    if walker.next() is None:
        # A torn first record (metadata without its data): left by a power cut while
        # the writer entered this segment, which it only did once all here was free.
        return None
    following = area.probe((segment + 1) % area.sb.segment_count)
    if (following is not None and following.kind == RecordKind.BATCH
            and start.first_seq < following.first_seq <= head_seq):
        return following.first_seq - 1
    while walker.next() is not None and walker.point.block % segment_blocks:
        pass
    return walker.point.seq - 1


def tail_segment(area: Area, tail_seq: int, newest_segment: int) -> int:
    """The segment holding `tail_seq`; the oldest one (after the newest) if no intact
    segment start holds it."""
    found = segment_holding(area, tail_seq, newest_segment)
    return (found[0] if found and found[1] is not None
            else (newest_segment + 1) % area.sb.segment_count)
