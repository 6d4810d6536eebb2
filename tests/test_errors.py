"""Bad arguments raise hotlimit's own errors, naming the bad value, the same in every mode.

Each case here was a defect: a built-in OverflowError, TypeError or ValueError escaping, a bad
value accepted in one mode and refused in another, a misleading message, or a ManualClock
that wrapped at 2**64. The mode tests compare each bad call's error in Redis and hybrid mode
with memory mode's, class and message alike. tests/test_fuzz_errors.py throws adversarial
values at every public callable.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hotlimit import (
    ArgumentTypeError,
    CostTypeError,
    Decision,
    HotlimitError,
    InvalidArgumentError,
    InvalidCostError,
    InvalidKeyError,
    InvalidRateError,
    KeyTypeError,
    Limiter,
    ManualClock,
    Rate,
    RateLimitExceeded,
    hit_many,
)
from hotlimit import _native as native
from tests import servers

MODES = ["memory", "redis", "hybrid"]
_prefixes = itertools.count()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def build(mode: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Limiter]]:
    """Makes limiters in the mode under test (a redis server only for the shared modes)."""
    url = None if mode == "memory" else request.getfixturevalue("redis_server").url
    made: list[Limiter] = []

    def make(rate: object = "10/second", **kw: Any) -> Limiter:
        kw = {"clock": ManualClock(1_800_000_000.0), **kw}
        if url is None:
            kw.setdefault("redis", False)
        else:
            kw.setdefault("redis", url)
            kw.setdefault("redis_timeout", 2.0)
            kw.setdefault("prefix", f"err{next(_prefixes)}:")
            kw.setdefault("hybrid", mode == "hybrid")
        limiter = Limiter(rate, **kw)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


def _id(value: object) -> str:
    try:
        return repr(value)[:40]
    except ValueError:  # an int too long for repr
        return "huge"


def _error(fn: Callable[[], object]) -> HotlimitError:
    with pytest.raises(HotlimitError) as e:
        fn()
    assert isinstance(e.value, ValueError | TypeError), repr(e.value)
    return e.value


def _same_as_memory(
    fn: Callable[[Callable[..., Limiter]], object],
    error: type[Exception],
    named: str,
    build: Callable[..., Limiter],
) -> None:
    """``fn(make)`` raises ``error`` naming ``named``, with memory mode's message word for word."""
    got = _error(lambda: fn(build))
    memory: list[Limiter] = []

    def make_memory(rate: object = "10/second", **kw: Any) -> Limiter:
        limiter = Limiter(rate, **{"clock": ManualClock(1_800_000_000.0), "redis": False, **kw})  # type: ignore[arg-type]
        memory.append(limiter)
        return limiter

    reference = _error(lambda: fn(make_memory))
    assert type(got) is error, f"{type(got).__name__}: {got}"
    assert named in str(got), str(got)
    assert (type(got), str(got)) == (type(reference), str(reference)), "differs from memory mode"


# -- the constructor ------------------------------------------------------------------------

