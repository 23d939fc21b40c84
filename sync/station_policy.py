"""What an enrolment station may do at the central: one pure function, no I/O.

A station is a check-in kiosk or counter camera bound to one airport. Its key is on a machine
in a public hall, so it is trusted for exactly one thing: adding travellers who depart from
its airport to that airport's scopes, for a bounded time. The rules, in the order checked:

1. list type `allow` only: a station never deny-lists anyone;
2. scopes are only `flight:<carrier><number>-<YYYY-MM-DD>` and `checkpoint:<airport>`: never a
   metro `lane:` scope, never an undated flight;
3. the departure airport the request carries (the boarding-pass leg's from-airport) is the
   station's airport, and every checkpoint scope is `checkpoint:<station airport>`; the
   central has no flight schedule, so "this flight departs from here" is the station's claim
   about the pass, bounded by rule 4 and audited at both ends;
4. every flight date is between yesterday and `max_days_ahead` days ahead (UTC dates), and
   `valid_until` is set, in the future and at most `max_validity` from now;
5. the subject, if the central already knows it, is an allow-list subject published only in
   airport-journey scopes (flight: or checkpoint:, of any airport: the same document may be
   on a return flight enrolled elsewhere today). Re-enrolling replaces the templates wherever
   the subject is published, so otherwise a station could overwrite a deny-list entry or a
   metro passenger's templates;
6. there is no revoke request for a station at all (and the CHP collector accepts KVSET only
   from admin tools), so a station can never withdraw anyone.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sync.scopes import ScopeError, checkpoint_scope, flight_scope_date, parse_scope, scope_label
from sync.service_messages import EnrolRequest

MAX_VALIDITY = dt.timedelta(days=3)
MAX_DAYS_AHEAD = 2


class StationRefusal(ValueError):
    """The station is not allowed this enrolment; the message is sent back to it."""


@dataclass(frozen=True)
class ExistingSubject:
    list_type: str
    scopes: tuple[str, ...]  # subtrees the subject is published in now


def _own_scope(subtree: str, airport: str, today: dt.date, max_days_ahead: int) -> str | None:
    """Why `subtree` is not a scope this station may write, or None if it may."""
    kind = scope_label(subtree).partition(":")[0]
    if kind == "checkpoint":
        if subtree != parse_scope(checkpoint_scope(airport)):
            return f"{scope_label(subtree)} is another airport's checkpoint (this station is at {airport})"
        return None
    if kind == "flight":
        try:
            day = flight_scope_date(subtree)
        except ScopeError as exc:
            return str(exc)
        if not today - dt.timedelta(days=1) <= day <= today + dt.timedelta(days=max_days_ahead):
            return f"{scope_label(subtree)} is not a flight of yesterday to {max_days_ahead} day(s) ahead"
        return None
    return f"{scope_label(subtree)}: a station may enrol only into flight: and checkpoint: scopes"


def check_enrolment(station_airport: str, request: EnrolRequest, existing: ExistingSubject | None,
                    now: dt.datetime, max_validity: dt.timedelta = MAX_VALIDITY,
                    max_days_ahead: int = MAX_DAYS_AHEAD) -> None:
    """Raise StationRefusal naming the first rule the request breaks; return if allowed."""
    if request.list_type != "allow":
        raise StationRefusal(f"a station may only enrol into the allow list, not {request.list_type!r}")
    if request.departure_airport != station_airport:
        raise StationRefusal(f"the pass departs from {request.departure_airport}; this station enrols "
                             f"departures from {station_airport} only")
    today = now.astimezone(dt.timezone.utc).date()
    for subtree in request.scopes:
        why = _own_scope(subtree, station_airport, today, max_days_ahead)
        if why:
            raise StationRefusal(why)
    limit = now + max_validity
    until = dt.datetime.fromtimestamp(request.valid_until, dt.timezone.utc)
    if until <= now or until > limit:
        raise StationRefusal(f"valid_until {until:%Y-%m-%dT%H:%MZ} must be in the future and within "
                             f"{max_validity} of now")
    if existing is not None:
        if existing.list_type != "allow":
            raise StationRefusal(f"subject {request.subject_id} is on the {existing.list_type} list; "
                                 "only the central's staff may change it")
        for subtree in existing.scopes:
            if scope_label(subtree).partition(":")[0] not in ("flight", "checkpoint"):
                raise StationRefusal(f"subject {request.subject_id} is also published in {scope_label(subtree)}, "
                                     "which a station may not change")
