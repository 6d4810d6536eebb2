"""The public Limiter API in memory mode, and every bad input it can be given."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

import hotlimit
from hotlimit import (
    ALGORITHMS,
    MAX_KEY_BYTES,
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
)


@pytest.fixture
def clock() -> ManualClock:
    c = ManualClock(1_800_000_000.0)
    return c


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_limit_then_deny_then_recover(algorithm: str, clock: ManualClock) -> None:
    limiter = Limiter("5/second", algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    decisions = [limiter.hit("user:1") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    denied = decisions[-1]
    assert not denied and denied.retry_after > 0 and denied.limit == 5
    assert limiter.hit("user:2").allowed, "keys are independent"
    clock.advance(denied.retry_after)
    assert limiter.hit("user:1").allowed, "allowed again exactly at retry_after"
    clock.advance(2.0)
    assert limiter.peek("user:1").remaining == 4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_consumes_nothing_and_reset_forgets(algorithm: str, clock: ManualClock) -> None:
    limiter = Limiter("3/minute", algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
    for _ in range(10):
        assert limiter.peek("k", 2).allowed
    assert len(limiter) == 0, "peek does not insert"
    assert limiter.hit("k", 3).allowed
    assert not limiter.peek("k").allowed
    assert limiter.reset("k") is True
    assert limiter.reset("k") is False
    assert limiter.hit("k", 3).allowed


def test_decision_is_immutable_and_comparable() -> None:
    d = Limiter("1/second").hit("x")
    assert isinstance(d, Decision)
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]
    same = Decision(allowed=d.allowed, limit=1, remaining=0, reset_after=d.reset_after, retry_after=0.0)
    assert d == same
    assert "allowed=True" in repr(d)


def test_a_decision_someone_holds_never_changes() -> None:
    """hit/peek hand a Decision back to a pool and refill it only once nothing else refers to
    it. Every way of keeping one (a name, a list, a container, a pending argument, a thread's
    list) must see the values it was given, never a later decision's."""
    import gc
    import weakref

    limiter = Limiter("100/hour")
    first = limiter.hit("k")
    second = limiter.hit("k")
    kept = [limiter.hit("k") for _ in range(5)]
    peeked = limiter.peek("k")
    for _ in range(20):
        limiter.hit("other")  # dropped at once: these are the ones the pool refills
    assert (first.remaining, second.remaining) == (99, 98)
    assert [d.remaining for d in kept] == [97, 96, 95, 94, 93]
    assert peeked.remaining == 92 and peeked.allowed
    by_id = {id(d): d for d in (first, second, *kept, peeked)}
    assert len(by_id) == 8, "every Decision still held is a distinct object"
    with pytest.raises(TypeError):
        weakref.ref(first)  # no weak references: a pooled Decision cannot be reached that way
    assert first == Decision(
        allowed=True, limit=100, remaining=99, reset_after=first.reset_after, retry_after=0.0
    )
    gc.collect()
    assert [d.remaining for d in kept] == [97, 96, 95, 94, 93]

    # Threads: each keeps every Decision of its own key; any refill of a held one would show
    # as a wrong sequence.
    per_thread = 2_000
    shared = Limiter(f"{per_thread}/hour")
    results: dict[int, list[Decision]] = {}

    def worker(t: int) -> None:
        mine = [shared.hit(f"t{t}") for _ in range(per_thread)]
        for _ in range(per_thread):
            shared.hit(f"noise{t}")
        results[t] = mine

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for mine in results.values():
        assert [d.remaining for d in mine] == list(range(per_thread - 1, -1, -1))


def test_str_and_bytes_keys_and_unicode(clock: ManualClock) -> None:
    limiter = Limiter("1/second", clock=clock)
    assert limiter.hit("ключ-🔑").allowed
    assert not limiter.hit("ключ-🔑".encode()).allowed, "a str key and its UTF-8 bytes are the same key"
    assert limiter.hit("x" * MAX_KEY_BYTES).allowed
    assert limiter.hit("").allowed


def test_allow_is_hit_without_the_decision(clock: ManualClock) -> None:
    limiter = Limiter("2/second", clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]


