"""Transmitter and receiver configuration: TOML files, validated with messages that say what to fix.

Strict (appliance/config_file.py): a key that is none of those below, in any table (top
level, ``[tls]``, each ``[[volume]]``), an unknown table, or a value of the wrong type is
refused with the file, the key and the closest known key; the daemon exits with code 2
before it starts (appliance/daemon_entry.py). A setting left out takes the default of its
dataclass field (TransmitterConfig, ReceiverConfig, ReplicaConfig), written only there.
A number setting (``*_s``, ``bandwidth_limit``) also takes an integer.

Receiver (``appliance-receiver --config receiver.toml``)::

    identity = "dr-site"
    listen = "0.0.0.0:7700"
    state_dir = "/var/lib/appliance/replicas"
    control_socket = "/run/appliance/receiver.sock"
    heartbeat_s = 1.0            # optional
    dead_after_s = 5.0           # optional
    compression = true           # optional: accept zstd when the primary offers it
    insecure = false             # true: no [tls] (benchmarks, tests)
    provision = false            # true: a paired primary's offer of a volume that has no
                                 # [[volume]] creates its replica under state_dir/<uuid>/
                                 # (refused with code no-space when mirror + journal do not
                                 # fit; appliance/replication/dr/provisioned.py)
    provision_journal_size = 268435456   # bytes (at least 1 MiB): such a replica's journal
    local_primaries = ["<uuid>"] # optional: the volumes and consistency groups this site
                                 # serves as a primary (the shell writes them). A promoted
                                 # copy of one offered here is refused ('failback-first'),
                                 # never provisioned: it belongs on this site's old mirror
                                 # (docs/failover.md, failback)
    [tls]                        # omit only with insecure = true (benchmarks, tests)
    cert = "..."; key = "..."    # this appliance's certificate (CN/SAN = identity) and key
    ca = "..."                   # either: a CA bundle both sites trust, or
    peers = ["/path/site-a.pem"] # the primaries' own certificates, pinned (exactly one of
                                 # ca and peers; see appliance/replication/tls.py). A
                                 # receiver may pin none yet (peers = []): it then refuses
                                 # every connection ("no peer is paired")
    kernel = false               # optional: true puts the link's encryption in the kernel
                                 # (kTLS) where it can; caps the link at TLS 1.2, ECDHE with
                                 # AES-GCM (appliance/replication/kernel_tls.py)
    [[volume]]
    uuid = "..."; size_bytes = 1073741824; block_size = 512
    journal_size = 268435456
    allowed_primaries = ["site-a"]   # optional; empty = the first primary binds the volume
    mirror = "/dev/vg/lv"            # optional; default <state_dir>/<uuid>/mirror
    failback_journal = "/var/lib/appliance/journals/vol1.jnl"   # optional, with mirror: this
                                     # site's journal from when it was the primary of that
                                     # mirror; a failback then copies only what changed

Transmitter (``appliance-transmitter --config tx-<uuid>.toml``)::

    identity = "site-a"
    peer = "dr.example:7700"
    peer_identity = "dr-site"
    journal = "/var/lib/appliance/volumes/<uuid>/journal"
    volume_uuid = "..."; size_bytes = ...; block_size = 512   # size at creation: after an
    generation = 1                   # online resize the HELLO carries what the journal records
    control_socket = "/run/appliance/transmitter-<uuid>.sock"
    compression = true; bandwidth_limit = 12500000   # bytes/s, optional
    blackout = ["08:00-18:00"]                       # optional, local time
    # mirror, bitmap: found from the journal (the handler names them there); set them only
    # for a journal of an older handler that names none. Other files than the journal's
    # are refused.
    mirror = "/var/lib/appliance/volumes/<uuid>/mirror"
    bitmap = "/var/lib/appliance/volumes/<uuid>/bitmap"
    resync_skip_matching = false                     # initial sync of pre-seeded disks
    report_dir = "/var/lib/appliance/replication/reports"   # lost-write reports (optional)
    # optional tuning, all positive: heartbeat_s, dead_after_s (as the receiver's),
    # batch_bytes, window_bytes (bytes in flight), backoff_max_s (reconnect),
    # resync_region_bytes (a multiple of block_size up to 16 MiB), resync_clear_timeout_s;
    # insecure = true as the receiver's
    [tls]
    cert = "..."; key = "..."
    ca = "..."                   # or peers = ["/path/dr-site.pem"]: the receiver's own
                                 # certificate, pinned; exactly one of ca and peers
    kernel = false               # optional, as the receiver's
"""

