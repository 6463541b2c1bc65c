"""The exporter's configuration file (``appliance-exporter --config exporter.toml``), strict.

The shell renders it from site.json ("monitoring") and checks the text with
``parse_exporter_config`` before writing it; the exporter loads the same way. As every
appliance file (appliance/config_file.py): an unknown key or table, a value of the wrong type
or out of range is a ConfigError naming the file, the key and what to fix.

    identity = "site-a"                 # this appliance's name in webhook payloads
                                        # (default: the host name)
    address = "127.0.0.1"               # IP address the HTTP endpoint binds (default loopback;
                                        # "0.0.0.0" / "::" only when written)
    port = 9477
    interval = 2.0                      # seconds between alert evaluations (0.2 .. 60)
    state_dir = "/var/lib/appliance/exporter"     # alerts.json
    run_dir = "/run/appliance"                    # daemons' sockets, exporter.sock
    handler_socket = "/run/appliance-handler/handler.sock"

    [alerts]
    journal_high_water_percent = 80.0   # raise at >=; 1 .. 100
    journal_clear_percent = 70.0        # clear below; 0 .. high water - 1
    recovery_point_age_s = 300.0        # > 0
    link_down_s = 60.0                  # > 0

    [webhook]                           # optional: no table, no webhook
    url = "https://ops.example/hook"    # http or https with a host
    timeout_s = 5.0                     # > 0, at most 60
    queue_size = 1000                   # 1 .. 1000000 events held for delivery
"""

from __future__ import annotations

import ipaddress
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config_file import ConfigError, Where, check_table, setting

__all__ = ["AlertThresholds", "ConfigError", "ExporterConfig", "WebhookConfig",
           "exporter_config", "load_exporter_config", "parse_exporter_config"]

DEFAULT_PORT = 9477
MIN_INTERVAL, MAX_INTERVAL = 0.2, 60.0
MAX_WEBHOOK_TIMEOUT = 60.0
MAX_QUEUE = 1_000_000


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    journal_high_water_percent: float = 80.0
    journal_clear_percent: float = 70.0
    recovery_point_age_s: float = 300.0
    link_down_s: float = 60.0

    def as_dict(self) -> dict[str, float]:
        return {"journal_high_water_percent": self.journal_high_water_percent,
                "journal_clear_percent": self.journal_clear_percent,
                "recovery_point_age_s": self.recovery_point_age_s,
                "link_down_s": self.link_down_s}


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0
    queue_size: int = 1000


