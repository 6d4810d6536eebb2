"""Rates: ``limit`` units per ``period``, with an optional token-bucket ``burst``.

Accepted strings (case and spaces do not matter)::

    "100/minute"   "10 per second"   "5/10s"   "1000/hour; burst=50"   "3 per 2 days"

Units: ms, s/sec/second, m/min/minute, h/hr/hour, d/day (plurals too). The period must be a
whole number of milliseconds, from 1 ms to 100 days.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

from hotlimit._errors import InvalidRateError

__all__ = ["Rate"]

_MS = 1_000_000
_S = 1_000_000_000
MAX_PERIOD_NS = 100 * 86_400 * _S

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

_RATE = re.compile(r"^\s*(\d+)\s*(?:/|\s+per\s+)\s*(\d+)?\s*([a-z]+)\s*$", re.IGNORECASE)
_OPTION = re.compile(r"^\s*([a-z_]+)\s*=\s*(\S+)\s*$", re.IGNORECASE)
_NAMES = {86_400 * _S: "day", 3600 * _S: "hour", 60 * _S: "minute", _S: "second"}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRateError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 1:
        raise InvalidRateError(f"{name} must be at least 1, got {value}")
    return value


def _period_ns(period: float | timedelta) -> int:
    if isinstance(period, timedelta):
        ns = (period.days * 86_400 + period.seconds) * _S + period.microseconds * 1000
    elif isinstance(period, bool) or not isinstance(period, int | float):
        raise InvalidRateError(
            f"period must be seconds or a timedelta, got {type(period).__name__}: {period!r}"
        )
    elif not math.isfinite(period):
        raise InvalidRateError(f"period must be a finite number of seconds, got {period!r}")
    else:
        ns = round(period * _S)
    if ns < _MS or ns % _MS:
        raise InvalidRateError(
            f"period must be a whole number of milliseconds, at least 1 ms; got {period!r}"
        )
    if ns > MAX_PERIOD_NS:
        raise InvalidRateError(f"period must be at most 100 days, got {period!r}")
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
            raise InvalidRateError(f"rate must be a str or Rate, got {type(text).__name__}: {text!r}")
        head, *options = text.split(";")
        m = _RATE.match(head)
        if m is None:
            raise InvalidRateError(
                f"cannot parse rate {text!r}: expected forms like '100/minute', '10 per second', '5/10s'"
            )
        count, multiplier, unit = m.groups()
        unit_ns = _UNITS.get(unit.lower())
        if unit_ns is None:
            raise InvalidRateError(
                f"unknown time unit {unit!r} in rate {text!r}; use ms, s, m, h or d (or their names)"
            )
        mult = int(multiplier) if multiplier is not None else 1
        burst: int | None = None
        for opt in options:
            if not opt.strip():
                continue
            om = _OPTION.match(opt)
            if om is None or om.group(1).lower() != "burst" or not om.group(2).isdigit():
                raise InvalidRateError(
                    f"cannot parse option {opt.strip()!r} in rate {text!r}; expected burst=N"
                )
            burst = int(om.group(2))
        if mult == 0:
            raise InvalidRateError(f"period must be positive in rate {text!r}")
        rate = cls.__new__(cls)
        object.__setattr__(rate, "limit", _positive_int("limit", int(count)))
        period_ns = mult * unit_ns
        if period_ns > MAX_PERIOD_NS:
            raise InvalidRateError(f"period must be at most 100 days in rate {text!r}")
        object.__setattr__(rate, "period_ns", period_ns)
        object.__setattr__(rate, "burst", None if burst is None else _positive_int("burst", burst))
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
