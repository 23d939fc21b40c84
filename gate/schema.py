"""The config schema machinery moved to `configschema` (every room uses it); these names stay
importable from here for modules not yet moved over (gate.decide)."""
from configschema import ConfigError, describe, load_dataclass  # noqa: F401