def test_burst_differs_from_limit(clock: ManualClock) -> None:
    limiter = Limiter("10/second; burst=3", clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.advance(0.1)
    assert limiter.allow("a") and not limiter.allow("a")
    assert Limiter("10/second", burst=3, clock=clock).capacity == 3
    with pytest.raises(InvalidRateError, match="conflicts"):
        Limiter("10/second; burst=3", burst=4)


def test_acquire_waits_on_the_clock(clock: ManualClock) -> None:
    limiter = Limiter("2/second", clock=clock)
    t0 = clock.now()
    for _ in range(5):
        assert limiter.acquire("k").allowed
    # Two at once, then one every 0.5 s.
    assert clock.now() - t0 == pytest.approx(1.5, abs=1e-6)


def test_acquire_timeout_returns_the_denial_without_waiting_past_it(clock: ManualClock) -> None:
    limiter = Limiter("1/minute", clock=clock)
    assert limiter.acquire("k").allowed
    t0 = clock.now()
    d = limiter.acquire("k", timeout=5)
    assert not d.allowed and d.retry_after > 5
    assert clock.now() == t0, "gave up at once: the wait could not fit the timeout"
    d = limiter.acquire("k", timeout=61)
    assert d.allowed and clock.now() - t0 == pytest.approx(60, abs=1e-6)


def test_acquire_real_clock_releases_the_gil() -> None:
    """While one thread waits in acquire, another keeps running Python code."""
    limiter = Limiter("20/second; burst=1")
    assert limiter.allow("k")
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        for _ in range(3):
            assert limiter.acquire("k", timeout=5).allowed
    finally:
        done.set()
        t.join()
    assert ticks > 1000


def test_async_twins(clock: ManualClock) -> None:
    limiter = Limiter("2/second", clock=clock)

    async def main() -> None:
        assert (await limiter.ahit("a")).allowed
        assert (await limiter.apeek("a")).remaining == 0
        assert await limiter.aallow("a")
        assert not await limiter.aallow("a")
        t0 = clock.now()
        assert (await limiter.aacquire("a")).allowed
        assert clock.now() - t0 == pytest.approx(0.5, abs=1e-6)
        assert not (await limiter.aacquire("a", timeout=0.1)).allowed
        assert await limiter.areset("a")
        async with limiter as same:
            assert same is limiter

    asyncio.run(main())


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "error", "named"),
    [
        (42, KeyTypeError, "not int: 42"),
        (None, KeyTypeError, "None"),
        (("a",), KeyTypeError, "tuple"),
        (bytearray(b"x"), KeyTypeError, "bytearray"),
        ("x" * (MAX_KEY_BYTES + 1), InvalidKeyError, "1025 bytes"),
        ("é" * 513, InvalidKeyError, "1026 bytes"),
        ("bad\udc80", InvalidKeyError, "surrogate"),
    ],
)
def test_bad_keys(key: object, error: type[Exception], named: str) -> None:
    limiter = Limiter("5/second")
    for call in (limiter.hit, limiter.peek, limiter.allow, limiter.reset, limiter.acquire):
        with pytest.raises(error) as e:
            call(key)  # type: ignore[operator]
        assert named in str(e.value)
        assert isinstance(e.value, HotlimitError)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("cost", "error", "named"),
    [
        (0, InvalidCostError, "got 0"),
        (-1, InvalidCostError, "got -1"),
        (11, InvalidCostError, "cost 11 is above"),
        (10**30, InvalidCostError, str(10**30)),
        (1.0, CostTypeError, "float: 1.0"),
        (True, CostTypeError, "bool"),
        ("1", CostTypeError, "str"),
    ],
)
def test_bad_costs(algorithm: str, cost: object, error: type[Exception], named: str) -> None:
    limiter = Limiter("10/second", algorithm=algorithm)  # type: ignore[arg-type]
    for call in (limiter.hit, limiter.peek, limiter.allow, limiter.acquire):
        with pytest.raises(error) as e:
            call("k", cost)  # type: ignore[operator]
        assert named in str(e.value)
    assert len(limiter) == 0, "nothing was recorded"


def test_cost_above_burst_is_an_error_not_a_denial() -> None:
    limiter = Limiter("100/second; burst=5")
    with pytest.raises(InvalidCostError, match="capacity of 5"):
        limiter.hit("k", 6)


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"algorithm": "leaky_bucket"}, InvalidArgumentError, "'leaky_bucket'"),
        ({"max_keys": 0}, InvalidArgumentError, "max_keys"),
        ({"max_keys": -5}, InvalidArgumentError, "-5"),
        ({"shards": 3}, InvalidArgumentError, "got 3"),
        ({"on_full": "panic"}, InvalidArgumentError, "'panic'"),
        ({"sweep_interval": math.nan}, InvalidArgumentError, "nan"),
        ({"sweep_interval": math.inf}, InvalidArgumentError, "inf"),
        ({"sweep_interval": 0}, InvalidArgumentError, "got 0"),
        ({"clock": "now"}, ArgumentTypeError, "'now'"),
        ({"algorithm": "fixed_window", "burst": 7}, InvalidRateError, "burst=7"),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception], named: str) -> None:
    with pytest.raises(error) as e:
        Limiter("10/second", **kwargs)  # type: ignore[arg-type]
    assert named in str(e.value).replace('"', "'")


