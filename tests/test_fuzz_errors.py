"""Adversarial arguments for every public callable: nothing but hotlimit's own errors escapes.

Each test draws, for each argument of a callable, either a good value or an adversarial one
(ints at and beyond 2**64 and far beyond repr's limit, negatives, bools, NaN, infinities, -0.0,
Unicode digits, None, bytes, containers, objects whose repr fails, ...), and calls it. The call
either succeeds, or raises a :class:`~hotlimit.HotlimitError` that is also a ``ValueError`` or
``TypeError`` and whose message names a parameter or shows a bad value. Any other exception
(OverflowError, a pyo3 TypeError, a ValueError from ``int()`` or ``repr()``) fails the test.
The Redis-mode test also asserts that Redis and hybrid mode answer each call exactly as
memory mode does (the same error class and message, or no error).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hotlimit import (
    Decision,
    HotlimitError,
    Limiter,
    ManualClock,
    Rate,
    RateLimitExceeded,
    ahit_many,
    hit_many,
)
from tests import servers

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class BadRepr:
    """An object whose repr raises: messages must still be built."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def shown(value: object) -> str:
    """A value as hotlimit's messages show it: its repr, cut to 60 characters."""
    try:
        r = repr(value)
    except Exception:
        return "<unprintable>"  # the message must then name the parameter
    return r if len(r) <= 60 else r[:57] + "..."


HUGE = [
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**64),
    -(2**64) - 1,
    10**30,
    -(10**30),
    2**1100,
    10**5000,  # beyond repr's 4300 digits
    -(10**5000),
]
SPECIAL: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    0.0,
    -0.0,
    0.5,
    1.0,
    1e-9,
    5e-324,
    1.8e10,
    1e11,
    1e300,
    -1e300,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "1",
    "1.5",
    "¹",
    "٣",
    "٣/s",
    "10/s; burst=¹",
    "1/s",
    "deny",
    "token_bucket",
    "\udc80",
    "x" * 2000,
    b"",
    b"1",
    b"\xff" * 1025,
    bytearray(b"k"),
    [],
    [1],
    (),
    ("k",),
    ("k", 1),
    ("k", 1, 2),
    {},
    {"k": 1},
    object(),
    Opaque(),
    BadRepr(),
    1 + 2j,
    Decimal("1"),
    Fraction(1, 2),
    timedelta(seconds=1),
    ManualClock(),
    print,
    functools.partial(print),  # callable, without __qualname__
    *HUGE,
]

