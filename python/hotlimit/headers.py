"""Rate-limit response fields: the IETF ``RateLimit`` / ``RateLimit-Policy`` pair
(draft-ietf-httpapi-ratelimit-headers), optionally the older ``RateLimit-Limit/-Remaining/-Reset``
or ``X-RateLimit-*`` fields, and ``Retry-After`` in whole seconds, rounded up."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Literal, NamedTuple

from hotlimit._native import Decision
from hotlimit.limiter import Limiter

__all__ = [
    "SF_INT_MAX",
    "Style",
    "ietf_fields_raw",
    "policy_quota",
    "rate_limit_headers",
    "retry_after_seconds",
]

Style = Literal["ietf", "draft", "x"]


def retry_after_seconds(d: Decision) -> int:
    """``Retry-After`` for a denial: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(d.retry_after - 1e-9))


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


class _Policy(NamedTuple):
    name: str
    q: int
    w: int
    field: str  # the RateLimit-Policy item, under ``name``
    raw_name: bytes
    raw_field: bytes


# By id, with each entry removed when its limiter is collected: a plain dict lookup on every
# request (a WeakKeyDictionary get runs Python code: about 1,100 instructions per request, by callgrind).
_POLICIES: dict[int, _Policy] = {}


def _policy(limiter: Limiter) -> _Policy:
    """A limiter's policy, worked out once."""
    cached = _POLICIES.get(id(limiter))
    if cached is None:
        raw = getattr(limiter, "name", None) or (
            f"{limiter.algorithm}-{limiter.rate.limit}-per-{limiter.rate.period_ns // 10**6}ms"
        )
        # An sf-string holds printable ASCII; keep names to a plain, readable subset of it.
        name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in raw)
        q, w = policy_quota(limiter)
        field = f'"{name}";q={q};w={w}'
        cached = _POLICIES[id(limiter)] = _Policy(name, q, w, field, name.encode(), field.encode())
        weakref.finalize(limiter, _POLICIES.pop, id(limiter), None)
    return cached


def _now_item(name: str, q: int, d: Decision) -> str:
    return f'"{name}";r={min(d.remaining, q)};t={min(math.ceil(d.reset_after), SF_INT_MAX)}'


def ietf_fields_raw(limiter: Limiter, d: Decision) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` for a response decided by one limit, as ASGI
    wants them (lower-case names, bytes): what the middleware adds to every allowed request."""
    p = _policy(limiter)
    now = b'"%s";r=%d;t=%d' % (p.raw_name, min(d.remaining, p.q), min(math.ceil(d.reset_after), SF_INT_MAX))
    return [(b"ratelimit-policy", p.raw_field), (b"ratelimit", now)]


def rate_limit_headers(
    results: Sequence[tuple[Limiter, Decision]], style: Style = "ietf", denied: bool = False
) -> list[tuple[str, str]]:
    """The fields for a response decided by ``results`` (one pair per limit checked).

    The most restrictive limit (fewest units left) is the one the single-valued legacy fields
    describe; the IETF fields list every policy.
    """
    if not results:
        return []
    out: list[tuple[str, str]]
    if len(results) == 1:  # the common case, on every request: no sorting, no renaming
        lim, tightest = results[0]
        if style == "ietf":
            p = _policy(lim)
            out = [("RateLimit-Policy", p.field), ("RateLimit", _now_item(p.name, p.q, tightest))]
        else:
            out = _legacy(style, lim, tightest)
    else:
        lim, tightest = min(results, key=lambda r: (r[1].remaining, -r[1].reset_after))
        if style == "ietf":
            policies = []
            values = []
            used: set[str] = set()
            for each, d in results:
                p = _policy(each)
                # Two limits of one response with the same name (the same rate, counted under
                # other keys) are told apart by a suffix no other name of the response has.
                name, n = p.name, 1
                while name in used:
                    n += 1
                    name = f"{p.name}-{n}"
                used.add(name)
                policies.append(p.field if name == p.name else f'"{name}";q={p.q};w={p.w}')
                values.append(_now_item(name, p.q, d))
            out = [("RateLimit-Policy", ", ".join(policies)), ("RateLimit", ", ".join(values))]
        else:
            out = _legacy(style, lim, tightest)
    if denied:
        worst = max((d for _, d in results if not d.allowed), key=lambda d: d.retry_after, default=tightest)
        out.append(("Retry-After", str(retry_after_seconds(worst))))
    return out


def _legacy(style: Style, lim: Limiter, d: Decision) -> list[tuple[str, str]]:
    prefix = "RateLimit" if style == "draft" else "X-RateLimit"
    return [
        (f"{prefix}-Limit", str(lim.capacity)),
        (f"{prefix}-Remaining", str(d.remaining)),
        (f"{prefix}-Reset", str(math.ceil(d.reset_after))),
    ]
