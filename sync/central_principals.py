"""Who may connect to the central: gates, enrolment stations and admin tools, by CURVE key.

One of the parts of `sync.central.Central` (see sync.central_subjects), over the same
connection. It owns the `principals` and `gate_assignments` tables: the ZAP handler admits a
key only if this part knows it, and a gate's scopes (with the flights assigned to it) are what
the snapshot socket lets it read.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from sync.central_db import CentralDatabase
from sync.central_subjects import EnrolmentError
from sync.scopes import ScopeError, check_id, checkpoint_scope, flight_scope_date, parse_scope, scope_label

log = logging.getLogger("sync.central")  # the name these lines had before the split


@dataclass(frozen=True)
class Principal:
    """Someone allowed to connect: a gate (which may snapshot only its scopes and upload only
    under its own id), an admin tool (which may read every subtree and send KVSET) or an
    enrolment station (which may only send enrolments, judged by sync.station_policy; its
    `scopes` hold its one airport code)."""

    kind: str  # "gate" | "admin" | "station"
    ident: str
    public_key: str  # Z85
    scopes: tuple[str, ...] = ()
    # A boarding gate's flights as the central assigned them (Central.assign_flights): served on
    # top of `scopes` and told to the gate in each health reply, so a gate change needs no restart.
    assigned: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.ident}"

    def may_snapshot(self, subtree: str) -> bool:
        return self.kind == "admin" or (self.kind == "gate" and (subtree in self.scopes or subtree in self.assigned))


def _key_text(public_key: bytes | str) -> str:
    text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
    if len(text) != 40:
        raise EnrolmentError("a CURVE public key is 40 Z85 characters")
    return text


class Principals:
    """The allowlist of keys and what each may do."""

    def __init__(self, db: CentralDatabase, clock: Callable[[], float]):
        self.db = db
        self._clock = clock

    def register_gate(self, gate_id: str, public_key: bytes | str, scopes: Sequence[str]) -> Principal:
        """Allow a gate's CURVE key and name the scopes it may snapshot. Re-registering a gate
        replaces its key (rotation) and scopes."""
        try:
            check_id(gate_id, "gate id")
            parsed = tuple(sorted({parse_scope(s) for s in scopes}))
        except ScopeError as exc:
            raise EnrolmentError(str(exc)) from exc
        if self.get(f"station:{gate_id}") is not None:  # they share the audit store's ids
            raise EnrolmentError(f"{gate_id} is an enrolment station's id; a gate needs another")
        return self._register(Principal("gate", gate_id, _key_text(public_key), parsed))

    def register_station(self, station_id: str, public_key: bytes | str, airport: str) -> Principal:
        """Allow an enrolment station's CURVE key, bound to the one airport it serves."""
        try:
            check_id(station_id, "station id")
            checkpoint_scope(airport)
        except ScopeError as exc:
            raise EnrolmentError(str(exc)) from exc
        if self.get(f"gate:{station_id}") is not None:  # they share the audit store's ids
            raise EnrolmentError(f"{station_id} is a gate's id; a station needs another")
        return self._register(Principal("station", station_id, _key_text(public_key), (airport,)))

    def register_admin(self, name: str, public_key: bytes | str) -> Principal:
        try:
            check_id(name, "admin name")
        except ScopeError as exc:
            raise EnrolmentError(str(exc)) from exc
        return self._register(Principal("admin", name, _key_text(public_key)))

    def _register(self, p: Principal) -> Principal:
        with self.db.write_transaction():
            clash = self.db.execute("SELECT name FROM principals WHERE public_key = ? AND name != ?",
                                      (p.public_key, p.name)).fetchone()
            if clash:
                raise EnrolmentError(f"that public key already belongs to {clash[0]}; "
                                      "every gate needs its own keypair")
            self.db.execute(
                "INSERT INTO principals(name, kind, ident, public_key, scopes, created_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET public_key=excluded.public_key, scopes=excluded.scopes",
                (p.name, p.kind, p.ident, p.public_key, json.dumps(list(p.scopes)), self._clock()))
        log.info("registered %s (key %s..., scopes %s)", p.name, p.public_key[:8], ", ".join(p.scopes) or "-")
        return p

    def remove(self, kind: str, ident: str) -> bool:
        with self.db.write_transaction():
            cur = self.db.execute("DELETE FROM principals WHERE name = ?", (f"{kind}:{ident}",))
            if kind == "gate":
                self.db.execute("DELETE FROM gate_assignments WHERE gate_id = ?", (ident,))
        return cur.rowcount > 0

    # ----- boarding gates follow the flights assigned to them ----------------------------

    def assign_flights(self, gate_id: str, flights: Sequence[str]) -> tuple[str, ...]:
        """Make `flights` (flight:VN123-2026-12-02; none: the gate boards nothing now) the
        flights a boarding gate follows, replacing what it followed before. The gate learns it
        from its next health reply and snapshots the new flight, dropping the old one's
        templates, without a restart. Refused: an unregistered gate, a security or metro lane
        (its registered scopes are a checkpoint or a line: it never boards a flight), anything
        but a dated flight, and a flight whose day has passed."""
        p = self.get(f"gate:{gate_id}")
        if p is None or p.kind != "gate":
            raise EnrolmentError(f"gate {gate_id!r} is not registered at this central")
        lanes = [scope_label(s) for s in p.scopes if not s.startswith("/flight/")]
        if lanes:
            raise EnrolmentError(f"gate {gate_id} is registered for {', '.join(lanes)}: a security or metro lane "
                                  "is not assigned flights")
        today = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).date()
        scopes = []
        for f in flights:
            try:
                subtree = parse_scope(f if f.startswith(("flight:", "/")) else f"flight:{f}")
                day = flight_scope_date(subtree)
            except ScopeError as exc:
                raise EnrolmentError(str(exc)) from exc
            if day < today - dt.timedelta(days=1):
                raise EnrolmentError(f"flight {scope_label(subtree)} departed on {day}; its passengers are purged")
            scopes.append(subtree)
        with self.db.write_transaction():
            self.db.execute("DELETE FROM gate_assignments WHERE gate_id = ?", (gate_id,))
            for subtree in sorted(set(scopes)):
                self.db.execute("INSERT INTO gate_assignments(gate_id, scope, assigned_at) VALUES (?,?,?)",
                                  (gate_id, subtree, self._clock()))
        log.info("gate %s now boards %s", gate_id, ", ".join(scope_label(s) for s in sorted(set(scopes))) or "nothing")
        return tuple(sorted(set(scopes)))

    def assigned_flights(self, gate_id: str) -> tuple[str, ...]:
        return self._assignments("WHERE gate_id = ?", (gate_id,)).get(gate_id, ())

    def all_assigned_flights(self) -> dict[str, tuple[str, ...]]:
        """Every boarding gate's flights in one statement; a gate assigned none is absent."""
        return self._assignments()

    def _assignments(self, where: str = "", args: tuple = ()) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for gate_id, scope in self.db.execute(
                f"SELECT gate_id, scope FROM gate_assignments {where} ORDER BY gate_id, scope", args).fetchall():
            out.setdefault(gate_id, []).append(scope)
        return {g: tuple(scopes) for g, scopes in out.items()}

    def _load(self, row, assigned: dict[str, tuple[str, ...]] | None = None) -> Principal:
        if row[0] != "gate":
            flights: tuple[str, ...] = ()
        elif assigned is None:
            flights = self.assigned_flights(row[1])
        else:
            flights = assigned.get(row[1], ())
        return Principal(row[0], row[1], row[2], tuple(json.loads(row[3])), flights)

    def _find(self, where: str, arg: str) -> Principal | None:
        row = self.db.execute(f"SELECT kind, ident, public_key, scopes FROM principals WHERE {where} = ?",
                                (arg,)).fetchone()
        return None if row is None else self._load(row)

    def for_key(self, public_key: bytes | str) -> Principal | None:
        text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        return self._find("public_key", text)

    def get(self, name: str) -> Principal | None:
        return self._find("name", name)

    def all(self) -> list[Principal]:
        rows = self.db.execute("SELECT kind, ident, public_key, scopes FROM principals ORDER BY name").fetchall()
        assigned = self.all_assigned_flights()  # one statement, not one per gate
        return [self._load(r, assigned) for r in rows]
