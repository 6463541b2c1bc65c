"""One way to start an appliance program: arguments, logging, configuration errors, stop signals.

appliance-handler, appliance-transmitter, appliance-receiver and appliance-dr all start here:

- the same options: ``--config FILE`` (TOML), ``--log-level LEVEL``, ``--version`` (prints
  ``appliance.__version__``; appliancectl takes it too) and, for a daemon, ``--check`` (read
  and check the configuration, say so, start nothing: what an admin runs before restarting a
  daemon whose configuration error would leave it stopped);
- one log format on stderr (the journal, under systemd): ``LOG_FORMAT``;
- a configuration error (``ConfigError``, appliance/config_file.py) is one line on stderr,
  ``<program>: <file>: <key> ... <what to fix>``, also handed to the log, exit code 2, before
  anything starts;
- SIGTERM and SIGINT stop cleanly. While a daemon's event loop runs, its own handlers (the
  loop's ``add_signal_handler``) end the loop and the daemon closes what it opened. Outside
  the loop (reading the configuration, a one-shot command) the signal raises ``Stopped``,
  which unwinds through every ``finally``/``with``: no traceback, a log line, and exit code 0
  for a daemon (stopping is its normal end) or 128 + the signal for a command that did not
  finish.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import appliance
from appliance.config_file import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CONFIG_ERROR_EXIT = 2
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def stop_event_on_signals() -> asyncio.Event:
    """In a daemon's event loop: an event that SIGTERM or SIGINT sets (the daemon then closes
    what it opened and returns)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop

Config = TypeVar("Config")


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived outside an event loop (a BaseException like
    KeyboardInterrupt, so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log_level(text: str) -> str:
    """argparse type of ``--log-level``: a logging level name, any case."""
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)}")
    return level


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version",
                        version=f"{parser.prog} {appliance.__version__}")


def argument_parser(prog: str, description: str | None, *, config_help: str,
                    config_required: bool = True, daemon: bool = True,
                    raw_description: bool = False) -> argparse.ArgumentParser:
    """The parser with the shared options; a program adds its own (appliance-dr: its
    subcommands). ``--log-level`` is None when not given (the handler then takes its
    configuration's)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=(argparse.RawDescriptionHelpFormatter if raw_description
                         else argparse.HelpFormatter))
    parser.add_argument("--config", type=Path, required=config_required, help=config_help)
    parser.add_argument("--log-level", type=log_level, default=None,
                        help=f"one of {', '.join(LEVELS)} (default INFO)")
    if daemon:
        parser.add_argument("--check", action="store_true",
                            help="check the configuration and exit (0: it would start)")
    add_version(parser)
    return parser


class _NotPrinted(logging.Filter):
    """Keeps records already printed on stderr (configuration errors) off the stderr handler;
    any other handler (a file, the test's capture) still gets them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "printed_on_stderr", False)


def setup_logging(level: str | None) -> None:
    """The one log format, on stderr; ``level`` None means INFO. Like basicConfig, nothing
    changes when the process already has log handlers (a test calling ``main()``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_NotPrinted())
    logging.basicConfig(level=level or "INFO", handlers=[handler])


def report_config_error(prog: str, err: ConfigError) -> int:
    """One line on stderr and in the log; the exit code of a configuration error."""
    line = " ".join(str(err).split())           # one line, whatever the cause's text held
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    logging.getLogger(prog).error("configuration refused: %s", line,
                                  extra={"printed_on_stderr": True})
    return CONFIG_ERROR_EXIT


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run(prog: str, args: argparse.Namespace, load: Callable[[], Config],
        serve: Callable[[Config], int | None], *, daemon: bool = True) -> int:
    """Set up logging, ``load()`` the configuration, ``serve(config)``; returns the exit code.

    ``load`` raises ConfigError for anything the admin must fix in the file (exit 2, nothing
    started). ``serve`` returns the exit code (None: 0); a daemon's event loop installs its own
    SIGTERM/SIGINT handlers while it runs. ``daemon`` False: a one-shot command, for which a
    stop signal means "not done" (exit 128 + signal), and its log level WARNING unless
    ``--log-level`` says otherwise (its output is its answer, not a log)."""
    setup_logging(args.log_level or ("INFO" if daemon else "WARNING"))
    log = logging.getLogger(prog)
    # signal handlers belong to the main thread (a test may call main() from another one)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS} if in_main else {}
    try:
        try:
            config = load()
        except ConfigError as err:
            return report_config_error(prog, err)
        if getattr(args, "check", False):
            print(f"{prog}: {args.config or 'no configuration file'}: configuration OK")
            return 0
        code = serve(config)
        return 0 if code is None else code
    except (Stopped, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        name = signal.Signals(signum).name
        if daemon:
            log.info("stopped by %s", name)
            return 0
        print(f"{prog}: stopped by {name} before it finished", file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
