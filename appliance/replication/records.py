"""A write as the journal holds it and as it travels on the link: the one conversion between
``appliance.journal`` records and wire records, used by both wings."""

from __future__ import annotations

from appliance.journal import OpKind, Record, WriteOp
from appliance.replication.wire import WireRecord

# (A lookup, not OpKind(kind): an enum call per record costs about a microsecond.)
_KINDS = {int(kind): kind for kind in OpKind}


def to_write_op(rec: WireRecord) -> WriteOp:
    try:
        kind = _KINDS[rec.kind]
    except KeyError:
        kind = OpKind(rec.kind)     # raises the enum's own ValueError
    return WriteOp(kind, rec.lba, rec.nblocks, rec.data)


def from_journal(rec: Record) -> WireRecord:
    """The journal record as it travels (its data not copied: bytes, or a read-only view)."""
    return WireRecord(rec.seq, rec.timestamp_ns, int(rec.op.kind), rec.op.lba, rec.op.nblocks,
                      rec.op.data)
