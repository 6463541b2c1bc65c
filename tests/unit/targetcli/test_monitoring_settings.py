"""The monitoring settings in site.json and the exporter.toml rendered from them: the shell's
parsers (durations, percentages, ports, addresses, webhook URLs), the ranges the exporter takes
(checked against the exporter's own parser, so the two cannot drift), site.json format 3 with
formats 1 and 2 still loading, and the rendered text read back by the exporter's parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config_file import ConfigError
from appliance.exporter.config import parse_exporter_config
from targetcli_ext import daemon_config as dc
from targetcli_ext.model import (
    ALERT_SETTINGS,
    EXPORTER_SETTINGS,
    ModelError,
    Monitoring,
    Site,
    SiteStore,
    changed_monitoring,
    format_duration,
    parse_duration,
    parse_percent,
    parse_port,
    parse_webhook_url,
    site_from_json,
    site_to_json,
)

LAYOUT = dc.Layout(Path("/var/lib/appliance/replication"), Path("/var/lib/appliance/replicas"),
                   Path("/run/appliance"))
HANDLER = Path("/run/appliance-handler/handler.sock")
FP = "SHA256:" + "AB" * 32


def rendered(m: Monitoring, identity: str = "site-a"):
    """exporter.toml's text for ``m``, and what the exporter reads in it."""
    text = dc.to_toml(dc.exporter_document(Site(identity=identity, monitoring=m), LAYOUT,
                                           HANDLER))
    return text, parse_exporter_config(text, "exporter.toml")


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("300", 300.0), ("60s", 60.0), ("5m", 300.0),
                                           ("1h", 3600.0), ("1.5m", 90.0), ("500ms", 0.5),
                                           (" 2S ", 2.0), (7, 7.0), (2.5, 2.5)])
def test_durations(text, seconds):
    assert parse_duration(text, "link_down") == seconds


@pytest.mark.parametrize("text, message", [
    ("soon", "link_down='soon' does not parse: give seconds or a duration with s, m or h, "
             "e.g. link_down=60s or link_down=5m"),
    ("0", "link_down='0' must be more than 0 seconds"),
    ("-5s", "link_down='-5s' does not parse"),
    ("5d", "link_down='5d' does not parse"),
    (True, "link_down=True does not parse"),
])
def test_bad_durations_name_the_setting(text, message):
    with pytest.raises(ModelError) as info:
        parse_duration(text, "link_down")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("seconds, shown", [(300, "5m"), (60, "1m"), (90, "90s"), (0.5, "0.5s"),
                                            (7200, "2h"), (2.0, "2s")])
def test_durations_show_as_typed_and_read_back(seconds, shown):
    assert format_duration(seconds) == shown
    assert parse_duration(shown, "x") == seconds


def test_percent_port_and_url():
    assert parse_percent("80", "p") == parse_percent("80%", "p") == parse_percent(80, "p") == 80.0
    assert parse_percent("72.5 %", "p") == 72.5
    assert parse_port("9477") == 9477
    assert parse_webhook_url("none") is None and parse_webhook_url("OFF") is None
    assert parse_webhook_url("http://[2001:db8::1]:8080/a?b=c") == "http://[2001:db8::1]:8080/a?b=c"
    for bad, message in [("eighty", "p='eighty' is not a percentage")]:
        with pytest.raises(ModelError, match=message):
            parse_percent(bad, "p")
    for bad in ("0", "65536", "http", "-1", "9477.5"):
        with pytest.raises(ModelError, match="is not a port: give a number from 1 to 65535"):
            parse_port(bad)


@pytest.mark.parametrize("url, message", [
    ("ftp://ops.example/hook", "is not an http:// or https:// URL"),
    ("ops.example/hook", "is not an http:// or https:// URL"),
    ("https://", "has no host"),
    ("https:///hook", "has no host"),
    ("http://ops.example:99999/", "does not parse (Port out of range"),
    ("http://ops.example:port/", "does not parse ("),
    ("https://ops.example/a hook", "does not parse (empty, or spaces or control characters)"),
    ("", "does not parse (empty"),
])
def test_webhook_urls_that_do_not_parse(url, message):
    with pytest.raises(ModelError) as info:
        parse_webhook_url(url)
    assert message in str(info.value)
    assert "webhook=https://ops.example/hook, or webhook=none" in str(info.value)


# --- the ranges are the exporter's ---------------------------------------------------------


