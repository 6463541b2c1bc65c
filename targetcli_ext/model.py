"""The site's persistent replication model: identity, listen address, peers, volumes, replicas
and the monitoring settings (the exporter's address and port, the alert thresholds, the webhook).

One small JSON file (``site.json``, 0600, replaced atomically) in a state directory passed in
(default ``/var/lib/appliance/replication``). The shell alone writes it; the daemons never read
it: the shell renders their TOML files from it (``targetcli_ext/daemon_config.py``). Every
change is validated first and applied as load-modify-save under a lock: input that does not
parse is refused with a message naming what to fix, and nothing changes.

Format (version 3; version 1 files, which have no volumes and replicas, and version 2 files,
which have no monitoring, still load: what is missing takes its defaults)::

    {"version": 3, "identity": "site-a", "listen": "0.0.0.0:7700",
     "peers": {"dr": {"address": "192.0.2.2:7700", "fingerprint": "SHA256:AB:...:EF"}},
     "volumes": {"vol1": {"backstore": "vol1", "peer": "dr", "paused": false,
                          "bandwidth_limit": null, "blackout": []}},
     "replicas": {"r1": {"uuid": "...", "mirror": "/dev/vg/r1", "size_bytes": 1073741824,
                         "block_size": 512}},
     "monitoring": {"address": "127.0.0.1", "port": 9477, "interval": 2.0,
                    "alerts": {"journal_high_water_percent": 80.0,
                               "journal_clear_percent": 70.0,
                               "recovery_point_age_s": 300.0, "link_down_s": 60.0},
                    "webhook": null}}

``volumes`` are replicated from this appliance (a ``user:mirror`` backstore each, shipped to
a peer); ``replicas`` are replicas this appliance receives into a block device its admin made
(a replica a primary offers without one is provisioned by the receiver under its state_dir).
A replica may also carry ``allowed_primaries`` (identities) and ``failback_journal`` (this
site's old journal of that mirror, after a failback: docs/failover.md); both are absent unless
set, so files without them read and write as before.
``monitoring`` is what the shell renders as the exporter's ``exporter.toml`` (``webhook``: null,
or ``{"url", "timeout_s", "queue_size"}``).
``groups`` (absent unless a group exists, so files without groups read and write as before) are
consistency groups replicated from this appliance (docs/groups.md): one transmitter each, like
a volume, over the group's journal; their members are in the group's layout file, not here::

     "groups": {"db": {"peer": "dr", "uuid": "...", "block_size": 512,
                       "journal_size": 268435456, "paused": false, "bandwidth_limit": null,
                       "blackout": []}}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import socket
import urllib.parse
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from appliance.config_file import ConfigError, field_default
from appliance.exporter.config import (
    MAX_INTERVAL,
    MAX_QUEUE,
    MAX_WEBHOOK_TIMEOUT,
    MIN_INTERVAL,
    AlertThresholds,
    ExporterConfig,
    WebhookConfig,
)
from appliance.replication.config import transmitter_config
from appliance.statefile import write_text_atomic
from appliance.volume.sync_mode import (
    MAX_FALLBACK_S,
    MIN_FALLBACK_S,
    MODE_NAMES,
    SyncSettings,
    SyncSettingsError,
)

DEFAULT_STATE_DIR = Path("/var/lib/appliance/replication")
SITE_FILE = "site.json"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DEFAULT_LISTEN = "0.0.0.0:7700"
# The exporter's defaults are its own (appliance/exporter/config.py): loopback unless the admin
# names an address, never all interfaces by default (the metrics name volumes and peers).
DEFAULT_EXPORTER_ADDRESS: str = field_default(ExporterConfig, "address")
DEFAULT_EXPORTER_PORT: int = field_default(ExporterConfig, "port")
DEFAULT_EXPORTER_INTERVAL: float = field_default(ExporterConfig, "interval")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_HEX = re.compile(r"[0-9A-Fa-f]{64}")


class ModelError(ValueError):
    """Input or a state file refused; the message says what to fix."""


# --- parsing ------------------------------------------------------------------------------


def parse_name(text: str, what: str = "name") -> str:
    """A peer or site name: also a node name in the shell and a certificate name."""
    if not _NAME.fullmatch(text or ""):
        raise ModelError(f"{what} {text!r} is not valid: use 1-63 letters, digits, '.', '_' "
                         f"or '-', starting with a letter or digit")
    return text


def parse_address(text: str, what: str = "address") -> str:
    """``host:port`` (``[v6]:port`` for IPv6), normalised; the port is required."""
    example = f"use host:port, e.g. {what}=192.0.2.2:7700 or {what}=[2001:db8::2]:7700"
    if not text:
        raise ModelError(f"{what} is empty: {example}")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ModelError(f"{what} {text!r} does not parse: {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as err:
            raise ModelError(f"{what} {text!r}: {host!r} is not an IPv6 address; "
                             f"{example}") from err
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ModelError(f"{what} {text!r} has no port: {example}")
        if ":" in host:
            raise ModelError(f"{what} {text!r}: put an IPv6 address in brackets; {example}")
        if not _is_ipv4(host) and not _HOSTNAME.fullmatch(host):
            raise ModelError(f"{what} {text!r}: {host!r} is neither an IPv4 address nor a "
                             f"host name; {example}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ModelError(f"{what} {text!r}: port {port!r} is not a number from 1 to 65535; "
                         f"{example}")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def parse_fingerprint(text: str) -> str:
    """``SHA256:`` and the certificate's SHA-256 as 64 hex digits, with or without colons
    (``openssl x509 -noout -fingerprint -sha256`` prints them with); normalised to
    ``SHA256:AB:CD:...`` in upper case, the form ``/replication info`` shows."""
    how = ("use SHA256: and 64 hex digits as '/replication info' shows on the peer, or "
           "'openssl x509 -noout -fingerprint -sha256 -in <peer certificate>'")
    prefix, sep, digits = (text or "").partition(":")
    if not sep or prefix.upper() != "SHA256":
        raise ModelError(f"fingerprint {text!r} does not start with SHA256: ; {how}")
    digits = digits.replace(":", "")
    if not _HEX.fullmatch(digits):
        raise ModelError(f"fingerprint {text!r} is not 32 bytes in hex after SHA256: ; {how}")
    return "SHA256:" + ":".join(digits[i:i + 2] for i in range(0, 64, 2)).upper()


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_BANDWIDTH = re.compile(r"(?P<n>-?[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]?)(?:I?B)?(?:/S)?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
BANDWIDTH_MIN = 1 << 10          # 1K/s: anything slower never ships a batch in useful time
BANDWIDTH_MAX = 1 << 40          # 1T/s: more is a typo, no link is that fast
_WINDOW = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")

# The volume settings' parsers: the only ones, for what the admin types in the shell and for
# what site.json holds (numbers and lists there, as the shell saved them). ModelError says
# what to give; the shell adds that nothing changed.


def parse_uuid(value: object, what: str) -> str:
    """A uuid as site.json keeps it (canonical text); ModelError naming ``what``."""
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError as err:
        raise ModelError(f"{what} {value!r} is not a uuid") from err


def parse_bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ModelError(f"{what}={value!r} is neither true nor false: use {what}=true or "
                     f"{what}=false")


def parse_bandwidth(value: object) -> float | None:
    """Bytes per second from ``50M``, ``1.5G``, ``800K``, ``12500000`` (K, M, G, T are
    powers of 1024, as the status prints KiB, MiB, GiB; ``MB``, ``MiB``, ``M/s`` read the
    same) or a number, from 1K to 1T per second; None for ``none`` (no limit)."""
    how = ("use a rate per second with K, M or G, e.g. bandwidth_limit=50M, or "
           "bandwidth_limit=none for no limit")
    if value is None:
        return None
    if isinstance(value, bool):
        raise ModelError(f"bandwidth_limit {value!r} is not a rate: {how}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        raw = str(value).strip()
        if raw.lower() in ("none", "off", "unlimited"):
            return None
        m = _BANDWIDTH.fullmatch(raw.upper())
        if not m:
            raise ModelError(f"bandwidth_limit {value!r} does not parse: {how}")
        rate = float(m.group("n")) * _UNITS[m.group("unit")]
    if not BANDWIDTH_MIN <= rate <= BANDWIDTH_MAX:
        raise ModelError(f"bandwidth_limit {value!r} is out of range: from "
                         f"{format_bandwidth(BANDWIDTH_MIN)} to "
                         f"{format_bandwidth(BANDWIDTH_MAX)} per second, or none")
    return float(round(rate))


def format_bandwidth(value: float | None) -> str:
    """The setting as the admin typed it: the largest unit it is a whole multiple of."""
    if value is None:
        return "none"
    n = round(value)
    for unit in ("T", "G", "M", "K"):
        if n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def parse_blackout(value: object) -> tuple[str, ...]:
    """Windows without shipping, local time: ``08:00-18:00`` or several comma-separated
    (``22:00-06:00`` wraps midnight), or a list of them; ``none`` for no window.
    Normalised to HH:MM-HH:MM."""
    how = ("use HH:MM-HH:MM windows in local time, comma-separated, e.g. "
           "blackout=08:00-18:00,20:00-22:00, or blackout=none")
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        parts = [str(v).strip() for v in value]
    else:
        raw = str(value).strip()
        if not raw:
            raise ModelError(f"blackout is empty: {how}")
        if raw.lower() in ("none", "off"):
            return ()
        parts = [part.strip() for part in raw.split(",")]
    windows = []
    for part in parts:
        m = _WINDOW.fullmatch(part)
        if not m:
            raise ModelError(f"blackout window {part!r} does not parse: {how}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        try:
            start, end = dt.time(h1, m1), dt.time(h2, m2)
        except ValueError as err:
            raise ModelError(f"blackout window {part!r}: {err}; {how}") from err
        if start == end:
            raise ModelError(f"blackout window {part!r} is empty (start equals end): {how}")
        windows.append(f"{start:%H:%M}-{end:%H:%M}")
    return tuple(windows)


def format_blackout(windows: tuple[str, ...] | list[str] | None) -> str:
    return ",".join(windows) if windows else "none"


def check_settings(name: str, *, paused: bool, bandwidth_limit: float | None,
                   blackout: tuple[str, ...]) -> None:
    """A volume's settings checked by the transmitter's own configuration rules (one place
    per rule: appliance/replication/config.py), on a file that differs from the volume's only
    in what these settings do not touch."""
    raw: dict = {"identity": "check", "peer": "check:1", "peer_identity": "check",
                 "journal": "/check", "volume_uuid": str(uuidlib.UUID(int=1)),
                 "size_bytes": 4096, "control_socket": "/check", "insecure": True,
                 "paused": paused, "blackout": list(blackout)}
    if bandwidth_limit is not None:
        raw["bandwidth_limit"] = bandwidth_limit
    try:
        transmitter_config(raw, where=f"volume {name}")
    except ConfigError as err:
        raise ModelError(str(err)) from err


# --- the replication mode (the handler's; docs/volume.md, "Synchronous modes") ------------
# Not in site.json: the handler keeps it in the volume's bitmap header, as a journal pause.
# The ranges and names are the handler's own (appliance/volume/sync_mode.py: one place per rule).

SYNC_SETTINGS = ("mode", "fallback", "hold")


def parse_sync_mode(value: object) -> str:
    """``async``, ``sync`` or ``sync-on-flush``."""
    text = str(value).strip().lower()
    if text not in MODE_NAMES:
        choices = [f"mode={m}" for m in MODE_NAMES]
        raise ModelError(f"mode={value!r} is not a replication mode: give "
                         f"{', '.join(choices[:-1])} or {choices[-1]}")
    return text


def parse_fallback(value: object) -> float:
    """Seconds a write waits for the DR before the volume falls back to async: ``500ms``,
    ``5s``, ``1m`` (or a number of seconds), from 10 ms to 1 h."""
    how = (f"give a duration from {format_fallback(MIN_FALLBACK_S)} to "
           f"{format_fallback(MAX_FALLBACK_S)} with ms, s or m, e.g. fallback=5s or "
           f"fallback=500ms")
    if isinstance(value, bool) or (_number(value) is None
                                   and not _DURATION.fullmatch(str(value).strip())):
        raise ModelError(f"fallback={value!r} is not a duration: {how}")
    try:
        seconds = parse_duration(value, "fallback")
    except ModelError:                  # parses, but is 0
        seconds = 0.0
    if not MIN_FALLBACK_S <= seconds <= MAX_FALLBACK_S:
        raise ModelError(f"fallback={value!r} is out of range: {how}")
    return seconds


def changed_sync(current: dict | None, changes: dict[str, object]) -> SyncSettings:
    """The settings ``set sync`` asks the handler for: the shell's parameters
    (``SYNC_SETTINGS``) parsed, the others kept from ``current`` (the handler's ``sync``
    status entry; None when it has none). ModelError names the parameter and what to give."""
    unknown = sorted(set(changes) - set(SYNC_SETTINGS))
    if unknown:
        raise ModelError(f"no parameter {', '.join(unknown)} in group 'sync' (parameters: "
                         f"{', '.join(SYNC_SETTINGS)})")
    current = current or {}
    mode = parse_sync_mode(changes["mode"]) if "mode" in changes else current.get("mode")
    if mode is None:
        raise ModelError("the handler reports no replication mode for this volume: give "
                         "mode= with the others, e.g. mode=sync fallback=10s hold=false")
    fallback = parse_fallback(changes["fallback"]) if "fallback" in changes \
        else current.get("fallback_s", SyncSettings.fallback_s)
    hold = parse_bool(changes["hold"], "hold") if "hold" in changes \
        else current.get("hold", SyncSettings.hold)
    try:
        return SyncSettings.parse(mode, fallback, hold)
    except SyncSettingsError as err:     # what the handler reported does not parse
        raise ModelError(f"{err}; give mode, fallback and hold together") from err


def format_fallback(seconds: float | None) -> str:
    """A fall-back time as the admin types it: ``500ms``, ``5s``, ``1m``."""
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return format_duration(seconds)


# --- monitoring settings (the exporter's; ranges as appliance/exporter/config.py) ----------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", re.IGNORECASE)
_SECONDS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%?")
_NONE = ("none", "off", "null")


def _number(value: object) -> float | None:
    """A number given as one (site.json), not a bool."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def parse_duration(value: object, what: str) -> float:
    """Seconds from ``300``, ``60s``, ``5m``, ``1h``, ``500ms`` (or a number); more than 0."""
    how = f"give seconds or a duration with s, m or h, e.g. {what}=60s or {what}=5m"
    seconds = _number(value)
    if seconds is None:
        m = _DURATION.fullmatch(str(value).strip())
        if not m:
            raise ModelError(f"{what}={value!r} does not parse: {how}")
        seconds = float(m.group(1)) * _SECONDS[(m.group(2) or "").lower()]
    if seconds <= 0:
        raise ModelError(f"{what}={value!r} must be more than 0 seconds: {how}")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as the admin types it: ``5m``, ``90s``, ``1h``, ``0.5s``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_percent(value: object, what: str) -> float:
    """A percentage from ``80``, ``80%``, ``72.5`` (or a number); its range is the caller's."""
    number = _number(value)
    if number is None:
        m = _PERCENT.fullmatch(str(value).strip())
        if not m:
            raise ModelError(f"{what}={value!r} is not a percentage: give a number, e.g. "
                             f"{what}=80")
        number = float(m.group(1))
    return number


