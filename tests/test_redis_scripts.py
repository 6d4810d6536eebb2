"""The Lua scripts against the native core and the reference model.

Random sequences of hits, peeks and resets on a few keys, with time injected into the script
(the argument only tests pass), must get the same decisions and fields from Redis as from the
native core and from the pure-Python model. Valkey runs the same sequences.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotlimit import ALGORITHMS, Limiter, ManualClock
from tests import servers
from tests.reference import model
from tests.test_reference import MS, PERIODS, START, S, ops

_prefixes = itertools.count()


def run3(url: str, algorithm: str, limit: int, period_ns: int, burst: int | None, steps: list) -> None:  # type: ignore[type-arg]
    clock = ManualClock()
    clock.advance_ns(START - clock.now_ns())
    rate = f"{limit}/{period_ns // MS}ms"
    native = Limiter(rate, algorithm=algorithm, burst=burst, clock=clock)  # type: ignore[arg-type]
    shared = Limiter(
        rate, algorithm=algorithm, burst=burst, clock=clock,  # type: ignore[arg-type]
        redis=url, prefix=f"d{next(_prefixes)}:", deny_cache=False, redis_timeout=5.0,
    )  # fmt: skip
    ref = model(algorithm, limit, period_ns, burst)
    capacity = burst if burst is not None else limit
    for i, (op, k, cost, dt) in enumerate(steps):
        clock.advance_ns(dt if dt >= 0 else -dt * period_ns // 64)
        now = clock.now_ns()
        key = f"key-{k}"
        cost = 1 + (cost - 1) % capacity
        if op == "reset":
            shared.reset(key)
            native.reset(key)
            ref.reset(key)
            continue
        if op == "hit":
            got, mine = shared.hit(key, cost), native.hit(key, cost)
        else:
            got, mine = shared.peek(key, cost), native.peek(key, cost)
        allowed, remaining, reset_ns, retry_ns = ref.request(key, cost, now, commit=op == "hit")
        want = (allowed, remaining, reset_ns / 1e9, retry_ns / 1e9)
        seen = (got.allowed, got.remaining, got.reset_after, got.retry_after)
        where = f"step {i} {op} {key} cost={cost} at +{now - START} ns"
        assert seen == want, f"{where}: redis {seen} != model {want}"
        assert got == mine, f"{where}: redis {got} != native {mine}"
    shared.close()


limits = st.integers(1, 4) | st.integers(1, 50)


@pytest.fixture(scope="session", params=["redis", "valkey"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_server").url)


@settings(max_examples=60)
@given(limit=limits, period=st.sampled_from(PERIODS), burst=st.none() | st.integers(1, 60), steps=ops)
def test_token_bucket_script(url: str, limit: int, period: int, burst: int | None, steps: list) -> None:  # type: ignore[type-arg]
    run3(url, "token_bucket", limit, period, burst, steps)


@settings(max_examples=60)
@given(limit=limits, period=st.sampled_from(PERIODS), steps=ops)
def test_fixed_window_script(url: str, limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run3(url, "fixed_window", limit, period, None, steps)


@settings(max_examples=60)
@given(limit=limits, period=st.sampled_from(PERIODS), steps=ops)
def test_sliding_window_script(url: str, limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run3(url, "sliding_window", limit, period, None, steps)


@settings(max_examples=60)
@given(limit=limits, period=st.sampled_from(PERIODS), steps=ops)
def test_sliding_log_script(url: str, limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run3(url, "sliding_log", limit, period, None, steps)


@settings(max_examples=30)
@given(limit=st.sampled_from([1_000, 999_983, 1_000_000]), steps=ops)
def test_sliding_window_script_large(url: str, limit: int, steps: list) -> None:  # type: ignore[type-arg]
    run3(url, "sliding_window", limit, 100 * 86_400 * S, None, steps)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_long_periods_stay_exact(redis_server: servers.Server, algorithm: str) -> None:
    """Days-long periods and gaps: the sliding log moves its base (every ~3.3 days) and every
    offset must stay exact in the script's doubles."""
    day = 86_400 * S
    steps = [("hit", 0, 1, 0)]
    for n in range(1, 40):
        steps.append(("hit" if n % 3 else "peek", n % 2, 1 + n % 2, (n % 5) * day + n * 7_777_777))
    run3(redis_server.url, algorithm, 5, 100 * day, None, steps)
