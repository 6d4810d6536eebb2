"""The native core against the pure-Python reference model: random sequences of requests,
peeks and resets on a few keys, with time moved by a manual clock, must get identical answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotlimit import Limiter, ManualClock
from tests.reference import model

MS = 1_000_000
S = 1_000_000_000
START = 1_700_000_000 * S + 123_456_789  # not aligned to any window

PERIODS = [MS, 7 * MS, 250 * MS, S, 1500 * MS, 60 * S, 3600 * S]

ops = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "peek", "reset"]),
        st.integers(0, 2),  # key index
        st.integers(1, 3) | st.integers(1, 1_000),  # cost, folded into the capacity below
        st.one_of(
            st.just(0),
            st.integers(1, 96).map(lambda n: -n),  # n/64 of the period, scaled in run()
            st.integers(1, 2_000_000),  # sub-millisecond
            st.integers(1, 5_000).map(lambda n: n * MS),
            st.integers(1, 200_000).map(lambda n: n * MS // 7),
            st.integers(0, 3 * 3600).map(lambda n: n * S),
        ),
    ),
    min_size=1,
    max_size=60,
)


def run(algorithm: str, limit: int, period_ns: int, burst: int | None, steps: list) -> None:  # type: ignore[type-arg]
    clock = ManualClock()
    clock.advance_ns(START - clock.now_ns())
    native = Limiter(f"{limit}/{period_ns // MS}ms", algorithm=algorithm, burst=burst, clock=clock)  # type: ignore[arg-type]
    ref = model(algorithm, limit, period_ns, burst)
    capacity = burst if burst is not None else limit
    for i, (op, k, cost, dt) in enumerate(steps):
        clock.advance_ns(dt if dt >= 0 else -dt * period_ns // 64)
        now = clock.now_ns()
        key = f"key-{k}"
        cost = 1 + (cost - 1) % capacity
        if op == "reset":
            native.reset(key)
            ref.reset(key)
            continue
        d = native.hit(key, cost) if op == "hit" else native.peek(key, cost)
        allowed, remaining, reset_ns, retry_ns = ref.request(key, cost, now, commit=op == "hit")
        got = (d.allowed, d.remaining, d.reset_after, d.retry_after)
        want = (allowed, remaining, reset_ns / 1e9, retry_ns / 1e9)
        assert got == want, (
            f"step {i} {op} {key} cost={cost} at +{now - START} ns: native {got} != model {want}"
        )
        assert d.limit == limit
        assert bool(d) is d.allowed


@given(
    limit=st.integers(1, 4) | st.integers(1, 50),
    period=st.sampled_from(PERIODS),
    burst=st.none() | st.integers(1, 60),
    steps=ops,
)
def test_token_bucket_matches_model(limit: int, period: int, burst: int | None, steps: list) -> None:  # type: ignore[type-arg]
    run("token_bucket", limit, period, burst, steps)


@given(limit=st.integers(1, 4) | st.integers(1, 50), period=st.sampled_from(PERIODS), steps=ops)
def test_fixed_window_matches_model(limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run("fixed_window", limit, period, None, steps)


@given(limit=st.integers(1, 4) | st.integers(1, 50), period=st.sampled_from(PERIODS), steps=ops)
def test_sliding_window_matches_model(limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run("sliding_window", limit, period, None, steps)


@given(limit=st.integers(1, 4) | st.integers(1, 50), period=st.sampled_from(PERIODS), steps=ops)
def test_sliding_log_matches_model(limit: int, period: int, steps: list) -> None:  # type: ignore[type-arg]
    run("sliding_log", limit, period, None, steps)


@given(limit=st.sampled_from([1_000, 999_983, 1_000_000]), steps=ops)
def test_sliding_window_large_limits_match_model(limit: int, steps: list) -> None:  # type: ignore[type-arg]
    """Near the maximum limit and a long period, where the products are largest."""
    run("sliding_window", limit, 100 * 86_400 * S, None, steps)


def test_one_model_per_algorithm_of_the_registry() -> None:
    """The native registry is the only list of algorithms: the reference models, the Python
    literal type and the Redis script's files all follow it."""
    import typing

    from hotlimit import ALGORITHMS, Algorithm, _native
    from hotlimit.redis import script
    from tests.reference import MODELS

    names = tuple(a.name for a in _native.ALGORITHMS)
    assert names == ALGORITHMS
    assert set(MODELS) == set(names)
    assert set(typing.get_args(Algorithm)) == set(names)
    assert names == script.ALGORITHM_FILES
    codes = [a.code for a in _native.ALGORITHMS]
    assert len(set(codes)) == len(codes)
    for a in _native.ALGORITHMS:
        assert f"if algo == '{a.code}' then" in script.SOURCE, a.name
