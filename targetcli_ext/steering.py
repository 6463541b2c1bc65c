"""What the steering commands of /replication/volumes/<name> and /replication/replicas/<name>
share: calling a daemon over its control socket, and refusing a setting the way the shell
refuses (the settings' parsers themselves are model.py's).

A daemon's refusal comes back as ``ExecutionError`` with the daemon's own reason; the command
adds what was (not) changed. ``ReplicationContext.call`` is the way to a daemon (the tests
inject it); a context without it (an older one) calls the socket directly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from configshell_fb import ExecutionError

from appliance.control.client import ControlError, call

UNREACHABLE = "cannot talk to control socket"



def call_daemon(ctx, socket: Path, cmd: str, **args) -> object:
    """One control command; ``ExecutionError`` with the daemon's reason when refused."""
    own = getattr(ctx, "call", None)
    if own is not None:
        return own(socket, cmd, **args)
    try:
        return call(socket, cmd, args, timeout=ctx.config.command_timeout_s)
    except ControlError as err:
        raise ExecutionError(str(err)) from err
    except ValueError as err:            # a reply that is not JSON
        raise ExecutionError(f"{socket} answered {cmd!r} with something that is not JSON: "
                             f"{err}") from err


def nothing_changed(text: str) -> str:
    """A refusal's message, ending with "nothing changed" once (daemons may say it already)."""
    text = str(text).rstrip(" .;")
    said = text.rstrip(")").endswith("nothing changed")     # "; nothing changed" or "(...)"
    return text if said else f"{text}; nothing changed"


def unreachable(err: Exception) -> bool:
    """The daemon did not answer (not running), as opposed to refusing."""
    return UNREACHABLE in str(err)


def transmitter_socket(ctx, name: str) -> Path:
    """The control socket of the volume's transmitter (``transmitter-<name>.sock``)."""
    sockets = ctx.config.sockets
    own = getattr(sockets, "transmitter", None)
    if callable(own):
        return Path(own(name))
    return Path(sockets.run_dir) / f"transmitter-{name}.sock"


# --- settings -----------------------------------------------------------------------------


def shell_value(parse, value: object, *args: object):
    """A setting parsed by its one parser (targetcli_ext/model.py), refused as the shell
    refuses: ExecutionError naming what to give, and that nothing changed."""
    try:
        return parse(value, *args)
    except ValueError as err:
        raise ExecutionError(f"{err}; nothing changed") from err


def complete(candidates: list[str], text: str) -> list[str]:
    """configshell's convention: a single match gets a trailing space."""
    found = [c for c in candidates if c.startswith(text)]
    return [found[0] + " "] if len(found) == 1 else found


def show_group(node, group: str, names: list[str], parameter: tuple[str, ...],
               values: Callable[[], Callable[[str], str]], readonly: str) -> None:
    """``get <group> [parameter...]`` of a group whose values a daemon holds: the names are
    checked first, then ``values()`` asks the daemon once and gives each one's text;
    ``readonly`` is shown with configshell's ``[ro]``."""
    unknown = [p for p in parameter if p not in names]
    if unknown:
        raise ExecutionError(f"no parameter {', '.join(unknown)} in group '{group}' "
                             f"(parameters: {', '.join(names)})")
    value_of = values()
    for param in parameter or names:
        shown = f"{param}={value_of(param)}"
        node.shell.con.display(shown + " [ro]" if param == readonly else shown)
