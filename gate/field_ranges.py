"""Range checks for policy dataclasses built in code.

`configschema.load_dataclass` enforces the `min`/`max` field metadata when a policy comes from
a TOML file; policies built in Python (tests, tools, the daemon's defaults) must meet the same
bounds, or a typo'd threshold could make a gate permissive without anyone being told.
"""
from __future__ import annotations

from dataclasses import fields

from configschema import ConfigError


def check_ranges(obj) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN compares false with every bound
            raise ConfigError(f"{f.name} is NaN; it must be a number")
        if lo is not None and value < lo:
            raise ConfigError(f"{f.name} = {value!r} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{f.name} = {value!r} is above the maximum {hi}")
