"""A pure-Python reference model of hotlimit's four algorithms.

Short and written for obviousness, not speed: exact integers and Fractions, full window numbers
(no tags), and `retry_after` found by search where the native code solves for it. It imports
nothing from hotlimit, so it can judge the native core and, later, the Redis scripts.

Every model answers ``(allowed, remaining, reset_after_ns, retry_after_ns)`` for a request of
``cost`` at ``now`` (nanoseconds), and consumes only when ``commit`` and allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

MS = 1_000_000

Answer = tuple[bool, int, int, int]


@dataclass
class TokenBucket:
    """GCRA with emission interval T = ceil(period / limit) and capacity burst * T."""

    limit: int
    period: int
    burst: int
    tat: dict[str, int] = field(default_factory=dict)

    def request(self, key: str, cost: int, now: int, commit: bool = True) -> Answer:
        t = -(-self.period // self.limit)
        cap = self.burst * t
        tat = max(self.tat.get(key, 0), now)
        new_tat = tat + cost * t
        if new_tat - now <= cap:
            if commit:
                self.tat[key] = new_tat
            return True, (cap - (new_tat - now)) // t, new_tat - now, 0
        return False, (cap - (tat - now)) // t, tat - now, new_tat - now - cap

    def reset(self, key: str) -> None:
        self.tat.pop(key, None)


@dataclass
class FixedWindow:
    limit: int
    period: int
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (window, count)

    def request(self, key: str, cost: int, now: int, commit: bool = True) -> Answer:
        window = now // self.period
        w, c = self.counts.get(key, (window, 0))
        count = c if w == window else 0
        end = (window + 1) * self.period - now
        if count + cost <= self.limit:
            if commit:
                self.counts[key] = (window, count + cost)
            return True, self.limit - count - cost, end, 0
        return False, self.limit - count, end if count else 0, end

    def reset(self, key: str) -> None:
        self.counts.pop(key, None)


@dataclass
class SlidingWindow:
    """Previous window weighted by its overlap (in whole ms) plus the current window."""

    limit: int
    period: int
    counts: dict[str, dict[int, int]] = field(default_factory=dict)  # key -> {window: count}

    def _estimate(self, key: str, at: int, extra: int = 0) -> tuple[Fraction, int, int]:
        window = at // self.period
        elapsed_ms = (at - window * self.period) // MS
        period_ms = self.period // MS
        per = self.counts.get(key, {})
        prev, curr = per.get(window - 1, 0), per.get(window, 0) + extra
        return Fraction(prev * (period_ms - elapsed_ms), period_ms) + curr, prev, curr

    def _fits(self, key: str, at: int, cost: int) -> bool:
        return self._estimate(key, at, cost)[0] <= self.limit

    def request(self, key: str, cost: int, now: int, commit: bool = True) -> Answer:
        window = now // self.period
        start = window * self.period
        if self._fits(key, now, cost):
            est, prev, curr = self._estimate(key, now, cost)
            if commit:
                per = self.counts.setdefault(key, {})
                per[window] = per.get(window, 0) + cost
                for w in [w for w in per if w < window - 1]:
                    del per[w]
            reset = start + 2 * self.period - now
            return True, max(0, math.floor(self.limit - est)), reset, 0
        est, prev, curr = self._estimate(key, now)
        reset = start + 2 * self.period - now if curr else (start + self.period - now if prev else 0)
        # The estimate only falls with time (no other hits) and changes on millisecond ticks:
        # binary-search the first tick at which the request fits.
        lo, hi = now // MS + 1, (start + 2 * self.period) // MS
        while lo < hi:
            mid = (lo + hi) // 2
            if self._fits(key, mid * MS, cost):
                hi = mid
            else:
                lo = mid + 1
        return False, max(0, math.floor(self.limit - est)), reset, lo * MS - now

    def reset(self, key: str) -> None:
        self.counts.pop(key, None)


@dataclass
class SlidingLog:
    """The exact number of units consumed in (now - period, now]."""

    limit: int
    period: int
    log: dict[str, list[int]] = field(default_factory=dict)  # key -> one timestamp per unit

    def request(self, key: str, cost: int, now: int, commit: bool = True) -> Answer:
        live = [t for t in self.log.get(key, []) if t > now - self.period]
        if len(live) + cost <= self.limit:
            if commit:
                self.log[key] = [*live, *([now] * cost)]
            return True, self.limit - len(live) - cost, self.period, 0
        # The request fits once the oldest (len + cost - limit) units have left the window.
        leave = live[len(live) + cost - self.limit - 1] + self.period
        return False, self.limit - len(live), live[-1] + self.period - now, leave - now

    def reset(self, key: str) -> None:
        self.log.pop(key, None)


#: One model per algorithm, by the name users give it (a test checks these are exactly the
#: native registry's algorithms).
MODELS = {
    "token_bucket": TokenBucket,
    "sliding_window": SlidingWindow,
    "fixed_window": FixedWindow,
    "sliding_log": SlidingLog,
}


def model(algorithm: str, limit: int, period_ns: int, burst: int | None = None):  # type: ignore[no-untyped-def]
    cls = MODELS[algorithm]
    if cls is TokenBucket:
        return TokenBucket(limit, period_ns, burst or limit)
    return cls(limit, period_ns)
