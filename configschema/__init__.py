"""Validate plain TOML data against typed dataclasses, once, at start-up; generate the reference.

A field engineer editing a config on a gate at 5 a.m. needs the error to name the key, the
bad value and what is allowed, and a typo in a key must not be silently ignored (a misspelt
threshold that falls back to a default is how a gate ends up too permissive). The same
dataclass metadata generates the configuration reference in the README, so docs and
validation cannot drift apart.

Why a room of its own: the lane's config (gate), the sync agent's [sync] table (sync), the
central's file (sync) and the drivers' settings (devices) all need the same checks and the same
generated reference, and sync may not import gate nor devices import sync. So the machinery sits
in this one small package, which imports nothing of edgegate's and which every room may import
(tests/test_import_rules.py holds it to that). One ConfigError for every config, so a command
line catches one thing.

Field metadata keys: help (str), choices (tuple), min / max (numbers), secret (bool),
parse (callable applied to the checked value at load time; a ValueError it raises names the
key), default_doc (str shown as the default in the reference when the real default depends
on the machine or on another key), or_table (a dataclass: the value may instead be given as a
TOML table of that class, which the `resolve` callback handed to `load_dataclass` turns into the
plain value, e.g. a threshold given as a calibration record and its target rate instead of a
bare number; the resolved value is then checked like a written one).

Why resolution sits here rather than in each room: a value that refers to another file (a
record beside the config) needs the config file's folder and must be resolved before the
dataclass is built, since the dataclass's own checks (deny_threshold <= threshold_1n) compare
plain values. The callback carries what the room knows (the folder, the record format); this
module only knows that a table stood where a number may.
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Union

# resolve(table, key, metadata) -> value: turns an `or_table` table into the plain value
Resolver = Callable[[Any, str, dict], Any]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person editing the file."""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "nothing"
    if dataclasses.is_dataclass(tp):
        return "table"
    names = {str: "string", int: "integer", float: "number", bool: "true/false", Path: "path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp, key: str, meta: dict, resolve: Resolver | None = None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, meta, resolve)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} = {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table (a [section]), got {value!r}")
        return load_dataclass(tp, value, key, resolve=resolve)
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r} must be a list, e.g. [1, 2]")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]", {}) for i, v in enumerate(value)]
        return _parsed(origin(items) if origin is not list else items, key, meta)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table")
        return dict(value)
    if tp is Any:
        return value
    out: Any
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} must be true or false (no quotes)")
        out = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} must be a whole number")
        out = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} must be a number")
        out = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} must be a string (in quotes)")
        out = value
    elif tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} = {value!r} must be a file or folder path (in quotes)")
        out = Path(value)
    else:
        raise ConfigError(f"{key}: unsupported schema type {tp!r}")
    choices = meta.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(map(repr, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and out < lo:
        raise ConfigError(f"{key} = {value!r} is below the minimum {lo}"
                          + (f" (allowed: {lo} to {hi})" if hi is not None else ""))
    if hi is not None and out > hi:
        raise ConfigError(f"{key} = {value!r} is above the maximum {hi}"
                          + (f" (allowed: {lo} to {hi})" if lo is not None else ""))
    return _parsed(out, key, meta)


def _parsed(value: Any, key: str, meta: dict) -> Any:
    parse = meta.get("parse")
    if parse is None:
        return value
    try:
        return parse(value)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{key} = {value!r}: {e}") from None


def _referred(value: Any, key: str, meta: dict, resolve: Resolver | None) -> Any:
    """A value given as the `or_table` table of its field, resolved to the plain value."""
    table = load_dataclass(meta["or_table"], value, key, resolve=resolve)
    if resolve is None:
        raise ConfigError(f"{key}: a table is only accepted where the config file is read (give a plain value)")
    return resolve(table, key, meta)


def load_dataclass(cls, data: dict, where: str = "", *, resolve: Resolver | None = None):
    """Build `cls` from a TOML table: unknown keys, missing required keys, wrong types and
    out-of-range values are all errors naming the full dotted key. A field whose metadata has
    `or_table` may hold that table instead; `resolve` turns it into the plain value (module
    docstring). Nested dataclasses get the same `resolve`."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            hint = f" — did you mean {prefix}{close[0]}?" if close else f" (known keys: {', '.join(fields)})"
            raise ConfigError(f"unknown key {prefix}{k}{hint}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            value, meta = data[name], dict(f.metadata)
            if "or_table" in meta and isinstance(value, dict):
                value = _referred(value, key, meta, resolve)
            kwargs[name] = _coerce(value, hints[name], key, meta, resolve)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key} ({_type_name(hints[name])}: {f.metadata.get('help', '')})")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"[{where}] {e}" if where else str(e)) from None
    return obj


def describe(cls, where: str = "") -> list[dict]:
    """Rows for the configuration reference: key, type, default, allowed values, help."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{where}.{f.name}" if where else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
            continue
        m = f.metadata
        if "default_doc" in m:
            default = m["default_doc"]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), key)
            continue
        if isinstance(default, (list, tuple)):  # as it is written in the TOML file
            default = "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in default) + "]"
        elif isinstance(default, bool):
            default = "true" if default else "false"
        allowed = ", ".join(map(str, m["choices"])) if "choices" in m else (
            f"{m.get('min', '')}…{m.get('max', '')}" if "min" in m or "max" in m else "")
        type_name = _type_name(tp)
        if "or_table" in m:
            keys = [g.name for g in dataclasses.fields(m["or_table"]) if g.init]
            type_name += f" or table {{{', '.join(keys)}}}"
        rows.append({"key": key, "type": type_name, "default": default, "allowed": allowed,
                     "help": m.get("help", ""), "default_is_text": "default_doc" in m})
    return rows


def resolve_path(path: Path, base: Path) -> Path:
    """`path` from a config file made absolute against `base`, the file's folder, so a config
    directory can be moved as a whole; `~` is expanded first."""
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def resolve_paths(obj, base: Path):
    """`obj` with its Path fields (top level) passed through `resolve_path`."""
    changes = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Path) and resolve_path(v, base) != v:
            changes[f.name] = resolve_path(v, base)
    return dataclasses.replace(obj, **changes) if changes else obj


def read_toml(path: Path) -> dict:
    """A TOML file as a dict; unreadable, non-UTF-8 or malformed files are one-line ConfigErrors."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def reference_markdown(rows: list[dict]) -> str:
    """The README table for rows from `describe`."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        d = r["default"]
        if d == "(required)":
            d = "**required**"
        elif d is None:
            d = ""
        elif not r.get("default_is_text"):
            d = f"`{d}`"
        help_text = str(r["help"]).replace("|", "\\|")  # a "|" in the text would end the table cell
        lines.append(f"| `{r['key']}` | {r['type']} | {d} | {r['allowed']} | {help_text} |")
    return "\n".join(lines)
