"""Every appliance program starts the same way (appliance/daemon_entry.py): a configuration
error is one line naming the file, the key and the closest known key, exit code 2, nothing
started and nothing written; --version prints appliance.__version__; a stop signal outside an
event loop ends without a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import appliance
from appliance.config_file import ConfigError
from appliance.control import cli
from appliance.daemon_entry import CONFIG_ERROR_EXIT, argument_parser, report_config_error, run
from appliance.replication.dr import dr_tool, receiver
from appliance.replication.primary import transmitter
from appliance.tcmu import daemon

REPO = Path(__file__).resolve().parents[2]
VOL = "0b5e6a4c-0000-4000-8000-000000000001"


def transmitter_toml(root: Path, extra: str) -> str:
    return (f'identity = "site-a"\npeer = "127.0.0.1:7700"\npeer_identity = "dr-site"\n'
            f'journal = "{root / "journal"}"\nvolume_uuid = "{VOL}"\nsize_bytes = 1048576\n'
            f'control_socket = "{root / "tx.sock"}"\ninsecure = true\n{extra}')


def receiver_toml(root: Path, extra: str = "", volume_extra: str = "") -> str:
    return (f'identity = "dr-site"\nlisten = "127.0.0.1:7700"\nstate_dir = "{root / "replicas"}"\n'
            f'control_socket = "{root / "rx.sock"}"\ninsecure = true\n{extra}'
            f'[[volume]]\nuuid = "{VOL}"\nsize_bytes = 1048576\n{volume_extra}')


def handler_toml(root: Path, extra: str) -> str:
    return f'[handler]\ncontrol_socket = "{root / "handler.sock"}"\ndbus = "none"\n{extra}'


# program, module, main, how its bad file is written, arguments after --config
TYPO = {
    "appliance-transmitter": (transmitter.main, "appliance.replication.primary.transmitter",
                              lambda r: transmitter_toml(r, "bandwith_limit = 1000000\n"), []),
    "appliance-receiver": (receiver.main, "appliance.replication.dr.receiver",
                           lambda r: receiver_toml(r, "hartbeat_s = 0.5\n"), []),
    "appliance-dr": (dr_tool.main, "appliance.replication.dr.dr_tool",
                     lambda r: receiver_toml(r, "hartbeat_s = 0.5\n"), ["state"]),
    "appliance-handler": (daemon.main, "appliance.tcmu.daemon",
                          lambda r: handler_toml(r, "pol_interval = 0.1\n"), []),
}
EXPECTED_TYPO = {"appliance-transmitter": ("bandwith_limit", "bandwidth_limit"),
                 "appliance-receiver": ("hartbeat_s", "heartbeat_s"),
                 "appliance-dr": ("hartbeat_s", "heartbeat_s"),
                 "appliance-handler": ("[handler] pol_interval", "poll_interval")}
WRONG_TYPE = {
    "appliance-transmitter": (lambda r: transmitter_toml(r, 'batch_bytes = "1M"\n'),
                              "batch_bytes must be int, got '1M'"),
    "appliance-receiver": (lambda r: receiver_toml(r, volume_extra="block_size = 512.0\n"),
                           "[[volume]] #1 block_size must be int, got 512.0"),
    "appliance-dr": (lambda r: receiver_toml(r, "compression = 1\n"),
                     "compression must be bool, got 1"),
    "appliance-handler": (lambda r: handler_toml(r, 'udev = "no"\n'),
                          "[handler] udev must be bool, got 'no'"),
}


def written(root: Path) -> list[str]:
    """What a refused program left in its directory: nothing but its config."""
    return sorted(p.name for p in root.iterdir() if p.name != "bad.toml")


@pytest.mark.parametrize("prog", list(TYPO))
def test_a_typo_is_refused_in_one_line_with_exit_2_and_nothing_written(prog, tmp_path):
    _, module, text, after = TYPO[prog]
    config = tmp_path / "bad.toml"
    config.write_text(text(tmp_path))
    proc = subprocess.run([sys.executable, "-m", module, "--config", str(config), *after],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == CONFIG_ERROR_EXIT, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    key, closest = EXPECTED_TYPO[prog]
    assert lines[0].startswith(f"{prog}: {config}: unknown setting {key}: "), lines[0]
    assert f"did you mean {closest}?" in lines[0], lines[0]
    assert proc.stdout == ""
    assert written(tmp_path) == []


@pytest.mark.parametrize("prog", list(WRONG_TYPE))
def test_a_wrong_type_is_refused_naming_the_key_with_exit_2(prog, tmp_path, capsys):
    main, _, _, after = TYPO[prog]
    text, words = WRONG_TYPE[prog]
    config = tmp_path / "bad.toml"
    config.write_text(text(tmp_path))
    assert main(["--config", str(config), *after]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert err == f"{prog}: {config}: {words}\n"
    assert written(tmp_path) == []


GOOD = {"appliance-transmitter": lambda r: transmitter_toml(r, ""),
        "appliance-receiver": receiver_toml, "appliance-dr": receiver_toml,
        "appliance-handler": lambda r: handler_toml(r, "")}


@pytest.mark.parametrize("prog", list(TYPO))
def test_an_unknown_table_is_refused(prog, tmp_path, capsys):
    main, _, _, after = TYPO[prog]
    handler = prog == "appliance-handler"
    config = tmp_path / "bad.toml"
    extra = "[handlr]\nudev = false\n" if handler else '[tsl]\nca = "/ca.pem"\n'
    config.write_text(GOOD[prog](tmp_path) + extra)
    assert main(["--config", str(config), *after]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    wrong, meant = ("[handlr]", "[handler]") if handler else ("[tsl]", "[tls]")
    assert f"{config}: unknown table {wrong}: did you mean {meant}?" in err, err
    assert written(tmp_path) == []


@pytest.mark.parametrize("prog", [p for p in TYPO if p != "appliance-dr"])
def test_check_says_whether_the_configuration_would_start_and_starts_nothing(prog, tmp_path,
                                                                             capsys):
    """What an admin runs before restarting a daemon: a configuration error would leave it
    stopped (exit 2, not restarted)."""
    main, _, typo, _ = TYPO[prog]
    config = tmp_path / "bad.toml"
    config.write_text(GOOD[prog](tmp_path))
    assert main(["--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out == f"{prog}: {config}: configuration OK\n"
    assert written(tmp_path) == [], "--check started something"
    config.write_text(typo(tmp_path))
    assert main(["--config", str(config), "--check"]) == CONFIG_ERROR_EXIT
    out, err = capsys.readouterr()
    assert out == "" and "unknown setting" in err, err


def test_a_one_shot_tool_has_no_check_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dr_tool.main(["--config", str(tmp_path / "x.toml"), "--check", "state"])
    assert "unrecognized arguments: --check" in capsys.readouterr().err


def test_a_missing_config_file_is_a_configuration_error(tmp_path, capsys):
    missing = tmp_path / "nowhere.toml"
    assert receiver.main(["--config", str(missing)]) == CONFIG_ERROR_EXIT
    assert capsys.readouterr().err.startswith(f"appliance-receiver: cannot read config {missing}")
    assert daemon.main(["--config", str(missing)]) == CONFIG_ERROR_EXIT
    assert f"cannot read {missing}" in capsys.readouterr().err


def test_a_toml_syntax_error_is_one_line(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("identity = \n")
    assert dr_tool.main(["--config", str(config), "state"]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid TOML" in err, err


@pytest.mark.parametrize("main, prog", [(daemon.main, "appliance-handler"),
                                        (transmitter.main, "appliance-transmitter"),
                                        (receiver.main, "appliance-receiver"),
                                        (dr_tool.main, "appliance-dr"),
                                        (cli.main, "appliancectl")])
def test_version(main, prog, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"{prog} {appliance.__version__}\n"


@pytest.mark.parametrize("main", [daemon.main, transmitter.main, receiver.main])
def test_a_bad_log_level_is_refused_by_the_parser(main, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(tmp_path / "x.toml"), "--log-level", "loud"])
    assert exc.value.code == 2
    assert "'loud' is not one of DEBUG, INFO" in capsys.readouterr().err


def test_the_message_stays_on_one_line_whatever_the_cause_says(capsys):
    assert report_config_error("prog", ConfigError("f.toml: key\nis wrong")) == 2
    assert capsys.readouterr().err == "prog: f.toml: key is wrong\n"


def _args(*argv: str) -> argparse.Namespace:
    return argument_parser("prog", None, config_help="", config_required=False).parse_args(
        list(argv))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_before_the_event_loop_stops_cleanly(signum, capsys):
    closed = []

    def serve(config: str) -> int:
        try:
            os.kill(os.getpid(), signum)
            raise AssertionError("the signal did not interrupt")
        finally:
            closed.append(config)          # what serve opened is closed on the way out

    before = signal.getsignal(signal.SIGTERM)
    assert run("prog", _args(), lambda: "cfg", serve) == 0
    assert closed == ["cfg"]
    assert signal.getsignal(signal.SIGTERM) is before      # handlers given back
    assert run("prog", _args(), lambda: "cfg", serve, daemon=False) == 128 + signum
    name = signal.Signals(signum).name
    assert capsys.readouterr().err == f"prog: stopped by {name} before it finished\n"


def test_serve_is_not_called_after_a_configuration_error():
    def load() -> None:
        raise ConfigError("f.toml: x is wrong")

    def serve(config: object) -> int:
        raise AssertionError("started despite the error")

    assert run("prog", _args(), load, serve) == CONFIG_ERROR_EXIT


def test_the_entry_knows_neither_replication_nor_tcmu():
    source = (REPO / "appliance" / "daemon_entry.py").read_text()
    source += (REPO / "appliance" / "config_file.py").read_text()
    assert "appliance.replication" not in source and "appliance.tcmu" not in source


@pytest.mark.parametrize("main, text", [
    (transmitter.main, lambda r: transmitter_toml(r, "").replace("insecure = true\n", "")),
    (receiver.main, lambda r: receiver_toml(r).replace("insecure = true\n", ""))])
def test_a_missing_tls_file_is_a_configuration_error(main, text, tmp_path, capsys):
    """Found when the TLS context is built, the first thing the daemon does: exit 2 too."""
    config = tmp_path / "bad.toml"
    tls = f'[tls]\ncert = "{tmp_path / "c.pem"}"\nkey = "{tmp_path / "k.pem"}"\nca = "/ca.pem"\n'
    body = text(tmp_path)
    head, sep, volume = body.partition("[[volume]]")      # [tls] before the [[volume]] tables
    config.write_text(head + tls + sep + volume)
    assert main(["--config", str(config)]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert f"{config}: tls cert file {tmp_path / 'c.pem'} does not exist" in err, err
    assert written(tmp_path) == []


@pytest.mark.parametrize("prog", ["appliance-transmitter", "appliance-receiver"])
def test_check_refuses_a_tls_file_the_start_could_not_load(prog, tmp_path, capsys):
    """--check reads the [tls] files as the start does: a missing or unusable one is the same
    one-line refusal (exit 2), not 'configuration OK' followed by a daemon that cannot
    start."""
    main = TYPO[prog][0]
    (tmp_path / "pki").mkdir()
    cert, key, ca = (tmp_path / "pki" / n for n in ("site.crt", "site.key", "ca.crt"))
    tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"\n'
    config = tmp_path / "bad.toml"
    config.write_text(GOOD[prog](tmp_path).replace("insecure = true\n", tls if prog ==
                      "appliance-transmitter" else "")
                      .replace("[[volume]]", tls + "[[volume]]"))
    assert main(["--config", str(config), "--check"]) == CONFIG_ERROR_EXIT
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{prog}: {config}: tls cert file {cert} does not exist\n")
    for path in (cert, key, ca):
        path.write_text("not a PEM file\n")
    assert main(["--config", str(config), "--check"]) == CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: {config}: tls cert {cert} / key {key} unusable: "), err
    assert written(tmp_path) == ["pki"], "--check started something"