@dataclass(frozen=True, kw_only=True)
class ExporterConfig:
    identity: str = ""                  # "": the host name (the daemon fills it in)
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    interval: float = 2.0
    state_dir: Path = Path("/var/lib/appliance/exporter")
    run_dir: Path = Path("/run/appliance")
    handler_socket: Path = Path("/run/appliance-handler/handler.sock")
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    webhook: WebhookConfig | None = None

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "exporter.sock"

    @property
    def alerts_file(self) -> Path:
        return self.state_dir / "alerts.json"

    @property
    def listen(self) -> str:
        """``address:port`` as the admin writes it (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


TOP_KEYS = {"identity": str, "address": str, "port": int, "interval": float,
            "state_dir": str, "run_dir": str, "handler_socket": str,
            "alerts": dict, "webhook": dict}
ALERT_KEYS = {"journal_high_water_percent": float, "journal_clear_percent": float,
              "recovery_point_age_s": float, "link_down_s": float}
WEBHOOK_KEYS = {"url": str, "timeout_s": float, "queue_size": int}


def _address(text: str, where: Where) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError as err:
        raise where.error("address", f"{text!r} must be an IP address of this appliance "
                                     f"(e.g. its management address, or 127.0.0.1)") from err


def _path(d: dict, key: str, where: Where) -> Path:
    value = setting(d, key, ExporterConfig, where)
    if isinstance(value, str):
        if not value:
            raise where.error(key, "is empty: give a path")
        value = Path(value)
    return value


def _alerts(raw: dict, where: Where) -> AlertThresholds:
    d = check_table(raw, ALERT_KEYS, where)
    high = setting(d, "journal_high_water_percent", AlertThresholds, where)
    if not 1 <= high <= 100:
        raise where.error("journal_high_water_percent", f"must be 1 .. 100, got {high}")
    clear = setting(d, "journal_clear_percent", AlertThresholds, where)
    if not 0 <= clear <= high - 1:
        raise where.error("journal_clear_percent",
                          f"must be 0 .. {high - 1:g} (at least 1 below "
                          f"journal_high_water_percent {high:g}), got {clear}")
    values = {"journal_high_water_percent": high, "journal_clear_percent": clear}
    for key in ("recovery_point_age_s", "link_down_s"):
        value = setting(d, key, AlertThresholds, where)
        if value <= 0:
            raise where.error(key, f"must be > 0 seconds, got {value}")
        values[key] = value
    return AlertThresholds(**values)


def _webhook(raw: dict, where: Where) -> WebhookConfig:
    d = check_table(raw, WEBHOOK_KEYS, where)
    if "url" not in d:
        raise where.error("url", "is missing: give the URL to POST alerts to (or remove "
                                 "[webhook])")
    url = d["url"]
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise where.error("url", f"{url!r} does not parse: no spaces or control characters; "
                                 f"write http(s)://host[:port]/path (percent-encode the rest)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is no number/out of range
    except ValueError as err:
        raise where.error("url", f"{url!r} does not parse ({err}): write "
                                 f"http(s)://host[:port]/path") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise where.error("url", f"{url!r} must be an http:// or https:// URL with a host, "
                                 f"e.g. https://ops.example/hook")
    timeout = setting(d, "timeout_s", WebhookConfig, where)
    if not 0 < timeout <= MAX_WEBHOOK_TIMEOUT:
        raise where.error("timeout_s", f"must be > 0 and at most {MAX_WEBHOOK_TIMEOUT:g} "
                                       f"seconds, got {timeout}")
    queue = setting(d, "queue_size", WebhookConfig, where)
    if not 1 <= queue <= MAX_QUEUE:
        raise where.error("queue_size", f"must be 1 .. {MAX_QUEUE}, got {queue}")
    return WebhookConfig(url=url, timeout_s=timeout, queue_size=queue)


def exporter_config(raw: dict, where: str = "exporter config") -> ExporterConfig:
    """``raw``: the parsed TOML; ``where``: the file's name for messages."""
    top = Where(where)
    d = check_table(raw, TOP_KEYS, top)
    port = setting(d, "port", ExporterConfig, top)
    if not 1 <= port <= 65535:
        raise top.error("port", f"must be 1 .. 65535, got {port}")
    interval = setting(d, "interval", ExporterConfig, top)
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise top.error("interval", f"must be {MIN_INTERVAL:g} .. {MAX_INTERVAL:g} seconds, "
                                    f"got {interval}")
    return ExporterConfig(
        identity=setting(d, "identity", ExporterConfig, top),
        address=_address(setting(d, "address", ExporterConfig, top), top),
        port=port, interval=interval,
        state_dir=_path(d, "state_dir", top), run_dir=_path(d, "run_dir", top),
        handler_socket=_path(d, "handler_socket", top),
        alerts=_alerts(d.get("alerts", {}), top.table("[alerts]")),
        webhook=_webhook(d["webhook"], top.table("[webhook]")) if "webhook" in d else None)


def parse_exporter_config(text: str, where: str = "exporter.toml") -> ExporterConfig:
    """The configuration in TOML ``text`` (what the shell renders, before it writes it)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where} is not valid TOML: {err}; fix that line") from err
    return exporter_config(raw, where)


def load_exporter_config(path: Path) -> ExporterConfig:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 text: {err}") from err
    return parse_exporter_config(text, str(path))
