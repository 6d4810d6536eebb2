"""Rate-limit response fields: the IETF ``RateLimit`` / ``RateLimit-Policy`` pair
(draft-ietf-httpapi-ratelimit-headers), optionally the older ``RateLimit-Limit/-Remaining/-Reset``
or ``X-RateLimit-*`` fields, and ``Retry-After`` in whole seconds, rounded up."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Literal

from hotlimit._native import Decision
from hotlimit.limiter import Limiter

__all__ = ["SF_INT_MAX", "Style", "policy_quota", "rate_limit_headers", "retry_after_seconds"]

Style = Literal["ietf", "draft", "x"]


def retry_after_seconds(d: Decision) -> int:
    """``Retry-After`` for a denial: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(d.retry_after - 1e-9))


_POLICIES: weakref.WeakKeyDictionary[Limiter, tuple[str, int, int]] = weakref.WeakKeyDictionary()

#: The largest sf-integer (RFC 9651 section 3.3.1: at most 15 digits).
SF_INT_MAX = 999_999_999_999_999


def policy_quota(limiter: Limiter) -> tuple[int, int]:
    """``(q, w)`` of the limiter's ``RateLimit-Policy``: a quota ``q`` that a client can really
    get in a window of ``w`` whole seconds, both sf-integers.

    Windows: ``limit`` per period; a period that is not whole seconds is stated over the least
    whole number of seconds that holds whole periods (``3/500ms`` is ``q=6;w=1``, not half the
    rate). Token bucket: the burst, over the time the bucket takes to fill again (at least a
    second, and then at least the rate over that time), so ``r`` never exceeds ``q``. A quota
    beyond 15 digits is stated per second, capped at the largest sf-integer.
    """
    rate = limiter.rate
    period_ns = rate.period_ns
    if limiter.algorithm == "token_bucket":
        emission = -(-period_ns // rate.limit)  # T, rounded up as the core does
        w = max(1, -(-limiter.capacity * emission // 10**9))
        q = max(limiter.capacity, rate.limit * w * 10**9 // period_ns)
    else:
        period_ms = period_ns // 10**6
        w_ms = math.lcm(period_ms, 1000)
        w, q = w_ms // 1000, rate.limit * (w_ms // period_ms)
    if q > SF_INT_MAX or w > SF_INT_MAX:
        w, q = 1, max(1, min(SF_INT_MAX, rate.limit * 10**9 // period_ns))
    return q, w


def _policy(limiter: Limiter) -> tuple[str, int, int]:
    """(name, q, w) for a limiter, worked out once."""
    cached = _POLICIES.get(limiter)
    if cached is None:
        raw = getattr(limiter, "name", None) or (
            f"{limiter.algorithm}-{limiter.rate.limit}-per-{limiter.rate.period_ns // 10**6}ms"
        )
        # An sf-string holds printable ASCII; keep names to a plain, readable subset of it.
        name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in raw)
        cached = _POLICIES[limiter] = (name, *policy_quota(limiter))
    return cached


def rate_limit_headers(
    results: Sequence[tuple[Limiter, Decision]], style: Style = "ietf", denied: bool = False
) -> list[tuple[str, str]]:
    """The fields for a response decided by ``results`` (one pair per limit checked).

    The most restrictive limit (fewest units left) is the one the single-valued legacy fields
    describe; the IETF fields list every policy.
    """
    if not results:
        return []
    out: list[tuple[str, str]] = []
    tightest = min(results, key=lambda r: (r[1].remaining, -r[1].reset_after))
    if style == "ietf":
        policies = []
        values = []
        used: set[str] = set()
        for lim, d in results:
            base, q, w = _policy(lim)
            # Two limits of one response with the same name (the same rate, counted under
            # other keys) are told apart by a suffix no other name of the response has.
            name, n = base, 1
            while name in used:
                n += 1
                name = f"{base}-{n}"
            used.add(name)
            policies.append(f'"{name}";q={q};w={w}')
            values.append(f'"{name}";r={min(d.remaining, q)};t={min(math.ceil(d.reset_after), SF_INT_MAX)}')
        out.append(("RateLimit-Policy", ", ".join(policies)))
        out.append(("RateLimit", ", ".join(values)))
    else:
        prefix = "RateLimit" if style == "draft" else "X-RateLimit"
        lim, d = tightest
        out.append((f"{prefix}-Limit", str(lim.capacity)))
        out.append((f"{prefix}-Remaining", str(d.remaining)))
        out.append((f"{prefix}-Reset", str(math.ceil(d.reset_after))))
    if denied:
        worst = max(
            (d for _, d in results if not d.allowed), key=lambda d: d.retry_after, default=tightest[1]
        )
        out.append(("Retry-After", str(retry_after_seconds(worst))))
    return out
