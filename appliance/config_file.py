"""Strict configuration tables: every key known, every value of its type, every default once.

A daemon's TOML file is refused, not half-read: a key that is not a setting (a typo such as
``bandwith_limit``) is named with the closest known key, a value of the wrong type is named
with the type it must have. The defaults are the dataclass fields' own defaults
(``setting()``), so no parser repeats them. Used by the handler's ``[handler]`` table and by the
transmitter's and receiver's files (appliance/replication/config.py); it imports neither.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration file is wrong; the one-line message names the file, the key and what
    to fix. Every daemon reports it the same way (exit code 2: appliance/daemon_entry.py)."""


@dataclass(frozen=True, slots=True)
class Where:
    """A table of a configuration file: ``file`` as the admin names it, ``section`` the
    table's header as written in TOML ("" for the top level, "[tls]", "[[volume]] #2")."""

    file: str
    section: str = ""

    def label(self, key: str) -> str:
        return f"{self.section} {key}" if self.section else key

    def error(self, key: str, text: str) -> ConfigError:
        """``<file>: <section> <key> <text>``, e.g. ``tx.toml: batch_bytes must be > 0``."""
        return ConfigError(f"{self.file}: {self.label(key)} {text}")

    def table(self, section: str) -> Where:
        return Where(self.file, section)


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        return "an array of tables" if item is dict else f"a list of {_type_name(item)}"
    return {dict: "a table"}.get(expected, getattr(expected, "__name__", str(expected)))


def _of_type(value: Any, expected: Any) -> bool:
    if typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_of_type(v, item) for v in value)
    if expected in (int, float) and isinstance(value, bool):
        return False            # TOML true is no number
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _written(name: str, expected: Any, section: str) -> str:
    """How a key looks in the file: a table is [name], an array of tables [[name]]."""
    if expected is dict and not section:
        return f"[{name}]"
    if typing.get_origin(expected) is list and typing.get_args(expected) == (dict,):
        return f"[[{name}]]"
    return name


def unknown_key(key: str, value: Any, schema: Mapping[str, Any], where: Where) -> ConfigError:
    """The refusal of a key that is no setting of this table, naming the closest one:
    ``tx.toml: unknown setting bandwith_limit: did you mean bandwidth_limit? (...)``."""
    kind = dict if isinstance(value, dict) else (
        list[dict] if isinstance(value, list) and value and isinstance(value[0], dict) else str)
    written = _written(key, kind, where.section)
    what = "table" if written.startswith("[") else "setting"
    close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
    if close:
        hint = (f"did you mean {_written(close[0], schema[close[0]], where.section)}? "
                f"(correct the name, or remove it)")
    else:
        nearest = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.0)
        known = ", ".join(_written(k, t, where.section) for k, t in schema.items())
        hint = (f"the closest known is {_written(nearest[0], schema[nearest[0]], where.section)}"
                f"; remove it (known: {known})") if nearest else "remove it (nothing is known here)"
    return ConfigError(f"{where.file}: unknown {what} {where.label(written)}: {hint}")


def check_table(table: Any, schema: Mapping[str, Any], where: Where) -> dict[str, Any]:
    """``table`` with every key known to ``schema`` (key -> TOML type: str, int, float, bool,
    dict for a table, ``list[str]``, ``list[dict]`` for an array of tables) and of its type;
    an int where a float is expected becomes a float. Refuses (ConfigError) otherwise."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where.file}: {where.section or 'the file'} must be a table, "
                          f"got {table!r}")
    checked: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            raise unknown_key(key, value, schema, where)
        expected = schema[key]
        if not _of_type(value, expected):
            raise where.error(_written(key, expected, where.section),
                              f"must be {_type_name(expected)}, got {value!r}")
        checked[key] = float(value) if expected is float else value
    return checked


def field_default(owner: type, name: str) -> Any:
    """The default of dataclass ``owner``'s field ``name`` (MISSING if it has none)."""
    for spec in fields(owner):
        if spec.name == name:
            if spec.default is not MISSING:
                return spec.default
            if spec.default_factory is not MISSING:
                return spec.default_factory()
            return MISSING
    raise KeyError(f"{owner.__name__} has no field {name!r}")


def setting(table: Mapping[str, Any], key: str, owner: type, where: Where,
            field: str | None = None) -> Any:
    """``table[key]`` (already checked by check_table), else the default of ``owner``'s field
    (``field``, default the key's name); a key whose field has no default is required."""
    if key in table:
        return table[key]
    default = field_default(owner, field or key)
    if default is MISSING:
        raise where.error(key, "is missing: it is required (add it)")
    return default


def required(table: Mapping[str, Any], key: str, where: Where) -> Any:
    """``table[key]`` of a setting that no dataclass field holds as such (e.g. a path the
    daemon derives its field from)."""
    if key not in table:
        raise where.error(key, "is missing: it is required (add it)")
    return table[key]