def parse_port(value: object, what: str = "port") -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ModelError(f"{what}={value!r} is not a port: give a number from 1 to 65535, "
                         f"e.g. {what}={DEFAULT_EXPORTER_PORT}")
    return int(text)


def parse_count(value: object, what: str) -> int:
    """A whole number (its range is the caller's)."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ModelError(f"{what}={value!r} is not a whole number: give e.g. {what}=1000")
    return int(text)


def parse_ip(value: object, what: str = "address") -> str:
    """An IP address (IPv6 with or without brackets), normalised. Whether this host has it is
    checked where it is set (a bind, targetcli_ext/monitoring.py), not when site.json loads."""
    text = str(value or "").strip()
    try:
        return str(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError as err:
        raise ModelError(f"{what}={value!r} is not an IP address: give an address of this "
                         f"appliance, e.g. its management address, or {what}=127.0.0.1 "
                         f"(this appliance only)") from err


def parse_webhook_url(value: object, what: str = "webhook") -> str | None:
    """An http(s) URL with a host, or None for ``none`` (no webhook)."""
    how = f"give http(s)://host[:port]/path, e.g. {what}=https://ops.example/hook, or {what}=none"
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in _NONE:
        return None
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise ModelError(f"{what}={value!r} does not parse (empty, or spaces or control "
                         f"characters): {how}")
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is no number or out of range
    except ValueError as err:
        raise ModelError(f"{what}={value!r} does not parse ({err}): {how}") from err
    if parts.scheme.lower() not in ("http", "https"):
        raise ModelError(f"{what}={value!r} is not an http:// or https:// URL: {how}")
    if not parts.hostname:
        raise ModelError(f"{what}={value!r} has no host: {how}")
    return text


def check_monitoring(m: Monitoring, names: dict[str, str]) -> None:
    """The ranges the exporter accepts (appliance/exporter/config.py), each refusal naming the
    setting by ``names`` (the shell's parameter, or site.json's key)."""
    a = m.alerts
    high, clear = names["journal_high_water_percent"], names["journal_clear_percent"]
    if not MIN_INTERVAL <= m.interval <= MAX_INTERVAL:
        raise ModelError(f"{names['interval']}={format_duration(m.interval)} is out of range: "
                         f"from {MIN_INTERVAL:g}s to {MAX_INTERVAL:g}s between evaluations")
    if not 1 <= a.journal_high_water_percent <= 100:
        raise ModelError(f"{high}={a.journal_high_water_percent:g} is out of range: give a "
                         f"percentage from 1 to 100")
    if not 0 <= a.journal_clear_percent <= a.journal_high_water_percent - 1:
        raise ModelError(f"{clear}={a.journal_clear_percent:g} must be at least 1 below "
                         f"{high} ({a.journal_high_water_percent:g}): the alert clears when "
                         f"the journal drains below it; give 0 to "
                         f"{a.journal_high_water_percent - 1:g}")
    if m.webhook is not None:
        if not m.webhook.timeout_s <= MAX_WEBHOOK_TIMEOUT:
            raise ModelError(f"{names['timeout_s']}={format_duration(m.webhook.timeout_s)} is "
                             f"out of range: at most {MAX_WEBHOOK_TIMEOUT:g}s")
        if not 1 <= m.webhook.queue_size <= MAX_QUEUE:
            raise ModelError(f"{names['queue_size']}={m.webhook.queue_size} is out of range: "
                             f"from 1 to {MAX_QUEUE} undelivered alerts")


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    name: str
    address: str
    fingerprint: str

    def to_dict(self) -> dict:
        return {"address": self.address, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Volume:
    """A backstore of this appliance replicated to a peer (a transmitter)."""

    name: str
    backstore: str
    peer: str
    paused: bool = False
    bandwidth_limit: float | None = None        # bytes/s, None: no limit
    blackout: tuple[str, ...] = ()               # "08:00-18:00", local time
    # The volume's uuid (its backstore's, as the transmitter names it), recorded at create:
    # the receiver refuses to provision a promoted copy of it (docs/failover.md). None in
    # files written before it was kept.
    uuid: str | None = None

    def to_dict(self) -> dict:
        d = {"backstore": self.backstore, "peer": self.peer, "paused": self.paused,
             "bandwidth_limit": self.bandwidth_limit, "blackout": list(self.blackout)}
        if self.uuid is not None:
            d["uuid"] = self.uuid
        return d

    @classmethod
    def from_dict(cls, name: str, d: object) -> Volume:
        if not isinstance(d, dict):
            raise ModelError(f"volume {name!r} is not an object")
        vol = cls(parse_name(name, "volume name"), parse_name(d.get("backstore", ""),
                  "backstore"), parse_name(d.get("peer", ""), "peer"),
                  parse_bool(d.get("paused", False), "paused"),
                  parse_bandwidth(d.get("bandwidth_limit")),
                  parse_blackout(d.get("blackout", [])),
                  parse_uuid(d["uuid"], f"volume {name!r}: uuid") if "uuid" in d else None)
        check_settings(vol.name, paused=vol.paused, bandwidth_limit=vol.bandwidth_limit,
                       blackout=vol.blackout)
        return vol


@dataclass(frozen=True)
class Group:
    """A consistency group replicated from this appliance (docs/groups.md): its transmitter
    ships the group's journal; ``uuid`` is its layout's (the journal's volume uuid)."""

    name: str
    peer: str
    uuid: str
    block_size: int = 512
    journal_size: int = 256 << 20
    paused: bool = False
    bandwidth_limit: float | None = None
    blackout: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"peer": self.peer, "uuid": self.uuid, "block_size": self.block_size,
                "journal_size": self.journal_size, "paused": self.paused,
                "bandwidth_limit": self.bandwidth_limit, "blackout": list(self.blackout)}

    @classmethod
    def from_dict(cls, name: str, d: object) -> Group:
        if not isinstance(d, dict):
            raise ModelError(f"group {name!r} is not an object")
        gid = parse_uuid(d.get("uuid", ""), f"group {name!r}: uuid")
        bs, size = d.get("block_size", 512), d.get("journal_size")
        if bs not in (512, 4096):
            raise ModelError(f"group {name!r}: block_size {bs!r} is not 512 or 4096")
        if type(size) is not int or size <= 0:
            raise ModelError(f"group {name!r}: journal_size {size!r} is not a size in bytes")
        group = cls(parse_name(name, "group name"), parse_name(d.get("peer", ""), "peer"), gid,
                    bs, size, parse_bool(d.get("paused", False), "paused"),
                    parse_bandwidth(d.get("bandwidth_limit")),
                    parse_blackout(d.get("blackout", [])))
        check_settings(group.name, paused=group.paused, bandwidth_limit=group.bandwidth_limit,
                       blackout=group.blackout)
        return group