CONSTRUCTOR = [
    # Overflow: was builtins.OverflowError.
    ({"rate": "99999999999999999999999/s"}, InvalidRateError, "99999999999999999999999"),
    ({"rate": "1" * 5000 + "/s"}, InvalidRateError, "5000 digits"),  # was ValueError (int())
    ({"burst": 2**64}, InvalidRateError, "18446744073709551616"),
    ({"rate": "10/s; burst=99999999999999999999999"}, InvalidRateError, "99999999999999999999999"),
    ({"max_keys": 2**64}, InvalidArgumentError, "max_keys"),
    ({"shards": 2**64}, InvalidArgumentError, "shards"),
    ({"sweep_interval": 2**1100}, InvalidArgumentError, "sweep_interval"),
    ({"rate": Rate(1, 1), "burst": 10**5000}, InvalidRateError, "int of 16610 bits"),
    # Unicode digits: '¹' was a plain ValueError, '٣' was read as 3.
    ({"rate": "10/s; burst=¹"}, InvalidRateError, "'burst=¹'"),
    ({"rate": "٣/s"}, InvalidRateError, "'٣/s'"),
    ({"rate": "10/s; burst=٣"}, InvalidRateError, "'burst=٣'"),
    # Wrong types: were builtins.TypeError.
    ({"algorithm": None}, ArgumentTypeError, "algorithm"),
    ({"on_full": None}, ArgumentTypeError, "on_full"),
    ({"sweep_interval": "1"}, ArgumentTypeError, "sweep_interval must be a number of seconds, not str: '1'"),
    # Bools where a number is expected: were accepted (sweep_interval) or an InvalidArgumentError.
    ({"sweep_interval": True}, ArgumentTypeError, "not bool: True"),
    ({"max_keys": True}, ArgumentTypeError, "max_keys must be an int, not bool: True"),
    ({"shards": 4.0}, ArgumentTypeError, "shards must be an int or None, not float: 4.0"),
    ({"clock": "now"}, ArgumentTypeError, "'now'"),
    # Redis options: were checked in Redis mode only (accepted in memory mode).
    ({"redis_timeout": "1"}, ArgumentTypeError, "redis_timeout"),
    ({"redis_timeout": 0}, InvalidArgumentError, "redis_timeout"),
    ({"redis_timeout": math.nan}, InvalidArgumentError, "nan"),
    ({"prefix": 1}, ArgumentTypeError, "prefix"),
    ({"prefix": "a b"}, InvalidArgumentError, "'a b'"),
    ({"name": "{x}"}, InvalidArgumentError, "'{x}'"),
    ({"deny_cache": 1}, ArgumentTypeError, "deny_cache must be True or False, not int: 1"),
    ({"hybrid": "yes"}, ArgumentTypeError, "hybrid must be True, False or None, not str: 'yes'"),
    ({"sync_interval": "0.1"}, ArgumentTypeError, "sync_interval"),
    ({"sync_interval": math.inf}, InvalidArgumentError, "inf"),
    ({"on_redis_error": None}, ArgumentTypeError, "on_redis_error"),
    ({"on_redis_error": "ignore"}, InvalidArgumentError, "'ignore'"),
    ({"on_error": 3}, ArgumentTypeError, "on_error must be callable or None, not int: 3"),
]