EDGES = [
    {"interval": "0.2s"}, {"interval": "0.1s"}, {"interval": "60s"}, {"interval": "61s"},
    {"journal_high_water": "1", "journal_clear": "0"}, {"journal_high_water": "0"},
    {"journal_high_water": "100"}, {"journal_high_water": "100.5"},
    {"journal_high_water": "80", "journal_clear": "79"},
    {"journal_high_water": "80", "journal_clear": "79.5"},
    {"journal_clear": "0"}, {"journal_clear": "80"},
    {"recovery_point_age": "1ms"}, {"link_down": "0.001"},
    {"webhook": "https://h/", "webhook_timeout": "60s"},
    {"webhook": "https://h/", "webhook_timeout": "61s"},
    {"webhook": "https://h/", "webhook_queue": "1"},
    {"webhook": "https://h/", "webhook_queue": "0"},
    {"webhook": "https://h/", "webhook_queue": "1000000"},
    {"webhook": "https://h/", "webhook_queue": "1000001"},
    {"port": "1"}, {"port": "65535"},
]


@pytest.mark.parametrize("changes", EDGES, ids=[" ".join(f"{k}={v}" for k, v in e.items())
                                                for e in EDGES])
def test_the_shell_accepts_exactly_what_the_exporter_accepts(changes):
    """The shell's check and the exporter's parser, on each edge of each range."""
    try:
        m = changed_monitoring(Monitoring(), changes)
    except ModelError as err:
        shell_refuses = str(err)
    else:
        shell_refuses = None
    # the exporter's verdict on the same values, written straight into its file
    doc = dc.exporter_document(Site(identity="s"), LAYOUT, HANDLER)
    keys = {"interval": (None, "interval"), "port": (None, "port"),
            "journal_high_water": ("alerts", "journal_high_water_percent"),
            "journal_clear": ("alerts", "journal_clear_percent"),
            "recovery_point_age": ("alerts", "recovery_point_age_s"),
            "link_down": ("alerts", "link_down_s"), "webhook": ("webhook", "url"),
            "webhook_timeout": ("webhook", "timeout_s"),
            "webhook_queue": ("webhook", "queue_size")}
    for param, text in changes.items():
        table, key = keys[param]
        value = text if param == "webhook" else (
            parse_duration(text, param) if param in ("interval", "recovery_point_age",
                                                     "link_down", "webhook_timeout")
            else float(text) if param.startswith("journal") else int(text))
        (doc.setdefault(table, {}) if table else doc)[key] = value
    try:
        parse_exporter_config(dc.to_toml(doc))
    except ConfigError as err:
        exporter_refuses = str(err)
    else:
        exporter_refuses = None
    assert (shell_refuses is None) == (exporter_refuses is None), (shell_refuses,
                                                                   exporter_refuses)
    if shell_refuses is None:
        assert rendered(m)[1].alerts.as_dict() == m.alerts.as_dict()
    else:
        assert shell_refuses.startswith(tuple(changes))       # names the parameter


def test_refusals_say_what_to_give():
    with pytest.raises(ModelError) as info:
        changed_monitoring(Monitoring(), {"journal_high_water": "75", "journal_clear": "75"})
    assert str(info.value) == ("journal_clear=75 must be at least 1 below journal_high_water "
                               "(75): the alert clears when the journal drains below it; give "
                               "0 to 74")
    with pytest.raises(ModelError, match=r"^interval=2m is out of range: from 0.2s to 60s"):
        changed_monitoring(Monitoring(), {"interval": "2m"})
    with pytest.raises(ModelError, match=r"^webhook_timeout: no webhook is set; give "
                                         r"webhook=https://\.\.\. with it$"):
        changed_monitoring(Monitoring(), {"webhook_timeout": "5s"})
    with pytest.raises(ModelError, match=r"^speed: not a monitoring setting \(exporter: "
                                         r"address, port, interval; alerts: journal_high_water"):
        changed_monitoring(Monitoring(), {"speed": "1"})
    with pytest.raises(ModelError, match=r"^address='ops.example' is not an IP address"):
        changed_monitoring(Monitoring(), {"address": "ops.example"})


def test_a_webhook_keeps_its_timeout_when_its_url_changes_and_goes_with_none():
    m = changed_monitoring(Monitoring(), {"webhook": "https://a/", "webhook_timeout": "10s",
                                          "webhook_queue": "50"})
    m = changed_monitoring(m, {"webhook": "https://b/"})
    assert (m.webhook.url, m.webhook.timeout_s, m.webhook.queue_size) == ("https://b/", 10.0, 50)
    assert changed_monitoring(m, {"webhook": "none"}).webhook is None