@dataclass(frozen=True)
class Replica:
    """A replica this appliance receives into a block device (or file) its admin made.

    ``failback_journal``: this site's journal from when it was the primary of that mirror (a
    failback onto its old mirror, docs/failover.md): the receiver proves from it what the
    mirror holds beyond the promoted image, so only what changed is copied.
    ``allowed_primaries``: the identities the receiver admits for it (empty: the first
    primary that connects binds it)."""

    name: str
    uuid: str
    mirror: str
    size_bytes: int
    block_size: int = 512
    allowed_primaries: tuple[str, ...] = ()
    failback_journal: str | None = None

    def to_dict(self) -> dict:
        d: dict = {"uuid": self.uuid, "mirror": self.mirror, "size_bytes": self.size_bytes,
                   "block_size": self.block_size}
        if self.allowed_primaries:                  # absent unless set: older files unchanged
            d["allowed_primaries"] = list(self.allowed_primaries)
        if self.failback_journal is not None:
            d["failback_journal"] = self.failback_journal
        return d

    @classmethod
    def from_dict(cls, name: str, d: object) -> Replica:
        if not isinstance(d, dict):
            raise ModelError(f"replica {name!r} is not an object")
        allowed = d.get("allowed_primaries", [])
        if not isinstance(allowed, list):
            raise ModelError(f"replica {name!r}: allowed_primaries is not a list")
        return make_replica(name, d.get("uuid", ""), d.get("mirror", ""),
                            d.get("size_bytes"), d.get("block_size", 512),
                            allowed_primaries=allowed,
                            failback_journal=d.get("failback_journal"))