from __future__ import annotations

import datetime as dt
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config_file import ConfigError, Where, check_table, required, setting
from appliance.replication.handshake import VolumeSpec
from appliance.replication.tls import TlsConfig

__all__ = ["ConfigError", "ReceiverConfig", "ReplicaConfig", "ReplicaPaths", "TransmitterConfig",
           "in_window", "load_toml", "receiver_config", "replica_paths", "transmitter_config"]


@dataclass(frozen=True, slots=True)
class ReplicaPaths:
    journal: Path
    mirror: Path
    state: Path                 # JSON: binding (primary, generation), resync state
    undo: Path                  # old contents saved while a resync runs (see undo.py)


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    spec: VolumeSpec
    paths: ReplicaPaths
    journal_size: int = 256 << 20
    mirror_sync_interval_s: float = 1.0
    mirror_sync_bytes: int = 64 * 1024 * 1024
    # Failback onto this site's old mirror: the journal it had as a primary, from which the
    # receiver proves what the mirror holds (dr/failback.py); None: a full copy.
    failback_journal: Path | None = None


def replica_paths(state_dir: Path, volume_uuid: uuid.UUID) -> ReplicaPaths:
    base = Path(state_dir) / str(volume_uuid)
    return ReplicaPaths(base / "journal", base / "mirror", base / "state.json",
                        base / "undo.log")


DEFAULT_BLOCK_SIZE = 512        # of a transmitter's volume and of a receiver's [[volume]]

# What each table of the files may hold: key -> TOML type (appliance/config_file.py). The
# defaults are the dataclass fields' (TransmitterConfig, ReceiverConfig, ReplicaConfig).
TLS_KEYS = {"cert": str, "key": str, "ca": str, "peers": list[str], "psk": str, "kernel": bool}
_LINK_KEYS = {"identity": str, "control_socket": str, "tls": dict, "insecure": bool,
              "heartbeat_s": float, "dead_after_s": float, "compression": bool}
RECEIVER_KEYS = {**_LINK_KEYS, "listen": str, "state_dir": str, "volume": list[dict],
                 "provision": bool, "provision_journal_size": int,
                 "local_primaries": list[str]}
MIN_JOURNAL_SIZE = 1 << 20      # of a replica journal ([[volume]] or provisioned)
VOLUME_KEYS = {"uuid": str, "size_bytes": int, "block_size": int, "journal_size": int,
               "allowed_primaries": list[str], "mirror": str, "failback_journal": str}
TRANSMITTER_KEYS = {
    **_LINK_KEYS, "peer": str, "peer_identity": str, "journal": str, "volume_uuid": str,
    "size_bytes": int, "block_size": int, "generation": int, "bandwidth_limit": float,
    "blackout": list[str], "batch_bytes": int, "window_bytes": int, "backoff_max_s": float,
    "mirror": str, "bitmap": str, "resync_skip_matching": bool, "resync_region_bytes": int,
    "resync_clear_timeout_s": float, "name": str, "peer_name": str, "paused": bool,
    "report_dir": str}