adversarial = st.one_of(
    st.sampled_from(SPECIAL),
    st.sampled_from(HUGE),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, True, False, None]),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.lists(st.integers(), max_size=2),
)


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A good value a third of the time, else an adversarial one."""
    return st.one_of(good, adversarial, adversarial)


keys = either(st.text(max_size=8) | st.binary(max_size=8))
costs = either(st.integers(min_value=1, max_value=5))
timeouts = either(st.none() | st.floats(min_value=0, max_value=5))
rate_texts = st.one_of(
    st.from_regex(
        r"\A[0-9٣¹]{1,25} ?(/| per )[0-9]{0,25} ?(ms|s|m|h|d|days|x)(; ?burst ?= ?[0-9¹٣]{1,25})?\Z"
    ),
    adversarial,
)

#: What a message may name for each argument (a rate's message names its parts).
NAMES = {
    "rate": ("rate", "limit", "period", "burst"),
    "text": ("rate",),
    "requests": ("requests", "key", "cost"),
}


def checked(call: Callable[[], object], args: dict[str, Any]) -> object:
    """Runs ``call``; a hotlimit error must be a ValueError or TypeError naming one of ``args``
    or showing one of their values. Any other exception propagates (and fails the test)."""
    try:
        return call()
    except RateLimitExceeded:
        return None  # a denial through the decorator: not about the arguments
    except HotlimitError as e:
        error = e
    assert isinstance(error, ValueError | TypeError), f"{type(error).__name__}: {error}"
    msg = str(error)
    names = [n for arg in args for n in NAMES.get(arg, (arg,))]
    assert any(n in msg for n in names) or any(shown(v) in msg for v in args.values()), (
        f"{type(error).__name__} names none of {sorted(args)}: {msg}"
    )
    return error


# -- constructors ----------------------------------------------------------------------------


@FUZZ
@given(
    limit=either(st.integers(1, 100)),
    period=either(st.floats(0.001, 10) | st.integers(1, 10)),
    burst=either(st.none()),
)
@example(limit=1, period=2**1100, burst=None)
def test_rate_constructor(limit: object, period: object, burst: object) -> None:
    checked(lambda: Rate(limit, period, burst), {"limit": limit, "period": period, "burst": burst})  # type: ignore[arg-type]


@FUZZ
@given(text=rate_texts)
@example(text="10/s; burst=¹")
def test_rate_parse(text: object) -> None:
    checked(lambda: Rate.parse(text), {"text": text})  # type: ignore[arg-type]


GOOD_RATES = st.sampled_from(["10/second", "5/minute; burst=2", "100/hour", Rate(3, 1)])
OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "algorithm": st.sampled_from(["token_bucket", "sliding_window", "fixed_window", "sliding_log"]),
    "burst": st.integers(1, 10),
    "max_keys": st.integers(1, 10_000),
    "on_full": st.sampled_from(["deny", "allow"]),
    "sweep_interval": st.floats(0.5, 5),
    "clock": st.builds(ManualClock),
    "shards": st.sampled_from([1, 2, 16]),
    "redis_timeout": st.floats(0.01, 1),
    "prefix": st.sampled_from(["p:", "hotlimit:"]),
    "name": st.sampled_from(["n", "policy"]),
    "deny_cache": st.booleans(),
    "hybrid": st.sampled_from([None, False]),
    "sync_interval": st.floats(0.01, 1),
    "on_redis_error": st.sampled_from(["fallback", "allow", "deny"]),
    "on_error": st.sampled_from([None, print]),
    # Not a URL: the constructor must fail on it before connecting anywhere (False: memory).
    "redis": st.one_of(st.just(False), adversarial.filter(lambda v: v is not None)),
}


options = st.lists(st.sampled_from(sorted(OPTIONS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: either(OPTIONS[n]) for n in names})
)


@FUZZ
@given(rate=st.one_of(GOOD_RATES, GOOD_RATES, rate_texts), options=options)
# The cases, tried on every run whatever the draw.
@example(rate="99999999999999999999999/s", options={})
@example(rate="10/s; burst=¹", options={})
@example(rate="10/s", options={"burst": 2**64})
@example(rate="10/s", options={"max_keys": 2**64})
@example(rate="10/s", options={"algorithm": None})
@example(rate="10/s", options={"sweep_interval": "1"})
def test_limiter_constructor(rate: object, options: dict[str, Any]) -> None:
    kwargs = {"redis": False, **options}
    result = checked(lambda: Limiter(rate, **kwargs), {"rate": rate, **kwargs})  # type: ignore[arg-type]
    if isinstance(result, Limiter):
        result.close()


# -- the calls, in memory mode ----------------------------------------------------------------


@pytest.fixture(scope="module")
def memory() -> Limiter:
    return Limiter("5/second", clock=ManualClock(), redis=False)


def _calls(
    limiter: Limiter, key: object, cost: object, timeout: object
) -> Iterator[tuple[str, Callable[[], object], dict[str, Any]]]:
    both = {"key": key, "cost": cost}
    yield "hit", lambda: limiter.hit(key, cost), both  # type: ignore[arg-type]
    yield "peek", lambda: limiter.peek(key, cost), both  # type: ignore[arg-type]
    yield "allow", lambda: limiter.allow(key, cost), both  # type: ignore[arg-type]
    yield "reset", lambda: limiter.reset(key), {"key": key}  # type: ignore[arg-type]
    yield "acquire", lambda: limiter.acquire(key, cost, timeout), {**both, "timeout": timeout}  # type: ignore[arg-type]
    yield "ahit", lambda: asyncio.run(limiter.ahit(key, cost)), both  # type: ignore[arg-type]
    yield "apeek", lambda: asyncio.run(limiter.apeek(key, cost)), both  # type: ignore[arg-type]
    yield "aallow", lambda: asyncio.run(limiter.aallow(key, cost)), both  # type: ignore[arg-type]
    yield "areset", lambda: asyncio.run(limiter.areset(key)), {"key": key}  # type: ignore[arg-type]
    yield (
        "aacquire",
        lambda: asyncio.run(limiter.aacquire(key, cost, timeout)),  # type: ignore[arg-type]
        {**both, "timeout": timeout},
    )


@FUZZ
@given(key=keys, cost=costs, timeout=timeouts)
@example(key="k", cost=-(2**64), timeout=None)
@example(key="k", cost=1, timeout="1")
@example(key="k", cost=1, timeout=2**1100)
def test_decision_calls(memory: Limiter, key: object, cost: object, timeout: object) -> None:
    for _, call, args in _calls(memory, key, cost, timeout):
        checked(call, args)


requests = either(
    st.lists(
        st.one_of(
            st.tuples(st.just("limiter"), keys),
            st.tuples(st.just("limiter"), keys, costs),
            keys,
            st.tuples(keys, costs),
        ),
        max_size=3,
    )
)


def _resolve(requests: object, limiter: Limiter) -> object:
    """Puts the limiter into drawn (limiter, key[, cost]) tuples."""
    if not isinstance(requests, list):
        return requests
    return [(limiter, *r[1:]) if isinstance(r, tuple) and r[:1] == ("limiter",) else r for r in requests]


@FUZZ
@given(requests=requests)
def test_hit_many(memory: Limiter, requests: object) -> None:
    module_level = _resolve(requests, memory)
    args = {"requests": requests}
    checked(lambda: hit_many(module_level), args)  # type: ignore[arg-type]
    checked(lambda: asyncio.run(ahit_many(module_level)), args)  # type: ignore[arg-type]
    checked(lambda: memory.hit_many(requests), args)  # type: ignore[arg-type]
    checked(lambda: asyncio.run(memory.ahit_many(requests)), args)  # type: ignore[arg-type]


@FUZZ
@given(
    key=either(st.none() | st.text(max_size=8) | st.just(lambda *a, **k: "fixed")),
    cost=costs,
    wait=either(st.booleans()),
    timeout=timeouts,
    data=st.data(),
)
def test_decorator(
    memory: Limiter, key: object, cost: object, wait: object, timeout: object, data: st.DataObject
) -> None:
    args = {"key": key, "cost": cost, "wait": wait, "timeout": timeout}
    decorate = checked(lambda: memory.limit(key, cost=cost, wait=wait, timeout=timeout), args)  # type: ignore[arg-type]
    if callable(decorate):
        fn = data.draw(either(st.just(lambda: "ran")), label="fn")
        guarded = checked(lambda: decorate(fn), {**args, "the decorated object": fn})
        if callable(guarded):
            checked(guarded, args)


# -- ManualClock and Decision -----------------------------------------------------------------

MAX_NS = 18_000_000_000 * 10**9


@FUZZ
@given(
    start=either(st.floats(0, 2e9)),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["advance", "advance_ns", "set"]),
            either(st.floats(0, 1e3) | st.integers(0, 10**12)),
        ),
        max_size=4,
    ),
)
@example(start=1_700_000_000.0, steps=[("advance_ns", 2**64 - 1)])  # wrapped to the past
def test_manual_clock(start: object, steps: list[tuple[str, object]]) -> None:
    clock = checked(lambda: ManualClock(start), {"start": start})  # type: ignore[arg-type]
    if not isinstance(clock, ManualClock):
        return
    for method, value in steps:
        before = clock.now_ns()
        name = "ns" if method == "advance_ns" else "seconds"
        error = checked(lambda: getattr(clock, method)(value), {name: value})  # noqa: B023
        after = clock.now_ns()
        if error is not None:
            assert after == before, "a refused call leaves the clock alone"
        assert before <= after <= MAX_NS, "never back, never past the maximum, never wrapped"


@FUZZ
@given(
    allowed=either(st.booleans()),
    limit=either(st.integers(0, 10)),
    remaining=either(st.integers(0, 10)),
    reset_after=either(st.floats(0, 10)),
    retry_after=either(st.floats(0, 10)),
)
def test_decision_constructor(
    allowed: object, limit: object, remaining: object, reset_after: object, retry_after: object
) -> None:
    args = {
        "allowed": allowed,
        "limit": limit,
        "remaining": remaining,
        "reset_after": reset_after,
        "retry_after": retry_after,
    }
    checked(lambda: Decision(**args), args)


# -- Redis and hybrid mode: the same answers as memory mode -----------------------------------

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def shared(redis_server: servers.Server) -> Iterator[Sequence[Limiter]]:
    """A limiter in each mode, on one policy: memory, Redis, hybrid."""
    url = redis_server.url
    made = [Limiter("5/second", clock=ManualClock(), redis=False)]
    for hybrid in (False, True):
        made.append(
            Limiter(
                "5/second",
                clock=ManualClock(),
                redis=url,
                redis_timeout=2.0,
                prefix=f"fuzz{next(_prefixes)}:",
                hybrid=hybrid,
            )
        )
    assert [m.mode for m in made] == ["memory", "redis", "hybrid"]
    yield made
    for limiter in made:
        limiter.close()


def _outcome(call: Callable[[], object], args: dict[str, Any]) -> tuple[type, str] | None:
    result = checked(call, args)
    return (type(result), str(result)) if isinstance(result, HotlimitError) else None


@FUZZ
@given(key=keys, cost=costs, timeout=timeouts)
@example(key="k", cost=1, timeout=True)  # memory mode took it, Redis mode refused it
@example(key="k", cost=None, timeout=None)  # cost 1, except in Redis mode's async calls
@example(key="k", cost=1, timeout=1e11)  # memory mode refused it, Redis mode took it
def test_redis_and_hybrid_calls_match_memory_mode(
    shared: Sequence[Limiter], key: object, cost: object, timeout: object
) -> None:
    memory, *others = shared
    expected = [_outcome(call, args) for _, call, args in _calls(memory, key, cost, timeout)]
    for limiter in others:
        got = [_outcome(call, args) for _, call, args in _calls(limiter, key, cost, timeout)]
        names = [name for name, _, _ in _calls(limiter, key, cost, timeout)]
        for name, want, have in zip(names, expected, got, strict=True):
            assert have == want, f"{limiter.mode} mode {name}: {have} != memory mode's {want}"


@FUZZ
@given(requests=requests)
def test_redis_and_hybrid_hit_many_match_memory_mode(shared: Sequence[Limiter], requests: object) -> None:
    memory, *others = shared
    want = _outcome(lambda: memory.hit_many(requests), {"requests": requests})  # type: ignore[arg-type]
    for limiter in others:
        have = _outcome(lambda: limiter.hit_many(requests), {"requests": requests})  # type: ignore[arg-type]  # noqa: B023
        assert have == want, f"{limiter.mode} mode hit_many: {have} != memory mode's {want}"