def parse_path(value: object, what: str, example: str) -> str:
    """An absolute path without '..' (a device or a file the daemons open)."""
    text = str(value or "")
    if not text.startswith("/") or ".." in text.split("/"):
        raise ModelError(f"{what} {text!r} must be an absolute path ({example})")
    return text


def make_replica(name: str, volume_uuid: object, mirror: object, size_bytes: object,
                 block_size: object = 512, *, allowed_primaries: object = (),
                 failback_journal: object = None) -> Replica:
    name = parse_name(name, "replica name")
    if volume_uuid is None or str(volume_uuid) == "":
        raise ModelError("uuid is missing: give the volume uuid of the primary that will "
                         "replicate into it")
    try:
        vid = str(uuidlib.UUID(str(volume_uuid)))
    except ValueError as err:
        raise ModelError(f"uuid {volume_uuid!r} is not a uuid: give the volume uuid the "
                         f"primary's '/replication/volumes/<name> info' shows") from err
    mirror = parse_path(mirror, "mirror", "a block device such as /dev/vg/replica, or a file")
    try:
        bs = int(str(block_size))
        size = int(str(size_bytes))
    except ValueError as err:
        raise ModelError(f"size_bytes={size_bytes!r} and block_size={block_size!r} must be "
                         f"whole numbers of bytes") from err
    if bs not in (512, 4096):
        raise ModelError(f"block_size={bs}: use 512 or 4096, the primary volume's")
    if size <= 0 or size % bs:
        raise ModelError(f"size_bytes={size} must be a positive multiple of block_size {bs}: "
                         f"the primary volume's size")
    allowed = tuple(parse_name(str(p), "allowed primary") for p in allowed_primaries or ())
    journal = None
    if failback_journal is not None and str(failback_journal) != "":
        journal = parse_path(failback_journal, "failback_journal",
                             "this site's journal from when it was the primary of that "
                             "mirror, e.g. /var/lib/appliance/journals/vol1.jnl")
        if journal == mirror:
            raise ModelError(f"failback_journal {journal!r} is the mirror itself: give the "
                             f"journal of the backstore that served {mirror}")
    return Replica(name, vid, mirror, size, bs, allowed, journal)


