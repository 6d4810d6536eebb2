"""Rates: ``limit`` units per ``period``, with an optional token-bucket ``burst``.

Accepted strings (case and spaces do not matter)::

    "100/minute"   "10 per second"   "5/10s"   "1000/hour; burst=50"   "3 per 2 days"

Units: ms, s/sec/second, m/min/minute, h/hr/hour, d/day (plurals too). The period must be a
whole number of milliseconds, from 1 ms to 100 days. Numbers are ASCII digits (not ``'¹'`` or
``'٣'``); the limit and the burst are at most 8,640,000,000,000,000 (the most any algorithm
takes: one unit per nanosecond over 100 days). Anything else raises ``InvalidRateError``, whose
message shows the bad value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

from hotlimit._check import shown, type_name
from hotlimit._errors import InvalidRateError

__all__ = ["Rate"]

_MS = 1_000_000
_S = 1_000_000_000
MAX_PERIOD_NS = 100 * 86_400 * _S
#: The largest limit or burst: the token bucket's, one unit per nanosecond of the longest period
#: (every other algorithm takes less; the limiter says which).
MAX_LIMIT = MAX_PERIOD_NS

_UNITS: dict[str, int] = {}
for _names, _ns in (
    (("ms", "msec", "millisecond"), _MS),
    (("s", "sec", "second"), _S),
    (("m", "min", "minute"), 60 * _S),
    (("h", "hr", "hour"), 3600 * _S),
    (("d", "day"), 86_400 * _S),
):
    for _name in _names:
        _UNITS[_name] = _ns
        if len(_name) > 1:
            _UNITS[_name + "s"] = _ns

# ASCII digits only: `\d` would take any Unicode digit ('٣'), and int() fails on some that
# str.isdigit() accepts ('¹').
_RATE = re.compile(r"^\s*([0-9]+)\s*(?:/|\s+per\s+)\s*([0-9]+)?\s*([a-z]+)\s*$", re.IGNORECASE | re.ASCII)
_OPTION = re.compile(r"^\s*([a-z_]+)\s*=\s*(\S+)\s*$", re.IGNORECASE | re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_NAMES = {86_400 * _S: "day", 3600 * _S: "hour", 60 * _S: "minute", _S: "second"}


def _positive_int(name: str, value: object, where: str = "") -> int:
    """An int (not a bool) from 1 to MAX_LIMIT; ``where`` ends the message (the rate string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRateError(f"{name} must be an int, got {type_name(value)}: {shown(value)}{where}")
    if value < 1:
        raise InvalidRateError(f"{name} must be at least 1, got {shown(value)}{where}")
    if value > MAX_LIMIT:
        raise InvalidRateError(f"{name} must be at most {MAX_LIMIT}, got {shown(value)}{where}")
    return value


def _number(name: str, digits: str, where: str) -> int:
    """A count from a rate string (ASCII digits), checked like the constructor's."""
    if len(digits) > 30:  # far above any bound, and int() refuses above 4300 digits
        raise InvalidRateError(
            f"{name} must be at most {MAX_LIMIT}, got {digits[:20]}... ({len(digits)} digits){where}"
        )
    return _positive_int(name, int(digits), where)


def _period_ns(period: float | timedelta) -> int:
    if isinstance(period, timedelta):
        ns = (period.days * 86_400 + period.seconds) * _S + period.microseconds * 1000
    elif isinstance(period, bool) or not isinstance(period, int | float):
        raise InvalidRateError(
            f"period must be seconds or a timedelta, got {type_name(period)}: {shown(period)}"
        )
    else:
        # The value itself: a subclass's own arithmetic or comparisons must not change it.
        value = float.__float__(period) if isinstance(period, float) else int.__index__(period)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRateError(f"period must be a finite number of seconds, got {shown(period)}")
        if value > MAX_PERIOD_NS // _S:  # compared before scaling: 1e300 * 1e9 is inf
            raise InvalidRateError(f"period must be at most 100 days, got {shown(period)}")
        ns = 0 if value < 0 else round(value * _S)
    if ns < _MS or ns % _MS:
        raise InvalidRateError(
            f"period must be a whole number of milliseconds, at least 1 ms; got {shown(period)}"
        )
    if ns > MAX_PERIOD_NS:
        raise InvalidRateError(f"period must be at most 100 days, got {shown(period)}")
    return ns


@dataclass(frozen=True, slots=True, init=False)
class Rate:
    """``limit`` units per ``period``; ``burst`` is the token bucket's capacity (default ``limit``).

    >>> Rate.parse("100/minute; burst=20")
    Rate('100/minute; burst=20')
    >>> Rate(5, 10).period
    10.0
    """

    limit: int
    period_ns: int
    burst: int | None

    def __init__(self, limit: int, period: float | timedelta, burst: int | None = None) -> None:
        object.__setattr__(self, "limit", _positive_int("limit", limit))
        object.__setattr__(self, "period_ns", _period_ns(period))
        object.__setattr__(self, "burst", None if burst is None else _positive_int("burst", burst))

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parses ``"100/minute"``, ``"10 per second"``, ``"5/10s"``, ``"1000/hour; burst=50"``."""
        if not isinstance(text, str):
            raise InvalidRateError(f"rate must be a str or Rate, got {type_name(text)}: {shown(text)}")
        where = f" in rate {shown(text)}"
        head, *options = text.split(";")
        m = _RATE.match(head)
        if m is None:
            raise InvalidRateError(
                f"cannot parse rate {shown(text)}: expected forms like '100/minute', '10 per second', '5/10s'"
            )
        count, multiplier, unit = m.groups()
        unit_ns = _UNITS.get(unit.lower())
        if unit_ns is None:
            raise InvalidRateError(
                f"unknown time unit {shown(unit)}{where}; use ms, s, m, h or d (or their names)"
            )
        burst: int | None = None
        for opt in options:
            if not opt.strip():
                continue
            om = _OPTION.match(opt)
            if om is None or om.group(1).lower() != "burst" or not _DIGITS.fullmatch(om.group(2)):
                raise InvalidRateError(f"cannot parse option {shown(opt.strip())}{where}; expected burst=N")
            burst = _number("burst", om.group(2), where)
        limit = _number("limit", count, where)
        if multiplier is not None and (len(multiplier) > 30 or int(multiplier) * unit_ns > MAX_PERIOD_NS):
            raise InvalidRateError(f"period must be at most 100 days{where}")
        period_ns = (1 if multiplier is None else int(multiplier)) * unit_ns
        if period_ns == 0:
            raise InvalidRateError(f"period must be positive{where}")
        rate = cls.__new__(cls)
        object.__setattr__(rate, "limit", limit)
        object.__setattr__(rate, "period_ns", period_ns)
        object.__setattr__(rate, "burst", burst)
        return rate

    @classmethod
    def coerce(cls, rate: Rate | str) -> Rate:
        """A Rate as it is, or parsed from a string."""
        return rate if isinstance(rate, Rate) else cls.parse(rate)

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self.period_ns / _S

    def with_burst(self, burst: int | None) -> Rate:
        """The same rate with another burst."""
        r = Rate.__new__(Rate)
        object.__setattr__(r, "limit", self.limit)
        object.__setattr__(r, "period_ns", self.period_ns)
        object.__setattr__(r, "burst", None if burst is None else _positive_int("burst", burst))
        return r

    def __str__(self) -> str:
        name = _NAMES.get(self.period_ns)
        if name is not None:
            period = name
        elif self.period_ns % _S == 0:
            period = f"{self.period_ns // _S}s"
        else:
            period = f"{self.period_ns // _MS}ms"
        text = f"{self.limit}/{period}"
        return text if self.burst is None else f"{text}; burst={self.burst}"

    def __repr__(self) -> str:
        return f"Rate({str(self)!r})"
