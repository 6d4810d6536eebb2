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

__all__ = ["Style", "rate_limit_headers", "retry_after_seconds"]

Style = Literal["ietf", "draft", "x"]


def retry_after_seconds(d: Decision) -> int:
    """``Retry-After`` for a denial: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(d.retry_after - 1e-9))


_POLICIES: weakref.WeakKeyDictionary[Limiter, tuple[str, str]] = weakref.WeakKeyDictionary()


def _policy(limiter: Limiter) -> tuple[str, str]:
    """(name, RateLimit-Policy item) for a limiter, worked out once."""
    cached = _POLICIES.get(limiter)
    if cached is None:
        raw = (
            getattr(limiter, "name", None) or f"{limiter.rate.limit}-per-{limiter.rate.period_ns // 10**6}ms"
        )
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)
        window = max(1, math.ceil(limiter.rate.period_ns / 1e9))
        cached = _POLICIES[limiter] = (name, f'"{name}";q={limiter.rate.limit};w={window}')
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
        for lim, d in results:
            name, policy = _policy(lim)
            policies.append(policy)
            values.append(f'"{name}";r={d.remaining};t={math.ceil(d.reset_after)}')
        out.append(("RateLimit-Policy", ", ".join(policies)))
        out.append(("RateLimit", ", ".join(values)))
    else:
        prefix = "RateLimit" if style == "draft" else "X-RateLimit"
        lim, d = tightest
        out.append((f"{prefix}-Limit", str(lim.rate.limit)))
        out.append((f"{prefix}-Remaining", str(d.remaining)))
        out.append((f"{prefix}-Reset", str(math.ceil(d.reset_after))))
    if denied:
        worst = max(
            (d for _, d in results if not d.allowed), key=lambda d: d.retry_after, default=tightest[1]
        )
        out.append(("Retry-After", str(retry_after_seconds(worst))))
    return out