def parse_hostport(text: str, key: str, where: Where) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise where.error(key, f"{text!r} must be host:port with a port 1-65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def _uuid(text: str, key: str, where: Where) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as err:
        raise where.error(key, f"{text!r} is not a uuid (write it as "
                               f"0b5e6a4c-0000-4000-8000-000000000001)") from err


def _positive(value: float, key: str, where: Where, unit: str = "") -> float:
    if value <= 0:
        raise where.error(key, f"must be positive{unit}, got {value}")
    return value


def _geometry(d: dict, where: Where) -> tuple[int, int]:
    size = required(d, "size_bytes", where)
    bs = d.get("block_size", DEFAULT_BLOCK_SIZE)
    if bs not in (512, 4096):
        raise where.error("block_size", f"must be 512 or 4096, got {bs}")
    if size <= 0 or size % bs:
        raise where.error("size_bytes", f"{size} must be a positive multiple of {bs} "
                                        f"(the block size)")
    return size, bs


def _tls(d: dict, where: Where, *, may_pin_none: bool = False) -> TlsConfig | None:
    """``may_pin_none``: a receiver may have ``peers = []`` (no appliance paired yet; every
    connection is then refused), a transmitter needs its receiver's certificate."""
    if "tls" not in d:
        if not d.get("insecure", False):
            raise ConfigError(f"{where.file}: a [tls] section (cert, key, and ca or peers) is "
                              f"required; set insecure = true only for tests on a trusted "
                              f"network")
        return None
    tw = where.table("[tls]")
    t = check_table(d["tls"], TLS_KEYS, tw)
    if "psk" in t:
        # Python's ssl takes PSKs only from 3.13, and the links do not use them on any
        # version: refused, never accepted and ignored.
        raise tw.error("psk", "is refused: pre-shared keys are not supported; use "
                              "certificates (cert, key, and ca or peers)")
    cert, key = [Path(required(t, k, tw)) for k in ("cert", "key")]
    if "ca" in t and "peers" in t:
        raise tw.error("ca", "and peers are both set: keep one (ca: a CA both sites trust "
                             "signs the certificates; peers: the paired appliances' own "
                             "certificates are pinned)")
    if "ca" not in t and "peers" not in t:
        raise tw.error("ca", "or peers is missing: add one (ca = \"<CA bundle>\", or peers = "
                             "[\"<peer certificate>\", ...] to pin the paired appliances' "
                             "certificates)")
    if "peers" in t and not t["peers"] and not may_pin_none:
        raise tw.error("peers", "is empty: list the certificate file of each paired "
                                "appliance (or use ca)")
    kernel = t.get("kernel", False)
    if "ca" in t:
        return TlsConfig(cert, key, ca=Path(t["ca"]), kernel=kernel)
    return TlsConfig(cert, key, peers=tuple(Path(p) for p in t["peers"]), kernel=kernel)


def _window(text: str, where: Where) -> tuple[dt.time, dt.time]:
    try:
        a, b = text.split("-")
        return dt.time.fromisoformat(a.strip()), dt.time.fromisoformat(b.strip())
    except ValueError as err:
        raise where.error("blackout", f"window {text!r} must look like '08:00-18:00'") from err


def in_window(now: dt.time, windows: list[tuple[dt.time, dt.time]]) -> bool:
    """True if ``now`` falls in any window; a window may wrap midnight (22:00-06:00)."""
    for start, end in windows:
        if start <= end and start <= now < end:
            return True
        if start > end and (now >= start or now < end):
            return True
    return False


@dataclass(frozen=True, kw_only=True)
class ReceiverConfig:
    identity: str
    listen: tuple[str, int]
    state_dir: Path
    control_socket: Path
    tls: TlsConfig | None
    volumes: list[ReplicaConfig] = field(default_factory=list)     # [[volume]] tables
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    compression: bool = True
    provision: bool = False             # create replicas for volumes paired primaries offer
    provision_journal_size: int = 256 << 20
    # Volume (and group) uuids this site serves as a primary: their promoted copies are
    # refused, not provisioned (a failback onto the old mirror is what they need).
    local_primaries: frozenset[uuid.UUID] = frozenset()


DEFAULT_REPORT_DIR = Path("/var/lib/appliance/replication/reports")


@dataclass(frozen=True, kw_only=True)
class TransmitterConfig:
    identity: str
    peer: tuple[str, int]
    peer_identity: str
    journal: Path
    volume_uuid: uuid.UUID
    size_bytes: int
    block_size: int = DEFAULT_BLOCK_SIZE
    generation: int = 1
    control_socket: Path
    tls: TlsConfig | None
    compression: bool = False
    bandwidth_limit: float | None = None
    blackout: list[tuple[dt.time, dt.time]] = field(default_factory=list)
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    batch_bytes: int = 1 << 20
    window_bytes: int = 16 << 20
    backoff_max_s: float = 10.0
    mirror: Path | None = None          # only for a journal that names no mirror/bitmap
    bitmap: Path | None = None
    resync_skip_matching: bool = False  # ship a region only if its hash differs at the peer
    resync_region_bytes: int = 1 << 20
    resync_clear_timeout_s: float = 30.0
    name: str = ""                      # the volume's name as its admin knows it (backstore)
    peer_name: str = ""                 # the peer's name as its admin knows it (/replication/peers)
    paused: bool = False                # start with shipping paused (the shell's 'pause')
    # Where the lost-write report goes once a promoted DR refuses us (docs/failover.md);
    # None: beside the journal (a journal on a block device: DEFAULT_REPORT_DIR).
    report_dir: Path | None = None

    @property
    def lost_write_dir(self) -> Path:
        if self.report_dir is not None:
            return self.report_dir
        if str(self.journal).startswith("/dev/"):
            return DEFAULT_REPORT_DIR
        return self.journal.parent


def _timing(d: dict, owner: type, where: Where) -> tuple[float, float]:
    hb = setting(d, "heartbeat_s", owner, where)
    dead = setting(d, "dead_after_s", owner, where)
    if not 0 < hb < dead:
        raise where.error("heartbeat_s", f"and dead_after_s: need 0 < heartbeat_s ({hb}) < "
                                         f"dead_after_s ({dead})")
    return hb, dead


def _journal_size(size: int, key: str, where: Where) -> int:
    if size < MIN_JOURNAL_SIZE:
        raise where.error(key, f"{size} is too small (at least 1 MiB: {MIN_JOURNAL_SIZE})")
    return size


def _replica(v: dict, state_dir: Path, where: Where) -> ReplicaConfig:
    v = check_table(v, VOLUME_KEYS, where)
    vid = _uuid(required(v, "uuid", where), "uuid", where)
    size, bs = _geometry(v, where)
    allowed = frozenset(setting(v, "allowed_primaries", VolumeSpec, where))
    paths = replica_paths(state_dir, vid)
    if "mirror" in v:
        paths = ReplicaPaths(paths.journal, Path(v["mirror"]), paths.state, paths.undo)
    jsize = _journal_size(setting(v, "journal_size", ReplicaConfig, where), "journal_size",
                          where)
    failback = Path(v["failback_journal"]) if "failback_journal" in v else None
    if failback is not None and "mirror" not in v:
        raise where.error("failback_journal", "needs 'mirror' too: the old mirror that "
                                              "journal belongs to")
    return ReplicaConfig(VolumeSpec(vid, size, bs, allowed), paths, jsize,
                         failback_journal=failback)


def receiver_config(raw: dict, where: str = "receiver config") -> ReceiverConfig:
    """``raw``: the parsed TOML file; ``where``: the file's name for messages."""
    top = Where(where)
    d = check_table(raw, RECEIVER_KEYS, top)
    state_dir = Path(required(d, "state_dir", top))
    hb, dead = _timing(d, ReceiverConfig, top)
    vols = []
    for i, v in enumerate(setting(d, "volume", ReceiverConfig, top, field="volumes")):
        replica = _replica(v, state_dir, top.table(f"[[volume]] #{i + 1}"))
        if any(replica.spec.uuid == seen.spec.uuid for seen in vols):
            raise top.table(f"[[volume]] #{i + 1}").error(
                "uuid", f"{replica.spec.uuid}: volume is listed twice; remove one [[volume]]")
        vols.append(replica)
    return ReceiverConfig(
        identity=required(d, "identity", top),
        listen=parse_hostport(required(d, "listen", top), "listen", top),
        state_dir=state_dir,
        control_socket=Path(required(d, "control_socket", top)),
        tls=_tls(d, top, may_pin_none=True), volumes=vols, heartbeat_s=hb, dead_after_s=dead,
        compression=setting(d, "compression", ReceiverConfig, top),
        provision=setting(d, "provision", ReceiverConfig, top),
        provision_journal_size=_journal_size(
            setting(d, "provision_journal_size", ReceiverConfig, top),
            "provision_journal_size", top),
        local_primaries=frozenset(_uuid(u, "local_primaries", top)
                                  for u in d.get("local_primaries", [])))


def transmitter_config(raw: dict, where: str = "transmitter config") -> TransmitterConfig:
    """``raw``: the parsed TOML file; ``where``: the file's name for messages."""
    top = Where(where)
    d = check_table(raw, TRANSMITTER_KEYS, top)
    size, bs = _geometry(d, top)
    hb, dead = _timing(d, TransmitterConfig, top)
    if ("mirror" in d) != ("bitmap" in d):
        raise top.error("mirror", "and bitmap: resync needs both 'mirror' and 'bitmap' "
                                  "(or neither: the journal names them)")
    region = setting(d, "resync_region_bytes", TransmitterConfig, top)
    if region <= 0 or region % bs or region > 16 << 20:
        raise top.error("resync_region_bytes", f"must be a multiple of {bs} up to 16 MiB, "
                                               f"got {region}")
    limit = setting(d, "bandwidth_limit", TransmitterConfig, top)
    if limit is not None:
        _positive(limit, "bandwidth_limit", top, " bytes/s")
    gen = setting(d, "generation", TransmitterConfig, top)
    if gen < 0:
        raise top.error("generation", f"must be >= 0, got {gen}")

    def positive(key: str):
        return _positive(setting(d, key, TransmitterConfig, top), key, top)

    def path(key: str) -> Path | None:
        return Path(d[key]) if key in d else setting(d, key, TransmitterConfig, top)

    return TransmitterConfig(
        identity=required(d, "identity", top),
        peer=parse_hostport(required(d, "peer", top), "peer", top),
        peer_identity=required(d, "peer_identity", top),
        journal=Path(required(d, "journal", top)),
        volume_uuid=_uuid(required(d, "volume_uuid", top), "volume_uuid", top),
        size_bytes=size, block_size=bs, generation=gen,
        control_socket=Path(required(d, "control_socket", top)),
        tls=_tls(d, top),
        compression=setting(d, "compression", TransmitterConfig, top),
        bandwidth_limit=limit,
        blackout=[_window(w, top) for w in setting(d, "blackout", TransmitterConfig, top)],
        heartbeat_s=hb, dead_after_s=dead,
        batch_bytes=positive("batch_bytes"), window_bytes=positive("window_bytes"),
        backoff_max_s=positive("backoff_max_s"),
        mirror=path("mirror"), bitmap=path("bitmap"),
        resync_skip_matching=setting(d, "resync_skip_matching", TransmitterConfig, top),
        resync_region_bytes=region,
        resync_clear_timeout_s=positive("resync_clear_timeout_s"),
        name=setting(d, "name", TransmitterConfig, top),
        peer_name=setting(d, "peer_name", TransmitterConfig, top),
        paused=setting(d, "paused", TransmitterConfig, top),
        report_dir=path("report_dir"))


def load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}; fix that line") from err
