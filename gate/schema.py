"""Validate plain TOML data against typed dataclasses, once, at start-up.

A field engineer editing a config on a gate at 5 a.m. needs the error to name the key, the
bad value and what is allowed, and a typo in a key must not be silently ignored (a misspelt
threshold that falls back to a default is how a gate ends up too permissive). The same
dataclass metadata generates the configuration reference in the README, so docs and
validation cannot drift apart.

Field metadata keys: help (str), choices (tuple), min / max (numbers), secret (bool).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union


class ConfigError(ValueError):
    """A configuration problem, phrased for the person editing the file."""


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "nothing"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "true/false", Path: "path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp, key: str, meta: dict) -> Any:
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
                return _coerce(value, a, key, meta)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} = {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{key}] must be a table (a [section]), got {value!r}")
        return load_dataclass(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r} must be a list, e.g. [1, 2]")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, inner, f"{key}[{i}]", {}) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table")
        return dict(value)
    if tp is Any:
        return value
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
        raise ConfigError(f"{key} = {value!r} is below the minimum {lo}" + (f" (allowed: {lo} to {hi})" if hi is not None else ""))
    if hi is not None and out > hi:
        raise ConfigError(f"{key} = {value!r} is above the maximum {hi}" + (f" (allowed: {lo} to {hi})" if lo is not None else ""))
    return out


def load_dataclass(cls, data: dict, where: str = ""):
    """Build `cls` from a TOML table: unknown keys, missing required keys, wrong types and
    out-of-range values are all errors naming the full dotted key."""
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
            kwargs[name] = _coerce(data[name], hints[name], key, dict(f.metadata))
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
        if f.default is not dataclasses.MISSING:
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
        m = f.metadata
        allowed = ", ".join(map(str, m["choices"])) if "choices" in m else (
            f"{m.get('min', '')}…{m.get('max', '')}" if "min" in m or "max" in m else "")
        rows.append({"key": key, "type": _type_name(tp), "default": default, "allowed": allowed,
                     "help": m.get("help", "")})
    return rows
