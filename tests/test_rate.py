from __future__ import annotations

import math
from datetime import timedelta

import pytest

from hotlimit import InvalidRateError, Rate

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "limit", "period_ns", "burst"),
    [
        ("100/minute", 100, 60 * S, None),
        ("10 per second", 10, S, None),
        ("5/10s", 5, 10 * S, None),
        ("1000/hour; burst=50", 1000, 3600 * S, 50),
        ("3 per 2 days", 3, 2 * 86_400 * S, None),
        ("  7 / 250 ms ", 7, 250_000_000, None),
        ("1/D", 1, 86_400 * S, None),
        ("20/5 MINUTES;burst=40;", 20, 300 * S, 40),
    ],
)
def test_parses(text: str, limit: int, period_ns: int, burst: int | None) -> None:
    r = Rate.parse(text)
    assert (r.limit, r.period_ns, r.burst) == (limit, period_ns, burst)
    assert Rate.parse(str(r)) == r, "str() round-trips"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "''"),
        ("100", "'100'"),
        ("100/fortnight", "'fortnight'"),
        ("0/second", "got 0"),
        ("-5/second", "'-5/second'"),
        ("5/0s", "'5/0s'"),
        ("1.5/second", "'1.5/second'"),
        ("10/second; burst=0", "got 0"),
        ("10/second; burst=x", "'burst=x'"),
        ("10/second; rate=4", "'rate=4'"),
        ("10/101 days", "'10/101 days'"),
    ],
)
def test_bad_strings_name_the_value(text: str, named: str) -> None:
    with pytest.raises(InvalidRateError) as e:
        Rate.parse(text)
    assert named in str(e.value)
    assert isinstance(e.value, ValueError)


def test_constructor_and_bad_periods() -> None:
    assert Rate(5, 10).period == 10.0
    assert Rate(5, timedelta(minutes=1)).period_ns == 60 * S
    assert Rate(5, 0.25).period_ns == 250_000_000
    for bad in (0, -1, 0.0005, 1.0001e-3 + 1e-9, math.nan, math.inf, 101 * 86_400):
        with pytest.raises(InvalidRateError) as e:
            Rate(5, bad)
        assert "period" in str(e.value)
    for bad_limit in (0, -3, 2.5, True, "5"):
        with pytest.raises(InvalidRateError) as e:
            Rate(bad_limit, 1)  # type: ignore[arg-type]
        assert repr(bad_limit) in str(e.value) or str(bad_limit) in str(e.value)
    with pytest.raises(InvalidRateError, match="got 0"):
        Rate(5, 1, burst=0)
    with pytest.raises(InvalidRateError, match="got int"):
        Rate.parse(5)  # type: ignore[arg-type]
