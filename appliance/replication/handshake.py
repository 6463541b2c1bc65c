"""The handshake: HELLO (primary) and WELCOME / REFUSE (receiver), and the admission rules.

``admit`` is a pure function: given what the primary claims, what its certificate proves and
what the receiver knows about the volume, it either returns the WELCOME to send or raises
``Refused`` with a code and a message that says what is wrong. The receiver logs the message
and sends it back in a REFUSE frame, so both ends explain the refusal in the same words.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field

PROTOCOL_VERSION = 1
COMPRESSIONS = ("zstd",)
MAX_NAME = 255                  # characters of a HELLO's volume name


class HandshakeError(ValueError):
    """A HELLO or WELCOME that is not well formed."""


class Refused(Exception):
    """The receiver refuses this primary/volume. ``code`` is stable, ``reason`` is for humans,
    ``details`` machine-readable facts sent with the REFUSE (``promoted_at_seq``)."""

    def __init__(self, code: str, reason: str, details: dict | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.details = details or {}


def _get(d: dict, key: str, typ: type | tuple[type, ...]):
    if key not in d:
        raise HandshakeError(f"handshake field {key!r} missing")
    value = d[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise HandshakeError(f"handshake field {key!r} has the wrong type: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Hello:
    identity: str              # the primary appliance's identity (its certificate name)
    volume_uuid: uuid.UUID     # volume or consistency group
    size_bytes: int
    block_size: int
    generation: int            # epoch; raised on every role change / full resync
    first_seq: int             # lowest seq the primary can still send (its acked seq + 1)
    compression: tuple[str, ...] = ()
    protocol: int = PROTOCOL_VERSION
    # The volume's name on the primary (its backstore), for the DR's status and provisioning;
    # "" when the primary has none (older transmitters send no name at all).
    name: str = ""
    # The image this primary's journal starts from when it is not a blank disk: a promoted
    # replica's (``PromotionBase.to_dict()``; docs/failover.md, minimal failback). A receiver
    # meeting it at first contact must hold that image (the old primary, which proves it) or
    # take a full copy: records from seq 1 alone would miss it.
    base: dict | None = None
    # What this primary changed since ``base`` ({"head_seq", "dirty_bytes"}), for the DR's
    # report of a split brain.
    changed: dict | None = None
    # A consistency group (docs/groups.md): {"name", "align_blocks", "members": [{"name",
    # "offset_blocks", "num_blocks"}]}, its members in the volume's address space. The DR
    # keeps one mirror per member, laid out the same way.
    group: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["volume_uuid"] = str(self.volume_uuid)
        d["compression"] = list(self.compression)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Hello:
        try:
            vol = uuid.UUID(_get(d, "volume_uuid", str))
        except ValueError as err:
            raise HandshakeError(f"volume_uuid is not a uuid: {d.get('volume_uuid')!r}") from err
        comp = _get(d, "compression", list)
        if not all(isinstance(c, str) for c in comp):
            raise HandshakeError("compression must be a list of names")
        hello = cls(identity=_get(d, "identity", str), volume_uuid=vol,
                    size_bytes=_get(d, "size_bytes", int), block_size=_get(d, "block_size", int),
                    generation=_get(d, "generation", int), first_seq=_get(d, "first_seq", int),
                    compression=tuple(comp), protocol=_get(d, "protocol", int),
                    name=_get(d, "name", str) if "name" in d else "",
                    base=_get(d, "base", dict) if d.get("base") is not None else None,
                    changed=_get(d, "changed", dict) if d.get("changed") is not None else None,
                    group=_get(d, "group", dict) if d.get("group") is not None else None)
        if len(hello.name) > MAX_NAME or any(not c.isprintable() for c in hello.name):
            raise HandshakeError(f"handshake field 'name' must be at most {MAX_NAME} printable "
                                 f"characters: {hello.name!r}")
        if hello.first_seq < 1 or hello.size_bytes <= 0 or hello.block_size <= 0:
            raise HandshakeError(f"impossible handshake values: {hello}")
        return hello


@dataclass(frozen=True, slots=True)
class Welcome:
    identity: str              # the receiver's identity
    last_seq: int              # highest seq durable on the receiver for this volume
    applied_seq: int           # highest seq applied to its mirror
    compression: str | None    # chosen from the primary's offer, or None
    heartbeat_s: float
    inconsistent: bool = False  # an interrupted resync must be finished first
    # The receiver lacks history the primary's journal no longer holds (a new or rolled-back
    # DR): the primary must mark every chunk and resync them all. Repeated at every contact
    # until RESYNC_BEGIN arrives.
    full_copy: bool = False
    # The receiver takes a full copy's jump in sequence (RESYNC_BEGIN's superseded_to_seq,
    # ``check_supersede``). Absent from older receivers: the transmitter then ships the
    # records before the copy, as they expect.
    supersede: bool = False
    # The receiver takes PRIMARY_STATE frames (its status then says whether it is behind the
    # primary). Absent from older receivers: the transmitter then sends none.
    primary_state: bool = False
    # Minimal failback: the receiver holds the primary's ``base`` image plus these extents
    # (lba, blocks) it wrote beyond it; the primary marks them dirty and copies them after its
    # records. Repeated at every contact until RESYNC_BEGIN arrives. None: no failback.
    failback_extents: list | None = None
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Welcome:
        comp = d.get("compression")
        if comp is not None and comp not in COMPRESSIONS:
            raise HandshakeError(f"receiver chose unknown compression {comp!r}")
        hb = _get(d, "heartbeat_s", (int, float))
        return cls(identity=_get(d, "identity", str), last_seq=_get(d, "last_seq", int),
                   applied_seq=_get(d, "applied_seq", int), compression=comp,
                   heartbeat_s=float(hb), inconsistent=bool(d.get("inconsistent", False)),
                   full_copy=bool(d.get("full_copy", False)),
                   supersede=d.get("supersede") is True,
                   primary_state=d.get("primary_state") is True,
                   failback_extents=_extents(d.get("failback_extents")),
                   protocol=_get(d, "protocol", int))


def _extents(value: object) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(e, list | tuple) and len(e) == 2
            and all(type(v) is int and v >= 0 for v in e) for e in value):
        raise HandshakeError("failback_extents must be a list of [lba, blocks]")
    return [(lba, n) for lba, n in value]


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    """What the receiver is configured to accept for one volume."""

    uuid: uuid.UUID
    size_bytes: int
    block_size: int
    allowed_primaries: frozenset[str] = field(default_factory=frozenset)  # empty: any, bind first


@dataclass(frozen=True, slots=True)
class VolumeBinding:
    """What the receiver has persisted about a volume (``None`` fields before first contact)."""

    primary: str | None
    generation: int
    last_seq: int | None       # None: no replica journal yet
    applied_seq: int
    inconsistent: bool = False
    full_copy: bool = False    # waiting for the full copy to begin (see Welcome.full_copy)
    # Set once the DR site promoted this replica (failover): the seq of the image it was
    # promoted with. Its mirror is a primary's LUN from then on and takes no records.
    promoted_at_seq: int | None = None
    # A failback under way: the extents this replica holds beyond the primary's base, until
    # RESYNC_BEGIN (see Welcome.failback_extents).
    failback_extents: list | None = None


def _check_geometry(hello: Hello, spec: VolumeSpec, binding: VolumeBinding) -> None:
    """Same block size, and the same size unless the bound primary resized the volume online
    (the replica follows). Not while the replica is inconsistent and shrinking: the undo log
    may hold old contents of the blocks a shrink would cut."""
    have = f"primary has {hello.size_bytes} bytes in {hello.block_size}-byte blocks"
    bound = binding.primary == hello.identity
    if hello.block_size != spec.block_size or (hello.size_bytes != spec.size_bytes
                                               and not bound):
        raise Refused("geometry", f"volume {spec.uuid}: {have}, receiver expects "
                                  f"{spec.size_bytes} bytes in {spec.block_size}-byte blocks; "
                                  f"fix size_bytes/block_size of this volume in one of the "
                                  f"two configurations")
    if hello.size_bytes < spec.size_bytes and binding.inconsistent:
        raise Refused("geometry", f"volume {spec.uuid}: {have} but the replica holds "
                                  f"{spec.size_bytes} and is inconsistent (a resync is under "
                                  f"way): it cannot shrink until the resync ends; grow the "
                                  f"primary back to {spec.size_bytes} bytes meanwhile")


def admit(hello: Hello, *, cert_names: set[str] | None, spec: VolumeSpec | None,
          binding: VolumeBinding | None, receiver_identity: str, heartbeat_s: float,
          allow_compression: bool = True,
          base_extents: list[tuple[int, int]] | None = None) -> Welcome:
    """Decide whether to accept ``hello``. ``cert_names`` is None only on a link without TLS;
    ``spec`` and ``binding`` are None for a volume the receiver does not know.
    ``base_extents``: the receiver proved it holds the HELLO's ``base`` image plus these
    extents (None: it cannot, so a primary with a base gets a full copy)."""
    binding = binding or VolumeBinding(primary=None, generation=0, last_seq=None, applied_seq=0)
    if hello.protocol != PROTOCOL_VERSION:
        raise Refused("version", f"protocol {hello.protocol} not supported "
                                 f"(receiver speaks {PROTOCOL_VERSION})")
    if cert_names is not None and hello.identity not in cert_names:
        raise Refused("identity", f"primary claims identity {hello.identity!r} but its "
                                  f"certificate names {sorted(cert_names)}")
    if spec is None or spec.uuid != hello.volume_uuid:
        raise Refused("unknown-volume", f"volume {hello.volume_uuid} is not configured on "
                                        f"receiver {receiver_identity!r}")
    if spec.allowed_primaries and hello.identity not in spec.allowed_primaries:
        raise Refused("identity", f"primary {hello.identity!r} is not allowed for volume "
                                  f"{spec.uuid} (allowed: {sorted(spec.allowed_primaries)})")
    if binding.promoted_at_seq is not None:
        raise Refused("promoted", f"volume {spec.uuid} was promoted on receiver "
                                  f"{receiver_identity!r} at seq {binding.promoted_at_seq} "
                                  f"(generation {binding.generation}): its mirror is now served "
                                  f"by a primary there and takes no records from "
                                  f"{hello.identity!r} (generation {hello.generation}); to make "
                                  f"this site the DR of the new primary, see docs/failover.md",
                      {"promoted_at_seq": binding.promoted_at_seq})
    if binding.primary is not None and binding.primary != hello.identity:
        raise Refused("bound-to-other", f"volume {spec.uuid} is bound to primary "
                                        f"{binding.primary!r}; {hello.identity!r} refused")
    _check_geometry(hello, spec, binding)
    if hello.generation < binding.generation:
        raise Refused("stale-generation", f"volume {spec.uuid}: primary generation "
                                          f"{hello.generation} is older than the receiver's "
                                          f"{binding.generation}")
    if binding.last_seq is None:
        # First contact. From seq 1 the journal replays the whole history; from a later seq
        # the primary's journal no longer holds it (an earlier peer acknowledged it, or this
        # replica was rolled back): the replica starts at that seq and gets a full copy.
        last_seq = applied = hello.first_seq - 1
        full_copy = hello.first_seq != 1
        # From seq 1 too when the journal starts from a promoted image (not a blank disk),
        # unless this replica proved it holds that image: then a failback copies the extents.
        failback = None
        if hello.base is not None and not full_copy:
            full_copy = base_extents is None
            failback = base_extents
    else:
        if hello.first_seq > binding.last_seq + 1:
            raise Refused("resync-needed", f"volume {spec.uuid}: receiver holds up to seq "
                                           f"{binding.last_seq} but the primary starts at "
                                           f"{hello.first_seq}; records in between are gone. "
                                           f"On the DR, 'invalidate' the replica "
                                           f"(/replication/replicas in targetcli, or "
                                           f"'appliance-dr invalidate {spec.uuid}') to start "
                                           f"a full copy")
        last_seq, applied = binding.last_seq, binding.applied_seq
        full_copy = binding.full_copy
        failback = binding.failback_extents
    comp = next((c for c in hello.compression if c in COMPRESSIONS), None)
    return Welcome(identity=receiver_identity, last_seq=last_seq, applied_seq=applied,
                   compression=comp if allow_compression else None, heartbeat_s=heartbeat_s,
                   inconsistent=binding.inconsistent or full_copy or failback is not None,
                   full_copy=full_copy, supersede=True, primary_state=True,
                   failback_extents=failback)


class JumpRefused(ValueError):
    """A RESYNC_BEGIN asked the receiver to skip seqs where it must not."""


def check_supersede(*, full_copy_pending: bool, durable_seq: int, to_seq: int) -> None:
    """The one place a receiver accepts a jump in sequence: the RESYNC_BEGIN of a full copy
    (``superseded_to_seq``), while the replica durably waits for one (``full_copy_pending``).
    The copy contains the effect of every record up to ``to_seq``, so those records are not
    sent; ``to_seq == durable_seq`` is a no-op (a jump repeated after a crash). Anywhere else
    (a consistent replica, a resync resumed after the copy began) a missing seq is a gap that
    a resend must fill, and a jump would hide it. Never backwards. Pure; raises JumpRefused."""
    if not full_copy_pending:
        raise JumpRefused(f"RESYNC_BEGIN asks to skip to seq {to_seq}, but no full copy is "
                          f"pending (the replica holds seqs up to {durable_seq}): a jump in "
                          f"sequence is only accepted at the start of a full copy")
    if isinstance(to_seq, bool) or not isinstance(to_seq, int) or to_seq < durable_seq:
        raise JumpRefused(f"RESYNC_BEGIN asks to skip to seq {to_seq!r}, below the seq "
                          f"{durable_seq} the replica already holds: a jump never goes back")
