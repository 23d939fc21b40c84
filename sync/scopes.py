"""Where a subject lives in the replicated hashmap: /<kind>/<scope-id>/<subject-id>.

A gate subscribes to the subtrees of its own lanes and flights, so ZeroMQ's prefix filtering
keeps other lanes' templates off its wire. The trailing slash in every subtree matters: it
stops "/lane/A/" from also matching "/lane/AB/...".
"""
from __future__ import annotations

import re

SCOPE_KINDS = ("lane", "flight")

# Identifiers become path segments: no slash, no whitespace, no control characters.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")


class ScopeError(ValueError):
    """A scope or subject identifier that cannot name a hashmap key."""


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ScopeError(f"{what} {value!r} must be 1-128 characters of letters, digits and ._:@+- "
                         "starting with a letter or digit")
    return value


def parse_scope(text: str) -> str:
    """Turn 'lane:ID', 'flight:NO' or an already formed '/lane/ID/' into the subtree form."""
    if text.startswith("/"):
        parts = text.split("/")
        if len(parts) != 4 or parts[3] != "":
            raise ScopeError(f"scope {text!r} must look like /lane/ID/ or /flight/NO/")
        kind, ident = parts[1], parts[2]
    else:
        kind, sep, ident = text.partition(":")
        if not sep:
            raise ScopeError(f"scope {text!r} must look like lane:ID or flight:NO")
    if kind not in SCOPE_KINDS:
        raise ScopeError(f"scope kind {kind!r} is not one of {', '.join(SCOPE_KINDS)}")
    check_id(ident, f"{kind} id")
    return f"/{kind}/{ident}/"


def split_key(key: str) -> tuple[str, str]:
    """Return (scope subtree, subject id) of a subject key, refusing anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "":
        raise ScopeError(f"key {key!r} is not /<kind>/<scope-id>/<subject-id>")
    scope = parse_scope(f"/{parts[1]}/{parts[2]}/")
    return scope, check_id(parts[3], "subject id")


def scope_label(subtree: str) -> str:
    """'/lane/A1/' -> 'lane:A1', for people and CLIs."""
    _, kind, ident, _ = subtree.split("/")
    return f"{kind}:{ident}"