@pytest.mark.parametrize(
    ("rate", "algorithm", "named"),
    [
        ("10001/minute", "sliding_log", "10001"),
        ("1000001/minute", "sliding_window", "1000001"),
        ("4294967296/minute", "fixed_window", "4294967296"),
        ("1/100 days; burst=2", "token_bucket", "burst 2"),
    ],
)
def test_limits_above_each_algorithms_maximum(rate: str, algorithm: str, named: str) -> None:
    with pytest.raises(InvalidRateError) as e:
        Limiter(rate, algorithm=algorithm)  # type: ignore[arg-type]
    assert named in str(e.value)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0])
def test_bad_timeouts(timeout: float) -> None:
    limiter = Limiter("1/second")
    with pytest.raises(InvalidArgumentError, match="timeout"):
        limiter.acquire("k", timeout=timeout)

    async def main() -> None:
        await limiter.aacquire("k", timeout=timeout)

    with pytest.raises(InvalidArgumentError, match="timeout"):
        asyncio.run(main())


def test_bad_clock_values() -> None:
    for bad in (math.nan, -1.0, math.inf):
        with pytest.raises(InvalidArgumentError):
            ManualClock(bad)
        with pytest.raises(InvalidArgumentError):
            ManualClock().advance(bad)


# -- max_keys --------------------------------------------------------------------------------


def test_full_table_denies_new_keys_and_keeps_live_ones(clock: ManualClock) -> None:
    limiter = Limiter("2/minute", max_keys=50, shards=1, clock=clock, sweep_interval=3.0)
    for i in range(50):
        assert limiter.hit(f"k{i}", 2).allowed
    d = limiter.hit("newcomer")
    assert not d.allowed and d.retry_after == 3.0
    assert limiter.stats()["full_events"] == 1
    assert not limiter.hit("k3").allowed, "live keys keep their state"
    assert len(limiter) == 50
    clock.advance(60)  # every key is full again: reclaimable on demand
    assert limiter.hit("newcomer").allowed
    # One fresh key made room: the table stays at its bound, the newcomer is tracked.
    assert len(limiter) == 50
    assert limiter.hit("newcomer").allowed and not limiter.hit("newcomer").allowed


def test_full_table_can_fail_open(clock: ManualClock) -> None:
    limiter = Limiter("1/minute", max_keys=1, shards=1, clock=clock, on_full="allow")
    assert limiter.hit("a").allowed
    assert all(limiter.hit("b").allowed for _ in range(3)), "untracked, so never limited"
    assert len(limiter) == 1 and not limiter.hit("a").allowed


# -- package -----------------------------------------------------------------------------


def test_all_is_complete_and_sorted() -> None:
    import types

    public = {
        n
        for n in dir(hotlimit)
        if not n.startswith("_") and not isinstance(getattr(hotlimit, n), types.ModuleType)
    }
    assert set(hotlimit.__all__) - {"__version__"} == public
    assert hotlimit.__all__ == sorted(hotlimit.__all__, key=lambda n: (not n.isupper(), n.startswith("_"), n))


def test_version_comes_from_cargo() -> None:
    assert hotlimit.__version__ == hotlimit._native.__version__
    assert hotlimit.__version__.count(".") == 2


def test_rate_object_accepted() -> None:
    assert Limiter(Rate(3, 1)).rate == Rate.parse("3/second")


def test_at_the_bound_a_peek_answers_what_the_hit_would() -> None:
    """A peek of a new key at max_keys said "allowed" while the hit was denied (no room)."""
    clock = ManualClock()
    limiter = Limiter("5/minute", max_keys=1, clock=clock, sweep_interval=3600)
    assert limiter.hit("a").allowed
    peeked, hit = limiter.peek("b"), limiter.hit("b")
    assert (peeked.allowed, hit.allowed) == (False, False)
    clock.advance(60)  # "a" is back to full: its slot can be reclaimed, for the peek and the hit
    assert limiter.peek("b").allowed and limiter.hit("b").allowed


