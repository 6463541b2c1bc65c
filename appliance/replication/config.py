"""Transmitter and receiver configuration: TOML files, validated with messages that say what to fix.

Receiver (``appliance-receiver --config receiver.toml``)::

    identity = "dr-site"
    listen = "0.0.0.0:7700"
    state_dir = "/var/lib/appliance/replicas"
    control_socket = "/run/appliance/receiver.sock"
    heartbeat_s = 1.0            # optional
    dead_after_s = 5.0           # optional
    compression = true           # optional: accept zstd when the primary offers it
    [tls]                        # omit only with insecure = true (benchmarks, tests)
    cert = "..."; key = "..."; ca = "..."
    [[volume]]
    uuid = "..."; size_bytes = 1073741824; block_size = 512
    journal_size = 268435456
    allowed_primaries = ["site-a"]   # optional; empty = the first primary binds the volume
    mirror = "/dev/vg/lv"            # optional; default <state_dir>/<uuid>/mirror

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
    [tls]
    cert = "..."; key = "..."; ca = "..."
"""

from __future__ import annotations

import datetime as dt
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.replication.handshake import VolumeSpec
from appliance.replication.tls import TlsConfig, TlsConfigError, check_psk_supported


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
    journal_size: int
    mirror_sync_interval_s: float = 1.0
    mirror_sync_bytes: int = 64 * 1024 * 1024