@pytest.mark.parametrize(("kwargs", "error", "named"), CONSTRUCTOR, ids=_id)
def test_constructor_errors_are_the_same_in_every_mode(
    build: Callable[..., Limiter], kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    _same_as_memory(lambda make: make(**kwargs), error, named, build)


# -- the decision calls ---------------------------------------------------------------------

CALLS: list[tuple[str, tuple[Any, ...], type[Exception], str]] = [
    # -2**64 was "above capacity"; 2**64 and beyond, huge ints.
    ("hit", ("k", -(2**64)), InvalidCostError, "cost must be at least 1, got -18446744073709551616"),
    ("peek", ("k", -(10**5000)), InvalidCostError, "at least 1, got <negative int of 16610 bits>"),
    ("allow", ("k", 2**64), InvalidCostError, "cost 18446744073709551616 is above"),
    ("hit", ("k", 10**5000), InvalidCostError, "cost <int of 16610 bits> is above"),
    ("hit", ("k", True), CostTypeError, "not bool: True"),
    ("hit", ("k", None), CostTypeError, "not NoneType: None"),  # was cost 1 in memory mode only
    ("acquire", ("k", None), CostTypeError, "not NoneType: None"),
    ("hit", ("k", 2.0), CostTypeError, "not float: 2.0"),
    ("hit", ("k", "1" * 100), CostTypeError, "'" + "1" * 56 + "..."),
    ("hit", (42,), KeyTypeError, "not int: 42"),
    ("peek", (b"x" * 2000,), InvalidKeyError, "2000 bytes"),
    ("allow", ("bad\udc80",), InvalidKeyError, "surrogate"),
    ("reset", (None,), KeyTypeError, "NoneType"),
    # acquire's timeout: "1" was builtins.TypeError; True was accepted in memory mode and
    # refused in Redis mode; 2**1100 an OverflowError; 1e11 refused in memory mode only.
    ("acquire", ("k", 1, "1"), ArgumentTypeError, "timeout must be a number of seconds or None, not str"),
    ("acquire", ("k", 1, True), ArgumentTypeError, "timeout"),
    ("acquire", ("k", 1, 2**1100), InvalidArgumentError, "timeout"),
    ("acquire", ("k", 1, 1e11), InvalidArgumentError, "timeout must be a number of seconds in [0, 1.8e10]"),
    ("acquire", ("k", 1, -0.5), InvalidArgumentError, "-0.5"),
    # The same order in every mode: cost, then key, then timeout.
    ("acquire", (42, "c", "t"), CostTypeError, "'c'"),
    ("acquire", (42, 1, "t"), KeyTypeError, "42"),
    ("acquire", ("k", 0), InvalidCostError, "got 0"),
    # hit_many: a non-iterable was builtins.TypeError; a str was taken as keys "a", "b".
    ("hit_many", (3,), ArgumentTypeError, "requests must be an iterable"),
    ("hit_many", ("ab",), ArgumentTypeError, "not one key"),
    ("hit_many", ([42],), ArgumentTypeError, "requests must hold keys or (key, cost) pairs, got 42"),
    ("hit_many", ([("k", -(2**64))],), InvalidCostError, "at least 1"),
    ("hit_many", ([(7, 1)],), KeyTypeError, "not int: 7"),
]


@pytest.mark.parametrize(("method", "args", "error", "named"), CALLS, ids=_id)
def test_call_errors_are_the_same_in_every_mode(
    build: Callable[..., Limiter], method: str, args: tuple[Any, ...], error: type[Exception], named: str
) -> None:
    _same_as_memory(lambda make: getattr(make(), method)(*args), error, named, build)
    if method in ("hit", "peek", "allow", "reset", "acquire", "hit_many"):
        # The async twin, the same.
        _same_as_memory(lambda make: asyncio.run(getattr(make(), "a" + method)(*args)), error, named, build)


def test_module_hit_many_requests(build: Callable[..., Limiter]) -> None:
    _same_as_memory(lambda make: hit_many(3), ArgumentTypeError, "requests", build)  # type: ignore[arg-type]
    _same_as_memory(
        lambda make: hit_many([("not a limiter", "k")]),  # type: ignore[list-item]
        ArgumentTypeError,
        "'not a limiter'",
        build,
    )
    _same_as_memory(lambda make: hit_many([(make(), "k", 0.5)]), CostTypeError, "0.5", build)


DECORATOR = [
    ({"cost": 0}, InvalidCostError, "got 0"),
    ({"wait": "yes"}, ArgumentTypeError, "wait must be True or False, not str: 'yes'"),
    ({"wait": True, "timeout": "1"}, ArgumentTypeError, "timeout"),  # was builtins.TypeError, at call
    ({"key": 42}, KeyTypeError, "42"),  # was raised at the first call only
]


@pytest.mark.parametrize(("kwargs", "error", "named"), DECORATOR, ids=_id)
def test_decorator_errors_at_decoration_in_every_mode(
    build: Callable[..., Limiter], kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    _same_as_memory(lambda make: make().limit(**kwargs), error, named, build)


def test_redis_key_in_memory_mode() -> None:
    """Was an AttributeError (no Redis key prefix in memory mode)."""
    limiter = Limiter("1/s", redis=False)
    with pytest.raises(KeyTypeError, match="not int: 3"):
        limiter.redis_key(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"redis_key\(.k.\): this limiter keeps its state"):
        limiter.redis_key("k")


def test_decorating_a_partial() -> None:
    """A callable without ``__qualname__`` (a partial) was an AttributeError at decoration."""
    limiter = Limiter("1/minute", redis=False)
    guarded = limiter.limit()(functools.partial(str, "ran"))
    assert guarded() == "ran"
    with pytest.raises(RateLimitExceeded):
        guarded()
    with pytest.raises(ArgumentTypeError, match="the decorated object must be a function, not int: 3"):
        limiter.limit()(3)  # type: ignore[arg-type]


def test_outage_answers_check_the_key() -> None:
    """on_redis_error="allow" during an outage: a bad key is still a KeyTypeError (it was
    allowed)."""
    limiter = Limiter("1/s", redis=f"redis://127.0.0.1:{servers.free_port()}", on_redis_error="allow")
    try:
        assert limiter.hit("k").allowed, "the outage answer"
        with pytest.raises(KeyTypeError, match="not int: 42"):
            limiter.hit(42)  # type: ignore[arg-type]
    finally:
        limiter.close()


# -- ManualClock ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "named"),
    [
        (lambda c: c.advance_ns(2**64), InvalidArgumentError, "18446744073709551616"),  # OverflowError
        (lambda c: c.advance_ns(-1), InvalidArgumentError, "got -1"),  # OverflowError
        (lambda c: c.advance_ns("1"), ArgumentTypeError, "ns must be an int, not str: '1'"),  # TypeError
        (lambda c: c.advance_ns(True), ArgumentTypeError, "bool"),  # was accepted
        (lambda c: c.advance_ns(1.5), ArgumentTypeError, "float"),
        (lambda c: c.advance("1"), ArgumentTypeError, "seconds must be a number, not str"),  # TypeError
        (lambda c: c.advance(True), ArgumentTypeError, "bool"),  # was accepted
        (lambda c: c.advance(2**1100), InvalidArgumentError, "seconds"),  # OverflowError
        (lambda c: c.advance(-0.5), InvalidArgumentError, "-0.5"),
        (lambda c: c.set(None), ArgumentTypeError, "NoneType"),  # TypeError
        (lambda c: c.set(2**1100), InvalidArgumentError, "seconds"),  # OverflowError
        (lambda c: c.set(1.0), InvalidArgumentError, "back"),  # went backwards silently
        (lambda c: ManualClock(None), ArgumentTypeError, "start"),  # TypeError
        (lambda c: ManualClock("1"), ArgumentTypeError, "start"),  # TypeError
        (lambda c: ManualClock(False), ArgumentTypeError, "bool"),  # was accepted
        (lambda c: ManualClock(math.nan), InvalidArgumentError, "nan"),
    ],
)
def test_manual_clock_bad_arguments(
    call: Callable[[ManualClock], object], error: type[Exception], named: str
) -> None:
    clock = ManualClock()
    before = clock.now_ns()
    e = _error(lambda: call(clock))
    assert type(e) is error and named in str(e), f"{type(e).__name__}: {e}"
    assert clock.now_ns() == before, "a refused call leaves the clock alone"


def test_manual_clock_never_wraps_nor_goes_back() -> None:
    """advance_ns wrapped at 2**64 (and advance past 1.8e10 s), so a token bucket saw time go
    back and a key's state from the future; now both are refused and the clock stays put."""
    clock = ManualClock()
    limiter = Limiter("1/hour", clock=clock, redis=False)
    assert limiter.hit("k").allowed and not limiter.hit("k").allowed
    before = clock.now_ns()
    with pytest.raises(InvalidArgumentError, match="past its maximum"):
        clock.advance_ns(2**64 - before)  # wrapped to 0 before
    with pytest.raises(InvalidArgumentError, match=r"advance\(18000000000\.0\) would move the clock past"):
        clock.advance(1.8e10)  # wrapped too
    assert clock.now_ns() == before
    assert not limiter.hit("k").allowed, "still denied: time did not move"
    clock.set(clock.now() + 1)
    clock.advance_ns(18_000_000_000 * 10**9 - clock.now_ns())  # exactly to the maximum is fine
    assert clock.now() == 1.8e10
    with pytest.raises(InvalidArgumentError, match="past its maximum"):
        clock.advance_ns(1)
    assert limiter.hit("k").allowed, "an hour has passed (and then some)"


# -- Rate, Decision, and the native classes on their own ---------------------------------------


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: Rate(2**64, 1), "limit must be at most 8640000000000000, got 18446744073709551616"),
        (lambda: Rate(1, 2**1100), "period must be at most 100 days"),  # OverflowError
        (lambda: Rate(1, 1e300), "period must be at most 100 days, got 1e+300"),  # OverflowError
        (lambda: Rate(1, -1e308), "at least 1 ms; got -1e+308"),  # OverflowError
        (lambda: Rate(10**5000, 1), "got <int of 16610 bits>"),  # ValueError from repr()
        (lambda: Rate(1, 1, 2**64), "burst must be at most"),
        (lambda: Rate.parse("1" * 5000 + "/s"), "(5000 digits)"),  # ValueError from int()
        (lambda: Rate.parse("5/" + "9" * 5000 + "s"), "period must be at most 100 days"),
        (lambda: Rate.parse("10/s; burst=¹"), "'burst=¹'"),  # ValueError from int()
        (lambda: Rate.parse("٣/s"), "'٣/s'"),  # was 3/s
    ],
)
def test_rate_errors(make: Callable[[], object], named: str) -> None:
    e = _error(make)
    assert type(e) is InvalidRateError and named in str(e), f"{type(e).__name__}: {e}"


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"allowed": 1}, ArgumentTypeError, "allowed must be True or False, not int: 1"),
        ({"limit": -1}, InvalidArgumentError, "limit"),  # OverflowError
        ({"remaining": 2**64}, InvalidArgumentError, "remaining"),  # OverflowError
        ({"reset_after": "1"}, ArgumentTypeError, "reset_after"),  # TypeError
        ({"retry_after": math.nan}, InvalidArgumentError, "retry_after"),
    ],
)
def test_decision_constructor(kwargs: dict[str, Any], error: type[Exception], named: str) -> None:
    good: dict[str, Any] = {"allowed": True, "limit": 1, "remaining": 0, "reset_after": 1.0, "retry_after": 0}
    e = _error(lambda: Decision(**{**good, **kwargs}))
    assert type(e) is error and named in str(e), f"{type(e).__name__}: {e}"