# The exporter's thresholds and webhook are the exporter's own types (one set of defaults).
Alerts = AlertThresholds
Webhook = WebhookConfig


@dataclass(frozen=True)
class Monitoring:
    """What the exporter is told (exporter.toml): where it listens, how often it evaluates the
    alerts, their thresholds, and the webhook (None: no webhook)."""

    address: str = DEFAULT_EXPORTER_ADDRESS
    port: int = DEFAULT_EXPORTER_PORT
    interval: float = DEFAULT_EXPORTER_INTERVAL
    alerts: Alerts = field(default_factory=Alerts)
    webhook: Webhook | None = None

    @property
    def listen(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def to_dict(self) -> dict:
        webhook = None if self.webhook is None else {
            "url": self.webhook.url, "timeout_s": self.webhook.timeout_s,
            "queue_size": self.webhook.queue_size}
        return {"address": self.address, "port": self.port, "interval": self.interval,
                "alerts": self.alerts.as_dict(), "webhook": webhook}

    @classmethod
    def from_dict(cls, d: object) -> Monitoring:
        """site.json's ``monitoring`` (absent: the defaults)."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ModelError("'monitoring' is not an object")
        names = {k: f"monitoring.{v}" for k, v in _JSON_NAMES.items()}
        raw_alerts = d.get("alerts") if d.get("alerts") is not None else {}
        if not isinstance(raw_alerts, dict):
            raise ModelError("'monitoring.alerts' is not an object")
        defaults = Alerts()
        alerts = Alerts(
            journal_high_water_percent=parse_percent(raw_alerts.get(
                "journal_high_water_percent", defaults.journal_high_water_percent),
                names["journal_high_water_percent"]),
            journal_clear_percent=parse_percent(raw_alerts.get(
                "journal_clear_percent", defaults.journal_clear_percent),
                names["journal_clear_percent"]),
            recovery_point_age_s=parse_duration(raw_alerts.get(
                "recovery_point_age_s", defaults.recovery_point_age_s),
                names["recovery_point_age_s"]),
            link_down_s=parse_duration(raw_alerts.get("link_down_s", defaults.link_down_s),
                                       names["link_down_s"]))
        m = cls(address=parse_ip(d.get("address", DEFAULT_EXPORTER_ADDRESS), names["address"]),
                port=parse_port(d.get("port", DEFAULT_EXPORTER_PORT), names["port"]),
                interval=parse_duration(d.get("interval", DEFAULT_EXPORTER_INTERVAL),
                                        names["interval"]),
                alerts=alerts, webhook=_webhook_from_dict(d.get("webhook"), names))
        check_monitoring(m, names)
        return m


def _webhook_from_dict(raw: object, names: dict[str, str]) -> Webhook | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelError("'monitoring.webhook' is neither null nor an object")
    url = parse_webhook_url(raw.get("url"), names["url"])
    if url is None:
        raise ModelError(f"{names['url']} is missing: give the URL, or make "
                         f"'monitoring.webhook' null")
    defaults = Webhook(url)
    return Webhook(url, parse_duration(raw.get("timeout_s", defaults.timeout_s),
                                       names["timeout_s"]),
                   parse_count(raw.get("queue_size", defaults.queue_size), names["queue_size"]))


# site.json's keys and the shell's parameters (/replication/monitoring), by Monitoring field.
_JSON_NAMES = {"address": "address", "port": "port", "interval": "interval",
               "journal_high_water_percent": "alerts.journal_high_water_percent",
               "journal_clear_percent": "alerts.journal_clear_percent",
               "recovery_point_age_s": "alerts.recovery_point_age_s",
               "link_down_s": "alerts.link_down_s", "url": "webhook.url",
               "timeout_s": "webhook.timeout_s", "queue_size": "webhook.queue_size"}
SHELL_NAMES = {"address": "address", "port": "port", "interval": "interval",
               "journal_high_water_percent": "journal_high_water",
               "journal_clear_percent": "journal_clear",
               "recovery_point_age_s": "recovery_point_age", "link_down_s": "link_down",
               "url": "webhook", "timeout_s": "webhook_timeout", "queue_size": "webhook_queue"}
EXPORTER_SETTINGS = ("address", "port", "interval")
ALERT_SETTINGS = ("journal_high_water", "journal_clear", "recovery_point_age", "link_down",
                  "webhook", "webhook_timeout", "webhook_queue")


def changed_monitoring(m: Monitoring, changes: dict[str, object]) -> Monitoring:
    """``m`` with the shell's parameters (``EXPORTER_SETTINGS``, ``ALERT_SETTINGS``) parsed
    and checked together (journal_clear against journal_high_water); ModelError naming the
    parameter and what to give otherwise."""
    unknown = sorted(set(changes) - set(EXPORTER_SETTINGS) - set(ALERT_SETTINGS))
    if unknown:
        raise ModelError(f"{', '.join(unknown)}: not a monitoring setting (exporter: "
                         f"{', '.join(EXPORTER_SETTINGS)}; alerts: {', '.join(ALERT_SETTINGS)})")
    new, alerts = m, m.alerts
    if "address" in changes:
        new = replace(new, address=parse_ip(changes["address"]))
    if "port" in changes:
        new = replace(new, port=parse_port(changes["port"]))
    if "interval" in changes:
        new = replace(new, interval=parse_duration(changes["interval"], "interval"))
    for param, key, parse in (("journal_high_water", "journal_high_water_percent", parse_percent),
                              ("journal_clear", "journal_clear_percent", parse_percent),
                              ("recovery_point_age", "recovery_point_age_s", parse_duration),
                              ("link_down", "link_down_s", parse_duration)):
        if param in changes:
            alerts = replace(alerts, **{key: parse(changes[param], param)})
    webhook = new.webhook
    if "webhook" in changes:
        url = parse_webhook_url(changes["webhook"])
        webhook = None if url is None else (
            replace(webhook, url=url) if webhook is not None else Webhook(url))
    for param in ("webhook_timeout", "webhook_queue"):
        if param in changes and webhook is None:
            raise ModelError(f"{param}: no webhook is set; give webhook=https://... with it")
    if "webhook_timeout" in changes:
        webhook = replace(webhook, timeout_s=parse_duration(changes["webhook_timeout"],
                                                            "webhook_timeout"))
    if "webhook_queue" in changes:
        webhook = replace(webhook, queue_size=parse_count(changes["webhook_queue"],
                                                          "webhook_queue"))
    new = replace(new, alerts=alerts, webhook=webhook)
    check_monitoring(new, SHELL_NAMES)
    return new


@dataclass(frozen=True)
class Site:
    identity: str | None = None        # None until first use: then the host name
    listen: str = DEFAULT_LISTEN
    peers: dict[str, Peer] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)
    monitoring: Monitoring = field(default_factory=Monitoring)
    groups: dict[str, Group] = field(default_factory=dict)
    kernel_tls: bool = False            # the link's encryption in the kernel (kTLS)

    def to_dict(self) -> dict:
        d = {"version": FORMAT_VERSION, "identity": self.identity, "listen": self.listen,
             "peers": {n: p.to_dict() for n, p in sorted(self.peers.items())},
             "volumes": {n: v.to_dict() for n, v in sorted(self.volumes.items())},
             "replicas": {n: r.to_dict() for n, r in sorted(self.replicas.items())},
             "monitoring": self.monitoring.to_dict()}
        if self.groups:                 # absent unless set: files without groups unchanged
            d["groups"] = {n: g.to_dict() for n, g in sorted(self.groups.items())}
        if self.kernel_tls:             # likewise
            d["kernel_tls"] = True
        return d

    def volumes_of_peer(self, peer: str) -> list[str]:
        """The volumes and groups that replicate to ``peer``."""
        return sorted([n for n, v in self.volumes.items() if v.peer == peer]
                      + [n for n, g in self.groups.items() if g.peer == peer])

    @classmethod
    def from_dict(cls, d: object, where: Path) -> Site:
        fix = f"; repair or move away {where} (it holds the site identity and peers)"
        if not isinstance(d, dict):
            raise ModelError(f"{where} is not a JSON object{fix}")
        version = d.get("version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            if isinstance(version, int) and not isinstance(version, bool) \
                    and version > FORMAT_VERSION:
                raise ModelError(f"{where} has format version {version}, newer than this "
                                 f"release reads ({FORMAT_VERSION}): run the release that "
                                 f"wrote it")
            raise ModelError(f"{where} has format version {version!r}, expected "
                             f"{FORMAT_VERSION}{fix}")
        try:
            identity = d.get("identity")
            if identity is not None:
                identity = parse_name(identity, "identity")
            peers = {}
            for name, p in _table(d, "peers").items():
                if not isinstance(p, dict):
                    raise ModelError(f"peer {name!r} is not an object")
                peers[name] = Peer(parse_name(name, "peer name"),
                                   parse_address(p.get("address", "")),
                                   parse_fingerprint(p.get("fingerprint", "")))
            volumes = {n: Volume.from_dict(n, v) for n, v in _table(d, "volumes").items()}
            for vol in volumes.values():
                if vol.peer not in peers:
                    raise ModelError(f"volume {vol.name!r} replicates to peer {vol.peer!r}, "
                                     f"which is not paired")
            replicas = {n: Replica.from_dict(n, r) for n, r in _table(d, "replicas").items()}
            groups = {n: Group.from_dict(n, g) for n, g in _table(d, "groups").items()}
            for group in groups.values():
                if group.peer not in peers:
                    raise ModelError(f"group {group.name!r} replicates to peer "
                                     f"{group.peer!r}, which is not paired")
                if group.name in volumes:
                    raise ModelError(f"{group.name!r} is both a volume and a group")
            return cls(identity=identity, listen=parse_address(d.get("listen", ""), "listen"),
                       peers=peers, volumes=volumes, replicas=replicas,
                       monitoring=Monitoring.from_dict(d.get("monitoring")), groups=groups,
                       kernel_tls=parse_bool(d.get("kernel_tls", False), "kernel_tls"))
        except ModelError as err:
            raise ModelError(f"{where}: {err}{fix}") from err


def _table(d: dict, key: str) -> dict:
    raw = d.get(key, {})
    if not isinstance(raw, dict):
        raise ModelError(f"{key!r} is not an object")
    return raw


def site_from_json(text: str, where: Path) -> Site:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{where} is not JSON ({err}); repair or move it away (it holds "
                         f"the site identity and peers)") from err
    return Site.from_dict(d, where)


def site_to_json(site: Site) -> str:
    return json.dumps(site.to_dict(), indent=2, sort_keys=True) + "\n"


def host_identity() -> str:
    """The identity of a site that has none yet: the host name's first label."""
    return parse_name(socket.gethostname().split(".")[0], "host name")


class SiteStore:
    """``site.json`` in ``state_dir``: read fresh for every question, changed under a lock.

    The simple changes are one call each; a change that must also write other files (the
    daemons' configuration, a pinned certificate) takes ``locked()`` and ``save()`` itself,
    so site.json and those files change together or not at all (the lock is not re-entrant).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SITE_FILE

    def load(self) -> Site:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Site()
        except OSError as err:
            raise ModelError(f"cannot read {self.path}: {err}") from err
        return site_from_json(text, self.path)

    def ensure_identity(self) -> Site:
        """The site, its identity set to the host name on first use."""
        with self.locked():
            site = self.load()
            if site.identity is None:
                site = replace(site, identity=host_identity())
                self.save(site)
            return site

    def add_peer(self, name: str, address: str, fingerprint: str) -> Peer:
        peer = Peer(parse_name(name, "peer name"), parse_address(address),
                    parse_fingerprint(fingerprint))
        with self.locked():
            site = self.load()
            check_new_peer(site, peer)
            self.save(replace(site, peers={**site.peers, peer.name: peer}))
        return peer

    def remove_peer(self, name: str) -> Peer:
        with self.locked():
            site = self.load()
            peer = known_peer(site, name)
            check_peer_unused(site, name)
            self.save(replace(site, peers={n: p for n, p in site.peers.items() if n != name}))
        return peer

    def update_volume(self, name: str, **changes: object) -> Volume:
        """Change a volume's settings (``paused``, ``bandwidth_limit``, ``blackout``),
        checked by the transmitter's rules; ModelError (naming the key) changes nothing.
        Strings are parsed as the shell passes them (``parse_bool``, ``parse_bandwidth``,
        ``parse_blackout``). The transmitter's TOML is rewritten by the caller
        (``ReplicationContext.apply_volume``)."""
        allowed = ("paused", "bandwidth_limit", "blackout")
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ModelError(f"{', '.join(unknown)}: not a volume setting (settings: "
                             f"{', '.join(allowed)})")
        with self.locked():
            site = self.load()
            vol = known_volume(site, name)
            new = changed_volume(vol, **changes)
            if new != vol:
                self.save(replace(site, volumes={**site.volumes, name: new}))
        return new

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / ".site.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, site: Site) -> None:
        """Replace site.json (under ``locked()``): a crash leaves the old file or the new
        one, never a torn one."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_text_atomic(self.path, site_to_json(site))


# --- checks shared by the store and the shell's operations --------------------------------


def known_peer(site: Site, name: str, *, to_replicate: bool = False) -> Peer:
    """The peer of that name; ``to_replicate``: the refusal says how to pair it."""
    if name not in site.peers:
        known = ", ".join(sorted(site.peers)) or "none"
        how = (f": pair it first with /replication/peers create name={name} address=... "
               f"fingerprint=..." if to_replicate else "")
        raise ModelError(f"no peer named {name!r} (peers: {known}){how}")
    return site.peers[name]


def known_volume(site: Site, name: str) -> Volume:
    if name not in site.volumes:
        known = ", ".join(sorted(site.volumes)) or "none"
        raise ModelError(f"no replicated volume named {name!r} (volumes: {known})")
    return site.volumes[name]


def check_new_peer(site: Site, peer: Peer) -> None:
    if peer.name in site.peers:
        raise ModelError(f"peer name {peer.name!r} is in use (address "
                         f"{site.peers[peer.name].address}): choose another name, "
                         f"or delete name={peer.name} first")
    for other in site.peers.values():
        if other.fingerprint == peer.fingerprint:
            raise ModelError(f"fingerprint {peer.fingerprint} is already paired as "
                             f"peer {other.name!r}: one peer, one name")


def check_new_replica(site: Site, replica: Replica) -> None:
    if replica.name in site.replicas:
        raise ModelError(f"replica name {replica.name!r} is in use: choose another")
    for other in site.replicas.values():
        if other.uuid == replica.uuid:
            raise ModelError(f"volume {replica.uuid} already has replica {other.name!r}")


def check_peer_unused(site: Site, name: str) -> None:
    users = site.volumes_of_peer(name)
    if users:
        where = "groups" if users[0] in site.groups else "volumes"
        raise ModelError(f"peer {name!r} is used by volume(s) {', '.join(users)}: delete "
                         f"them first (/replication/{where} delete name={users[0]})")


def changed_volume(vol: Volume, **changes: object) -> Volume:
    new = vol
    if "paused" in changes:
        new = replace(new, paused=parse_bool(changes["paused"], "paused"))
    if "bandwidth_limit" in changes:
        new = replace(new, bandwidth_limit=parse_bandwidth(changes["bandwidth_limit"]))
    if "blackout" in changes:
        new = replace(new, blackout=parse_blackout(changes["blackout"]))
    check_settings(vol.name, paused=new.paused, bandwidth_limit=new.bandwidth_limit,
                   blackout=new.blackout)
    return new