def replica_paths(state_dir: Path, volume_uuid: uuid.UUID) -> ReplicaPaths:
    base = Path(state_dir) / str(volume_uuid)
    return ReplicaPaths(base / "journal", base / "mirror", base / "state.json",
                        base / "undo.log")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what to fix."""


def _req(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ConfigError(f"{where}: missing required key {key!r}")
    return _typed(d[key], key, typ, where)


def _typed(value, key: str, typ, where: str):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key!r} must be {getattr(typ, '__name__', typ)}, "
                          f"got {value!r}")
    return value


def _opt(d: dict, key: str, typ, default, where: str):
    return _typed(d[key], key, typ, where) if key in d else default


def parse_hostport(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {text!r} must be host:port with a port 1-65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def _uuid(text: str, where: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as err:
        raise ConfigError(f"{where}: {text!r} is not a uuid") from err


def _geometry(d: dict, where: str) -> tuple[int, int]:
    size = _req(d, "size_bytes", int, where)
    bs = _opt(d, "block_size", int, 512, where)
    if bs not in (512, 4096):
        raise ConfigError(f"{where}: block_size must be 512 or 4096, got {bs}")
    if size <= 0 or size % bs:
        raise ConfigError(f"{where}: size_bytes {size} must be a positive multiple of {bs}")
    return size, bs


def _tls(d: dict, where: str) -> TlsConfig | None:
    if "tls" not in d:
        if not d.get("insecure", False):
            raise ConfigError(f"{where}: a [tls] section (cert, key, ca) is required; set "
                              f"insecure = true only for tests on a trusted network")
        return None
    t = _typed(d["tls"], "tls", dict, where)
    if "psk" in t:
        try:
            check_psk_supported()
        except TlsConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
    return TlsConfig(Path(_req(t, "cert", str, f"{where} [tls]")),
                     Path(_req(t, "key", str, f"{where} [tls]")),
                     Path(_req(t, "ca", str, f"{where} [tls]")))


def _window(text: str, where: str) -> tuple[dt.time, dt.time]:
    try:
        a, b = text.split("-")
        return dt.time.fromisoformat(a.strip()), dt.time.fromisoformat(b.strip())
    except ValueError as err:
        raise ConfigError(f"{where}: blackout window {text!r} must look like '08:00-18:00'") \
            from err


def in_window(now: dt.time, windows: list[tuple[dt.time, dt.time]]) -> bool:
    """True if ``now`` falls in any window; a window may wrap midnight (22:00-06:00)."""
    for start, end in windows:
        if start <= end and start <= now < end:
            return True
        if start > end and (now >= start or now < end):
            return True
    return False


@dataclass(frozen=True)
class ReceiverConfig:
    identity: str
    listen: tuple[str, int]
    state_dir: Path
    control_socket: Path
    tls: TlsConfig | None
    volumes: list[ReplicaConfig]
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    compression: bool = True


@dataclass(frozen=True)
class TransmitterConfig:
    identity: str
    peer: tuple[str, int]
    peer_identity: str
    journal: Path
    volume_uuid: uuid.UUID
    size_bytes: int
    block_size: int
    generation: int
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


def _timing(d: dict, where: str) -> tuple[float, float]:
    hb = _opt(d, "heartbeat_s", float, 1.0, where)
    dead = _opt(d, "dead_after_s", float, 5.0, where)
    if not 0 < hb < dead:
        raise ConfigError(f"{where}: need 0 < heartbeat_s ({hb}) < dead_after_s ({dead})")
    return hb, dead


def receiver_config(d: dict, where: str = "receiver config") -> ReceiverConfig:
    state_dir = Path(_req(d, "state_dir", str, where))
    hb, dead = _timing(d, where)
    vols = []
    seen: set[uuid.UUID] = set()
    for i, v in enumerate(_opt(d, "volume", list, [], where)):
        w = f"{where} [[volume]] #{i + 1}"
        vid = _uuid(_req(v, "uuid", str, w), w)
        if vid in seen:
            raise ConfigError(f"{w}: volume {vid} is listed twice")
        seen.add(vid)
        size, bs = _geometry(v, w)
        allowed = frozenset(_opt(v, "allowed_primaries", list, [], w))
        paths = replica_paths(state_dir, vid)
        if "mirror" in v:
            paths = ReplicaPaths(paths.journal, Path(_typed(v["mirror"], "mirror", str, w)),
                                 paths.state, paths.undo)
        jsize = _opt(v, "journal_size", int, 256 << 20, w)
        if jsize < 1 << 20:
            raise ConfigError(f"{w}: journal_size {jsize} is too small (at least 1 MiB)")
        vols.append(ReplicaConfig(VolumeSpec(vid, size, bs, allowed), paths, jsize))
    return ReceiverConfig(
        identity=_req(d, "identity", str, where),
        listen=parse_hostport(_req(d, "listen", str, where), where),
        state_dir=state_dir,
        control_socket=Path(_req(d, "control_socket", str, where)),
        tls=_tls(d, where), volumes=vols, heartbeat_s=hb, dead_after_s=dead,
        compression=_opt(d, "compression", bool, True, where))


def transmitter_config(d: dict, where: str = "transmitter config") -> TransmitterConfig:
    size, bs = _geometry(d, where)
    hb, dead = _timing(d, where)
    if ("mirror" in d) != ("bitmap" in d):
        raise ConfigError(f"{where}: resync needs both 'mirror' and 'bitmap' (or neither)")
    region = _opt(d, "resync_region_bytes", int, 1 << 20, where)
    if region <= 0 or region % bs or region > 16 << 20:
        raise ConfigError(f"{where}: resync_region_bytes must be a multiple of {bs} up to "
                          f"16 MiB, got {region}")
    limit = _opt(d, "bandwidth_limit", float, None, where) if "bandwidth_limit" in d else None
    if limit is not None and limit <= 0:
        raise ConfigError(f"{where}: bandwidth_limit must be positive bytes/s, got {limit}")
    gen = _opt(d, "generation", int, 1, where)
    if gen < 0:
        raise ConfigError(f"{where}: generation must be >= 0")
    return TransmitterConfig(
        identity=_req(d, "identity", str, where),
        peer=parse_hostport(_req(d, "peer", str, where), where),
        peer_identity=_req(d, "peer_identity", str, where),
        journal=Path(_req(d, "journal", str, where)),
        volume_uuid=_uuid(_req(d, "volume_uuid", str, where), where),
        size_bytes=size, block_size=bs, generation=gen,
        control_socket=Path(_req(d, "control_socket", str, where)),
        tls=_tls(d, where),
        compression=_opt(d, "compression", bool, False, where),
        bandwidth_limit=limit,
        blackout=[_window(w, where) for w in _opt(d, "blackout", list, [], where)],
        heartbeat_s=hb, dead_after_s=dead,
        batch_bytes=_opt(d, "batch_bytes", int, 1 << 20, where),
        window_bytes=_opt(d, "window_bytes", int, 16 << 20, where),
        backoff_max_s=_opt(d, "backoff_max_s", float, 10.0, where),
        mirror=_path_opt(d, "mirror", where), bitmap=_path_opt(d, "bitmap", where),
        resync_skip_matching=_opt(d, "resync_skip_matching", bool, False, where),
        resync_region_bytes=_opt(d, "resync_region_bytes", int, 1 << 20, where),
        resync_clear_timeout_s=_opt(d, "resync_clear_timeout_s", float, 30.0, where))


def _path_opt(d: dict, key: str, where: str) -> Path | None:
    return Path(_typed(d[key], key, str, where)) if key in d else None


def load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from err
