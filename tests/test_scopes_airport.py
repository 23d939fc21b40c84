"""Airport scopes: checkpoint:<IATA>, dated flight scopes and the validity rule."""
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from sync.scopes import (
    ScopeError,
    checkpoint_scope,
    departure_validity_end,
    flight_scope,
    flight_scope_date,
    parse_scope,
    split_key,
)

SAIGON = ZoneInfo("Asia/Ho_Chi_Minh")


def test_checkpoint_and_flight_scopes():
    assert checkpoint_scope("SGN") == "checkpoint:SGN"
    assert parse_scope("checkpoint:SGN") == "/checkpoint/SGN/"
    assert split_key("/checkpoint/SGN/VNM-079203012") == ("/checkpoint/SGN/", "VNM-079203012")
    assert flight_scope("VN", "123", dt.date(2026, 12, 2)) == "flight:VN123-2026-12-02"
    assert flight_scope("VJ", "1234A", dt.date(2026, 12, 2)) == "flight:VJ1234A-2026-12-02"
    assert flight_scope_date("/flight/VN123-2026-12-02/") == dt.date(2026, 12, 2)
    for bad in ("sgn", "SG", "SGNX", ""):
        with pytest.raises(ScopeError, match="3-letter IATA"):
            checkpoint_scope(bad)
    with pytest.raises(ScopeError):
        flight_scope("VN", "12345", dt.date(2026, 12, 2))
    with pytest.raises(ScopeError, match="not a dated flight"):
        flight_scope_date("flight:BA1")
    with pytest.raises(ScopeError, match="not a dated flight"):
        flight_scope_date("lane:VN123-2026-12-02")


def test_validity_ends_grace_after_the_flight_local_day():
    end = departure_validity_end(dt.date(2026, 12, 2), SAIGON, dt.timedelta(hours=3))
    # midnight 3 Dec in Saigon (UTC+7) is 17:00 UTC on 2 Dec; plus 3 h
    assert end == dt.datetime(2026, 12, 2, 20, 0, tzinfo=dt.timezone.utc)
    assert departure_validity_end(dt.date(2026, 12, 2), dt.timezone.utc, dt.timedelta(0)) == \
        dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)
