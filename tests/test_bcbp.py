"""IATA BCBP (Resolution 792) parsing on hand-written passes in the real layout."""
import datetime as dt

import pytest

from devices.bcbp import BcbpError, parse_bcbp, resolve_julian

# The Implementation Guide's example layout: one leg, mandatory items only (60 characters).
IATA_EXAMPLE = "M1DESMARAIS/LUC       EABC123 YULFRAAC 0834 326J001A0025 100"
# A domestic Vietnamese pass with a conditional block: version 6 marker '>6', then 0x18 = 24
# characters of conditional items the parser must skip by size.
COND = ">60B        VN 2A7381234"
HAN = "M1NGUYEN/VAN AN       EXYZ9K2 SGNHANVN 0123 336Y012C0042 1" + f"{len(COND):02X}" + COND
# Two legs: the first leg's conditional block (11 characters), then the second leg's (0).
TWO_LEGS = ("M2TRAN/THI BINH       EABCDEF SGNDADVN 1234A337Y003B0001 10B" + ">5180B VN 2"
            + "ABCDEF DADHANVN 0171 337Y015D0002 100")


def test_iata_example_layout():
    bp = parse_bcbp(IATA_EXAMPLE)
    assert len(IATA_EXAMPLE) == 60
    assert bp.passenger_name == "DESMARAIS/LUC" and bp.surname == "DESMARAIS" and bp.given_names == "LUC"
    assert bp.electronic_ticket
    (leg,) = bp.legs
    assert (leg.pnr, leg.from_airport, leg.to_airport, leg.carrier) == ("ABC123", "YUL", "FRA", "AC")
    assert (leg.flight_number, leg.flight, leg.julian_date) == ("834", "AC834", 326)
    assert (leg.compartment, leg.seat, leg.sequence, leg.passenger_status) == ("J", "001A", "0025", "1")
    assert leg.flight_date(dt.date(2026, 11, 20)) == dt.date(2026, 11, 22)


def test_conditional_block_is_skipped_by_its_size_and_security_section_allowed():
    bp = parse_bcbp(HAN)
    assert bp.legs[0].flight == "VN123" and bp.legs[0].to_airport == "HAN" and bp.legs[0].seat == "012C"
    assert parse_bcbp(HAN + "^164GIWVC5EH7JNT684FVNJ91W2QA4DVN5J8").legs == bp.legs


def test_multi_leg_pass():
    bp = parse_bcbp(TWO_LEGS)
    assert [(leg.from_airport, leg.to_airport, leg.flight) for leg in bp.legs] == [
        ("SGN", "DAD", "VN1234A"), ("DAD", "HAN", "VN171")]
    assert bp.legs[1].seat == "015D" and bp.legs[1].sequence == "0002"


def _set(text: str, at: int, value: str) -> str:
    return text[:at] + value + text[at + len(value):]


@pytest.mark.parametrize("at, value, field", [
    (0, "S", "format code"),
    (1, "5", "number of legs"),
    (2, " " * 20, "passenger name"),
    (22, "X", "electronic ticket indicator"),
    (23, "       ", "PNR"),
    (30, "YU1", "from airport"),
    (33, "fra", "to airport"),
    (36, "A  ", "carrier"),
    (39, "08X4 ", "flight number"),
    (44, "X12", "flight date 'X12' is not a Julian day 001-366"),
    (44, "367", "flight date '367'"),
    (44, "000", "flight date '000'"),
    (47, "1", "compartment"),
    (48, "    ", "seat"),
    (52, "00A25", "check-in sequence"),
    (57, "-", "passenger status"),
    (58, "G0", "conditional size"),
    (58, "05", "conditional block of 5 characters runs past the end"),
])
def test_each_malformed_field_is_named(at, value, field):
    with pytest.raises(BcbpError, match="^BCBP: " + field.replace("(", r"\(")) as err:
        parse_bcbp(_set(IATA_EXAMPLE, at, value))
    assert "\n" not in str(err.value)


def test_truncated_trailing_and_second_leg_errors():
    with pytest.raises(BcbpError, match="mandatory block is cut off"):
        parse_bcbp(IATA_EXAMPLE[:45])
    with pytest.raises(BcbpError, match="not a security section"):
        parse_bcbp(IATA_EXAMPLE + "XYZ")
    with pytest.raises(BcbpError, match="^BCBP: leg 2 from airport"):
        parse_bcbp(_set(TWO_LEGS, 60 + 11 + 7, "D4D"))
    with pytest.raises(BcbpError, match="leg 2 mandatory block is cut off"):
        parse_bcbp(TWO_LEGS[:-5])
    with pytest.raises(BcbpError, match="printable ASCII"):
        parse_bcbp(IATA_EXAMPLE.replace("LUC", "LÜC"))


@pytest.mark.parametrize("day, today, expected", [
    (365, dt.date(2027, 1, 2), dt.date(2026, 12, 31)),  # scanned on 2 Jan for a 31 Dec flight
    (5, dt.date(2026, 12, 20), dt.date(2027, 1, 5)),  # printed before new year for early January
    (336, dt.date(2026, 12, 2), dt.date(2026, 12, 2)),
    (1, dt.date(2026, 12, 1), dt.date(2027, 1, 1)),
    (366, dt.date(2025, 1, 3), dt.date(2024, 12, 31)),  # day 366 only exists in a leap year
    (60, dt.date(2026, 1, 10), dt.date(2025, 3, 1)),  # more than a month ahead: last year's
])
def test_julian_day_resolves_against_today(day, today, expected):
    assert resolve_julian(day, today) == expected


def test_day_366_outside_a_leap_year_is_refused():
    with pytest.raises(BcbpError, match="flight date 366 names no day"):
        resolve_julian(366, dt.date(2026, 12, 2))
