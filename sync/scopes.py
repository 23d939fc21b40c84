"""Where a subject lives in the replicated hashmap: /<kind>/<scope-id>/<subject-id>.

A gate subscribes to the subtrees of its own lanes and flights, so ZeroMQ's prefix filtering
keeps other lanes' templates off its wire. Kinds: `lane:<id>` (a metro line or lane),
`flight:<carrier><number>-<YYYY-MM-DD>` (a boarding gate follows the flights it serves) and
`checkpoint:<airport IATA>` (an airport's security lanes: everyone departing from it).
The trailing slash in every subtree matters: it stops "/lane/A/" from also matching
"/lane/AB/...".
"""
from __future__ import annotations

import datetime as dt
import re

SCOPE_KINDS = ("lane", "flight", "checkpoint")

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
            raise ScopeError(f"scope {text!r} must look like /lane/ID/, /flight/NO/ or /checkpoint/AIRPORT/")
        kind, ident = parts[1], parts[2]
    else:
        kind, sep, ident = text.partition(":")
        if not sep:
            raise ScopeError(f"scope {text!r} must look like lane:ID, flight:NO or checkpoint:AIRPORT")
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


_AIRPORT_RE = re.compile(r"^[A-Z]{3}$")
# carrier: a 2-character IATA designator (may hold a digit: "9W") or a 3-letter ICAO one
_FLIGHT_RE = re.compile(r"^([A-Z0-9]{2}|[A-Z]{3})(\d{1,4}[A-Z]?)-(\d{4}-\d{2}-\d{2})$")


def checkpoint_scope(airport: str) -> str:
    """'SGN' -> 'checkpoint:SGN'."""
    if not isinstance(airport, str) or not _AIRPORT_RE.match(airport):
        raise ScopeError(f"airport {airport!r} must be a 3-letter IATA code in capitals")
    return f"checkpoint:{airport}"


def flight_scope(carrier: str, number: str, date: dt.date) -> str:
    """('VN', '123', 2026-12-02) -> 'flight:VN123-2026-12-02': the flight on that day, so the
    same flight number on the next day is another scope with its own passengers."""
    ident = f"{carrier}{number}-{date.isoformat()}"
    if not _FLIGHT_RE.match(ident):
        raise ScopeError(f"flight {ident!r} must be a 2-3 character carrier, 1-4 digits (+ letter) and a date")
    return f"flight:{check_id(ident, 'flight id')}"


def flight_scope_date(scope: str) -> dt.date:
    """The departure date a flight scope names ('flight:VN123-2026-12-02' or its subtree)."""
    ident = scope_label(parse_scope(scope)).partition(":")[2]
    m = _FLIGHT_RE.match(ident)
    if not scope_label(parse_scope(scope)).startswith("flight:") or m is None:
        raise ScopeError(f"scope {scope!r} is not a dated flight (flight:VN123-2026-12-02)")
    return dt.date.fromisoformat(m.group(3))


def departure_validity_end(flight_date: dt.date, airport_tz: dt.tzinfo, grace: dt.timedelta) -> dt.datetime:
    """When a departing passenger's templates stop being valid (then purged everywhere).

    A boarding pass carries the flight's date, not its departure time, so the rule is: the end
    of the flight's local day at the departure airport plus `grace` (which covers a late
    departure past midnight). A 23:55 flight delayed by less than `grace` still boards; the
    next day's passengers of the same flight number are another scope.
    """
    day_end = dt.datetime.combine(flight_date + dt.timedelta(days=1), dt.time(0, 0), tzinfo=airport_tz)
    return (day_end + grace).astimezone(dt.timezone.utc)
