"""HandlerConfig.load: the [handler] table, strict (appliance/config_file.py): unknown keys and
tables refused with the closest known one, wrong types refused, defaults are the fields'."""

from dataclasses import fields
from pathlib import Path

import pytest

from appliance.config_file import ConfigError
from appliance.tcmu.daemon import HandlerConfig


def load(tmp_path: Path, text: str) -> HandlerConfig:
    path = tmp_path / "handler.toml"
    path.write_text(text)
    return HandlerConfig.load(path)


def test_no_file_and_an_empty_table_give_the_fields_defaults(tmp_path):
    assert HandlerConfig.load(None) == HandlerConfig()
    assert load(tmp_path, "") == HandlerConfig()
    assert load(tmp_path, "[handler]\n") == HandlerConfig()


def test_every_field_is_a_setting_of_its_defaults_type(tmp_path):
    cfg = load(tmp_path, '[handler]\nsysfs_class_uio = "/x/uio"\ndev_dir = "/x/dev"\n'
                         'dbus = "unix:path=/run/bus"\nnetlink = false\npoll_interval = 1\n'
                         'log_level = "debug"\ncontrol_socket = "/x/h.sock"\n'
                         'ring_spin_us = 1500\n')
    assert cfg.sysfs_class_uio == Path("/x/uio") and cfg.control_socket == Path("/x/h.sock")
    assert cfg.netlink is False and cfg.poll_interval == 1.0 and cfg.log_level == "DEBUG"
    assert cfg.ring_spin_us == 1500
    assert {f.name for f in fields(HandlerConfig)} >= {"udev", "configfs_core"}


@pytest.mark.parametrize("text, words", [
    ("[handler]\nsysfs_uio = \"/x\"\n",
     "unknown setting [handler] sysfs_uio: did you mean sysfs_class_uio?"),
    ("[handler]\nlog_levl = \"INFO\"\n", "unknown setting [handler] log_levl: did you mean "
                                         "log_level?"),
    ("[handler]\ncolour = true\n", "unknown setting [handler] colour: the closest known is"),
    ("[handlr]\nudev = false\n", "unknown table [handlr]: did you mean [handler]?"),
    ("udev = false\n", "unknown setting udev: the closest known is [handler]"),
    ("handler = 1\n", "[handler] must be a table, got 1"),
    ('[handler]\npoll_interval = "fast"\n', "[handler] poll_interval must be float, got 'fast'"),
    ("[handler]\npoll_interval = true\n", "[handler] poll_interval must be float, got True"),
    ("[handler]\nnetlink = 1\n", "[handler] netlink must be bool, got 1"),
    ("[handler]\ndev_dir = 5\n", "[handler] dev_dir must be str, got 5"),
    ("[handler]\npoll_interval = 0\n", "[handler] poll_interval must be positive seconds"),
    ("[handler]\nring_spin_us = -1\n", "[handler] ring_spin_us must be 0 (off) to 20000 "
                                        "microseconds, got -1"),
    ("[handler]\nring_spin_us = 50000\n", "[handler] ring_spin_us must be 0 (off) to 20000"),
    ("[handler]\nring_spin_us = 0.5\n", "[handler] ring_spin_us must be int, got 0.5"),
    ('[handler]\nlog_level = "loud"\n', "[handler] log_level must be one of DEBUG, INFO"),
    ('[handler]\ndbus = "sytem"\n', "[handler] dbus must be \"system\", \"session\""),
    ("[handler\n", "is not valid TOML"),
])
def test_bad_files_are_refused_naming_the_file_and_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    message = str(exc.value)
    assert words in message and str(tmp_path / "handler.toml") in message, message
    assert "\n" not in message