def test_every_shell_parameter_changes_what_it_names():
    m = changed_monitoring(Monitoring(), {
        "address": "::1", "port": "9500", "interval": "500ms", "journal_high_water": "95%",
        "journal_clear": "90", "recovery_point_age": "15m", "link_down": "2m",
        "webhook": "https://ops.example/hook", "webhook_timeout": "20s", "webhook_queue": "10"})
    assert set(EXPORTER_SETTINGS) | set(ALERT_SETTINGS) == {
        "address", "port", "interval", "journal_high_water", "journal_clear",
        "recovery_point_age", "link_down", "webhook", "webhook_timeout", "webhook_queue"}
    text, cfg = rendered(m)
    assert (cfg.address, cfg.port, cfg.interval, cfg.listen) == ("::1", 9500, 0.5, "[::1]:9500")
    assert cfg.alerts.as_dict() == {"journal_high_water_percent": 95.0,
                                    "journal_clear_percent": 90.0,
                                    "recovery_point_age_s": 900.0, "link_down_s": 120.0}
    assert (cfg.webhook.url, cfg.webhook.timeout_s, cfg.webhook.queue_size) == \
        ("https://ops.example/hook", 20.0, 10)


# --- rendering ----------------------------------------------------------------------------


def test_the_default_exporter_toml_listens_on_loopback_and_reads_back():
    text, cfg = rendered(Monitoring())
    assert text.startswith(dc.HEADER)
    assert (cfg.identity, cfg.address, cfg.port, cfg.interval) == ("site-a", "127.0.0.1", 9477,
                                                                   2.0)
    assert cfg.state_dir == Path("/var/lib/appliance/exporter")
    assert cfg.run_dir == Path("/run/appliance") and cfg.handler_socket == HANDLER
    assert cfg.control_socket == LAYOUT.exporter_socket
    assert cfg.webhook is None and "[webhook]" not in text


def test_a_document_the_exporter_refuses_is_refused_naming_the_exporter():
    doc = dc.exporter_document(Site(identity="s"), LAYOUT, HANDLER)
    doc["alerts"]["journal_clear_percent"] = 99.5
    with pytest.raises(ModelError, match=r"^the exporter would refuse its configuration: "
                                         r".*exporter.toml: \[alerts\] journal_clear_percent"):
        dc.check_exporter(doc, LAYOUT.exporter_toml)


# --- site.json ------------------------------------------------------------------------------


def test_format_2_and_1_files_load_with_the_default_monitoring(tmp_path):
    for version, extra in ((2, ', "volumes": {}, "replicas": {}'), (1, "")):
        (tmp_path / "site.json").write_text(
            f'{{"version": {version}, "identity": "site-a", "listen": "0.0.0.0:7700", '
            f'"peers": {{"dr": {{"address": "192.0.2.2:7700", "fingerprint": "{FP}"}}}}'
            f'{extra}}}')
        site = SiteStore(tmp_path).load()
        assert site.monitoring == Monitoring() and list(site.peers) == ["dr"]


def test_format_3_round_trips_the_monitoring_section():
    m = changed_monitoring(Monitoring(), {"port": "9500", "webhook": "https://ops.example/h",
                                          "recovery_point_age": "10m"})
    text = site_to_json(Site(identity="site-a", monitoring=m))
    doc = json.loads(text)
    assert doc["version"] == 3
    assert doc["monitoring"] == {
        "address": "127.0.0.1", "port": 9500, "interval": 2.0,
        "alerts": {"journal_high_water_percent": 80.0, "journal_clear_percent": 70.0,
                   "recovery_point_age_s": 600.0, "link_down_s": 60.0},
        "webhook": {"url": "https://ops.example/h", "timeout_s": 5.0, "queue_size": 1000}}
    assert site_from_json(text, Path("site.json")).monitoring == m


@pytest.mark.parametrize("monitoring, message", [
    ({"port": 70000}, "monitoring.port=70000 is not a port"),
    ({"alerts": {"journal_clear_percent": 90.0}},
     "monitoring.alerts.journal_clear_percent=90 must be at least 1 below "
     "monitoring.alerts.journal_high_water_percent (80)"),
    ({"webhook": {"url": "ftp://x"}}, "monitoring.webhook.url='ftp://x' is not an http://"),
    ({"webhook": {"timeout_s": 5}}, "monitoring.webhook.url is missing"),
    ({"address": "everywhere"}, "monitoring.address='everywhere' is not an IP address"),
    ([], "'monitoring' is not an object"),
])
def test_a_damaged_monitoring_section_is_refused_naming_the_key(tmp_path, monitoring, message):
    doc = {"version": 3, "identity": "site-a", "listen": "0.0.0.0:7700",
           "monitoring": monitoring}
    with pytest.raises(ModelError) as info:
        site_from_json(json.dumps(doc), tmp_path / "site.json")
    assert message in str(info.value)
    assert f"repair or move away {tmp_path / 'site.json'}" in str(info.value)


def test_a_newer_format_is_refused():
    with pytest.raises(ModelError, match="format version 4, newer than this release reads "
                                         r"\(3\)"):
        site_from_json('{"version": 4}', Path("site.json"))