@pytest.mark.parametrize(
    ("make", "error", "named"),
    [
        (
            lambda: native.NativeLimiter(algorithm="token_bucket", limit=2**64, period_ns=10**9),
            InvalidRateError,
            "limit",
        ),
        (
            lambda: native.NativeLimiter(algorithm="token_bucket", limit=1, period_ns=-1),
            InvalidRateError,
            "period_ns",
        ),
        (
            lambda: native.NativeLimiter(algorithm=None, limit=1, period_ns=10**9),
            ArgumentTypeError,
            "algorithm",
        ),
        (
            lambda: native.NativeLimiter(algorithm="token_bucket", limit=1, period_ns=10**9, max_keys=2**64),
            InvalidArgumentError,
            "max_keys",
        ),
        (
            lambda: native.NativeLimiter(
                algorithm="token_bucket", limit=1, period_ns=10**9, sweep_interval="1"
            ),
            ArgumentTypeError,
            "sweep_interval",
        ),
        (
            lambda: native.DenyFront(limit=2**64, capacity=1, miss_hit=print, miss_peek=print),
            InvalidRateError,
            "limit",
        ),
    ],
)
def test_native_classes_raise_hotlimit_errors(
    make: Callable[[], object], error: type[Exception], named: str
) -> None:
    """The Rust bindings take every argument as a Python object and check it: no u64 conversion
    raises OverflowError (nor a pyo3 TypeError) across the boundary."""
    e = _error(make)
    assert type(e) is error and named in str(e), f"{type(e).__name__}: {e}"


def test_subclasses_are_read_for_their_value() -> None:
    """An int or float subclass with its own arithmetic or comparisons: Rate() computed the
    period with the subclass's __mul__ (a builtin ValueError or TypeError escaped), and memory
    mode's cost check used the subclass's __lt__ ("above capacity" for -5, where Redis mode
    said "at least 1"). Each is read for its value now."""

    class F(float):
        def __mul__(self, other: object) -> float:
            return float("nan")

        __rmul__ = __mul__

    class I(int):  # noqa: E742 - a short name, as in the report
        def __mul__(self, other: object) -> str:
            return "x"

        __rmul__ = __mul__

    class Liar(int):
        def __lt__(self, other: object) -> bool:
            return False

    assert Rate(1, F(1.0)).period_ns == 1_000_000_000
    assert Rate(1, I(2)).period_ns == 2_000_000_000
    with pytest.raises(InvalidCostError, match="at least 1"):
        Limiter("5/s").hit("k", Liar(-5))
