"""IATA Bar Coded Boarding Pass (BCBP, Resolution 792): the mandatory fields of every leg.

What a boarding-pass scanner (devices/barcode.py) types is one BCBP string. It lives in
`devices/` beside the scanner so that both the enrolment station and a boarding gate's 1:1
mode can read it without depending on each other.

Layout (format 'M'): a unique header, then per leg a fixed 37-character mandatory block
followed by a conditional block whose length the leg states in two hex digits. The first
leg's conditional block also holds the pass-wide conditional items (version, baggage tags);
this parser skips every conditional block by its stated size and never reads into it, so a
pass written by any airline's version of the conditional section parses the same. A security
section ('^' ...) after the legs is allowed and ignored (its verification key is the
airline's, not ours).

    header  format 'M' (1), number of legs 1-4 (1), passenger name (20), e-ticket indicator (1)
    leg     PNR (7), from (3), to (3), carrier (3), flight number (5), Julian date of flight (3),
            compartment (1), seat (4), check-in sequence (5), passenger status (1),
            size of the conditional block (2, hex), conditional block (that many characters)

The date of flight is a day of the year without a year; `resolve_julian` picks the year.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

MAX_LEGS = 4
HEADER_LEN = 23
LEG_LEN = 37  # mandatory block of one leg, including the 2-character conditional size
# A pass is printed for a flight at most days ahead; a date up to this far ahead of "today"
# is this year's (or next year's), anything later is last year's (scanned on 2 Jan for 31 Dec).
LOOKAHEAD_DAYS = 31

_AIRPORT = re.compile(r"^[A-Z]{3}$")
_CARRIER = re.compile(r"^[A-Z0-9]{2,3}$")
_FLIGHT = re.compile(r"^0*(\d{1,4})([A-Z]?)$")
_SEQUENCE = re.compile(r"^\d{1,4}[A-Z]?$|^\d{5}$")
_SEAT = re.compile(r"^[0-9A-Z]{1,4}$")
_PNR = re.compile(r"^[A-Z0-9]{1,7}$")


class BcbpError(ValueError):
    """A boarding pass that breaks Resolution 792; the message names the field."""


@dataclass(frozen=True)
class BcbpLeg:
    pnr: str
    from_airport: str
    to_airport: str
    carrier: str  # operating carrier designator, e.g. "VN"
    flight_number: str  # without leading zeros, with its suffix letter if any: "123", "834A"
    julian_date: int  # 1..366, day of the year of the flight
    compartment: str
    seat: str  # as printed without padding, e.g. "001A"
    sequence: str  # check-in sequence number without padding
    passenger_status: str

    @property
    def flight(self) -> str:
        """Carrier and number as people say it: "VN123"."""
        return f"{self.carrier}{self.flight_number}"

    def flight_date(self, today: dt.date) -> dt.date:
        return resolve_julian(self.julian_date, today)


@dataclass(frozen=True)
class BoardingPass:
    passenger_name: str  # as encoded: "SURNAME/GIVEN NAMES", upper case ASCII, padding removed
    electronic_ticket: bool
    legs: tuple[BcbpLeg, ...]

    @property
    def surname(self) -> str:
        return self.passenger_name.partition("/")[0]

    @property
    def given_names(self) -> str:
        return self.passenger_name.partition("/")[2]


def resolve_julian(day: int, today: dt.date, lookahead_days: int = LOOKAHEAD_DAYS) -> dt.date:
    """The calendar date of day-of-year `day`: the latest such date no more than
    `lookahead_days` after `today` (day 366 only exists in leap years)."""
    if not 1 <= day <= 366:
        raise BcbpError(f"BCBP: flight date {day:03d} is not a Julian day 001-366")
    limit = today + dt.timedelta(days=lookahead_days)
    for year in (limit.year, limit.year - 1):
        start = dt.date(year, 1, 1)
        candidate = start + dt.timedelta(days=day - 1)
        if candidate.year == year and candidate <= limit:
            return candidate
    raise BcbpError(f"BCBP: flight date {day:03d} names no day in the year up to {limit.isoformat()}")


def _field(text: str, start: int, length: int, name: str) -> str:
    if len(text) < start + length:
        raise BcbpError(f"BCBP: {name} is cut off (the pass ends at character {len(text)}, "
                        f"the field needs {start + length})")
    return text[start:start + length]


def _match(pattern: re.Pattern, raw: str, name: str, rule: str) -> re.Match:
    m = pattern.match(raw.rstrip(" "))
    if m is None:
        raise BcbpError(f"BCBP: {name} {raw!r} is not {rule}")
    return m


def _leg(text: str, at: int, n: int) -> tuple[BcbpLeg, int]:
    label = "" if n == 1 else f"leg {n} "
    raw = _field(text, at, LEG_LEN, f"{label}mandatory block")
    pnr, frm, to, carrier, flight, date, comp, seat, seq, status, size = (
        raw[0:7], raw[7:10], raw[10:13], raw[13:16], raw[16:21], raw[21:24], raw[24], raw[25:29], raw[29:34],
        raw[34], raw[35:37])
    _match(_PNR, pnr, f"{label}PNR", "1-7 letters or digits")
    _match(_AIRPORT, frm, f"{label}from airport", "a 3-letter IATA code")
    _match(_AIRPORT, to, f"{label}to airport", "a 3-letter IATA code")
    _match(_CARRIER, carrier, f"{label}carrier", "a 2-3 character airline designator")
    fm = _match(_FLIGHT, flight.strip(" "), f"{label}flight number", "1-4 digits with an optional letter")
    if not date.isdigit() or not 1 <= int(date) <= 366:
        raise BcbpError(f"BCBP: {label}flight date {date!r} is not a Julian day 001-366")
    if not ("A" <= comp <= "Z"):
        raise BcbpError(f"BCBP: {label}compartment {comp!r} is not a letter A-Z")
    _match(_SEAT, seat, f"{label}seat", "1-4 letters or digits")
    _match(_SEQUENCE, seq, f"{label}check-in sequence", "1-4 digits with an optional letter")
    if not status.isascii() or not status.isalnum():
        raise BcbpError(f"BCBP: {label}passenger status {status!r} is not a letter or digit")
    if not re.fullmatch(r"[0-9A-Fa-f]{2}", size):
        raise BcbpError(f"BCBP: {label}conditional size {size!r} is not 2 hex digits")
    end = at + LEG_LEN + int(size, 16)
    if end > len(text):
        raise BcbpError(f"BCBP: {label}conditional block of {int(size, 16)} characters runs past the end "
                        f"of the pass ({len(text) - at - LEG_LEN} left)")
    leg = BcbpLeg(pnr=pnr.rstrip(" "), from_airport=frm, to_airport=to, carrier=carrier.rstrip(" "),
                  flight_number=fm.group(1) + fm.group(2), julian_date=int(date), compartment=comp,
                  seat=seat.rstrip(" "), sequence=seq.rstrip(" "), passenger_status=status)
    return leg, end


def parse_bcbp(text: str) -> BoardingPass:
    """Parse a scanned BCBP string (one line, as the scanner types it)."""
    if not isinstance(text, str):
        raise BcbpError(f"BCBP: expected text, got {type(text).__name__}")
    if not text.isascii() or not text.isprintable():
        raise BcbpError("BCBP: the pass holds characters outside printable ASCII")
    fmt = _field(text, 0, 1, "format code")
    if fmt != "M":
        raise BcbpError(f"BCBP: format code {fmt!r} is not 'M' (only the multiple-leg format is defined)")
    legs_raw = _field(text, 1, 1, "number of legs")
    if not legs_raw.isdigit() or not 1 <= int(legs_raw) <= MAX_LEGS:
        raise BcbpError(f"BCBP: number of legs {legs_raw!r} is not 1-{MAX_LEGS}")
    name = _field(text, 2, 20, "passenger name").rstrip(" ")
    if not name or name.startswith("/") or not re.fullmatch(r"[A-Z0-9/ .'-]+", name):
        raise BcbpError(f"BCBP: passenger name {name!r} is not SURNAME/GIVEN in capital letters")
    eticket = _field(text, 22, 1, "electronic ticket indicator")
    if eticket not in ("E", " "):
        raise BcbpError(f"BCBP: electronic ticket indicator {eticket!r} is not 'E' or blank")
    at, legs = HEADER_LEN, []
    for n in range(1, int(legs_raw) + 1):
        leg, at = _leg(text, at, n)
        legs.append(leg)
    rest = text[at:]
    if rest and not rest.startswith("^"):
        raise BcbpError(f"BCBP: {len(rest)} character(s) after the last leg that are not a security section "
                        f"(starting '^'): {rest[:12]!r}")
    return BoardingPass(passenger_name=name, electronic_ticket=eticket == "E", legs=tuple(legs))