def test_at_the_bound_room_is_found_in_any_shard() -> None:
    """New keys at the bound reclaim idle keys of other shards when their own has none: with
    16 shards and max_keys=10, 3 of 5 new keys were denied while every key was idle."""
    clock = ManualClock()
    for algorithm in ALGORITHMS:
        limiter = Limiter("5/second", algorithm=algorithm, max_keys=10, clock=clock, sweep_interval=3600)  # type: ignore[arg-type]
        for i in range(10):
            assert limiter.hit(f"old{i}").allowed
        clock.advance(10)
        assert all(limiter.hit(f"new{i}").allowed for i in range(5)), algorithm
        assert limiter.stats()["full_events"] == 0


def test_a_token_bucket_refills_at_most_one_token_a_nanosecond() -> None:
    """ "2000000000/s" was accepted but refilled at 1e9/s (the interval rounds up to 1 ns)."""
    with pytest.raises(InvalidRateError, match="one token per nanosecond"):
        Limiter("2000000000/s")
    assert Limiter("1000000000/s").rate.limit == 1_000_000_000
    assert Limiter("2000000000/s", algorithm="fixed_window").rate.limit == 2_000_000_000


def test_hit_many_merges_a_str_key_with_its_bytes() -> None:
    """A str and its UTF-8 bytes are one key: in hit_many they add up like any repeat."""
    limiter = Limiter("1/hour")
    with pytest.raises(InvalidCostError):
        hotlimit.hit_many([(limiter, "y"), (limiter, b"y")])
    assert [d.allowed for d in hotlimit.hit_many([(limiter, "é"), (limiter, "z")])] == [True, True]
    assert not limiter.hit("é".encode()).allowed


def test_a_share_denies_a_cost_the_whole_limit_allows() -> None:
    """A replica's share of a shared limit (hybrid mode, and the fallback in an outage) is a
    smaller native limiter: a cost above the share but within the limit raised
    InvalidCostError ("above this limiter's capacity of 5") where memory and Redis mode allow
    it, and during an outage that reached the caller. It is now denied; a cost above the whole
    limit is still the error every mode raises."""
    limiter = Limiter("10/minute")
    share = limiter._scaled(2, track=False)
    d = share.hit("k", 7)
    assert not d.allowed and d.retry_after > 0
    assert not share.peek("k", 7).allowed and not share.allow("k", 7)
    assert share.acquire("k", 7, timeout=0.01).allowed is False, "no wait that cannot end"
    assert share.hit("k", 5).allowed, "nothing was consumed by the denials"
    with pytest.raises(InvalidCostError, match="capacity of 10"):
        share.hit("k", 11)


def test_acquire_never_moves_a_manual_clock_past_its_maximum() -> None:
    """acquire() on a ManualClock advances it by each wait: near the clock's maximum it used
    to saturate past it (the clock then read 1.844e10 s, every later advance raised, and a token
    bucket's arithmetic wrapped: 5 of 5 hits admitted on a 1-per-100-days key)."""
    clock = ManualClock(1.8e10 - 10)
    limiter = Limiter("1/100d", clock=clock)
    assert limiter.hit("k").allowed
    d = limiter.acquire("k", timeout=1.8e10)
    assert not d.allowed, "the wait would pass the clock's maximum: denied"
    assert clock.now() <= 1.8e10
    assert [limiter.hit("k").allowed for _ in range(5)] == [False] * 5
    clock.advance(0)  # still a valid clock


@pytest.mark.parametrize(("max_keys", "shards"), [(1, 1024), (64, 256)])
def test_peek_answers_what_the_next_hit_does_at_the_bound(
    clock: ManualClock, max_keys: int, shards: int
) -> None:
    """At max_keys, a new key's room is searched for in a bounded number of slots, from hands
    that move on. A peek moved them too: with more than 64 shards, peek(new) said Full and the
    very next hit(new) was allowed (the search had moved on to where room was)."""
    limiter = Limiter("1/minute", max_keys=max_keys, shards=shards, clock=clock)
    for i in range(max_keys):
        assert limiter.hit(f"old{i}").allowed
    clock.advance(60)  # every tracked key is fresh again: reclaimable
    for i in range(2000):
        key = f"new{i}"
        expected = limiter.peek(key).allowed
        assert limiter.hit(key).allowed == expected, f"new key {i}: peek said {expected}"
