"""Redis mode on real servers: the same behaviour as memory mode, and what only Redis has.

The behaviour tests run on every backend (memory, Redis 7, Valkey, a 3-primary Redis
Cluster); time is injected through the test clock, which in Redis mode is passed to the
script in place of the server's TIME.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
import redis

import hotlimit
from hotlimit import (
    ALGORITHMS,
    MAX_KEY_BYTES,
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidCostError,
    KeyTypeError,
    Limiter,
    ManualClock,
    StorageError,
    hit_many,
)
from tests import servers

# These tests assert exact shared results: on a loaded CI machine a 50 ms timeout would
# (correctly) switch some decisions to the local fallback, so they allow two seconds.
T = 2.0
Make = Callable[..., Limiter]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.25)


# -- the same behaviour on every backend ------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_limit_deny_recover(make_limiter: Make, algorithm: str, clock: ManualClock) -> None:
    limiter = make_limiter("5/second", algorithm=algorithm, clock=clock)
    ds = [limiter.hit("user:1") for _ in range(6)]
    assert [d.allowed for d in ds] == [True] * 5 + [False]
    assert [d.remaining for d in ds] == [4, 3, 2, 1, 0, 0]
    assert ds[-1].retry_after > 0 and ds[-1].limit == 5
    assert limiter.hit("user:2").allowed, "keys are independent"
    clock.advance(ds[-1].retry_after)
    assert limiter.hit("user:1").allowed, "allowed again exactly at retry_after"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_retry_after_is_exact_to_the_ns(make_limiter: Make, algorithm: str, clock: ManualClock) -> None:
    limiter = make_limiter("3/1500ms", algorithm=algorithm, clock=clock, deny_cache=False)
    for step in range(12):
        d = limiter.hit("k", 1 + step % 2)
        if d.allowed:
            clock.advance_ns(1_234_567 * (step + 1))
            continue
        wait = round(d.retry_after * 1e9)
        clock.advance_ns(wait - 1)
        assert not limiter.peek("k", 1 + step % 2).allowed, f"step {step}: allowed 1 ns early"
        clock.advance_ns(1)
        assert limiter.peek("k", 1 + step % 2).allowed, f"step {step}: not allowed at retry_after"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_peek_and_reset(make_limiter: Make, algorithm: str, clock: ManualClock) -> None:
    limiter = make_limiter("3/minute", algorithm=algorithm, clock=clock)
    for _ in range(5):
        assert limiter.peek("k", 2).allowed
    assert limiter.hit("k", 3).allowed
    assert not limiter.peek("k").allowed
    assert not limiter.hit("k").allowed
    assert limiter.reset("k") is True
    assert limiter.reset("k") is False
    assert limiter.hit("k", 3).allowed, "a reset key starts over"


def test_same_decisions_as_memory_mode(make_limiter: Make, clock: ManualClock) -> None:
    for algorithm in ALGORITHMS:
        shared = make_limiter("7/2s", algorithm=algorithm, clock=clock, deny_cache=False)
        local = Limiter("7/2s", algorithm=algorithm, clock=clock)  # type: ignore[arg-type]
        for step in range(40):
            cost = 1 + step % 3
            assert shared.hit("k", cost) == local.hit("k", cost), (algorithm, step)
            clock.advance_ns(97_000_000 + step * 1_000_003)


def test_hit_many_is_all_or_nothing(make_limiter: Make, clock: ManualClock) -> None:
    per_second = make_limiter("2/second", clock=clock)
    per_minute = make_limiter("3/minute", algorithm="fixed_window", clock=clock)
    ok = hit_many([(per_second, "u"), (per_minute, "u")])
    assert all(ok) and [d.remaining for d in ok] == [1, 2]
    ok = hit_many([(per_second, "u"), (per_minute, "u", 3)])
    assert not all(ok), "the minute limit has only 2 left"
    assert [d.allowed for d in ok] == [False, False]
    assert ok[0].retry_after == 0.0, "the per-second part alone would have fitted"
    # peek reports what would remain after it: 1 left - 1 and 2 left - 1
    assert per_second.peek("u").remaining == 0, "the denial consumed nothing from the other limit"
    assert per_minute.peek("u").remaining == 1
    assert not any(hit_many([(per_second, "u"), (per_second, "u")])), "repeats add up: 2 > 1 left"
    clock.advance(1.0)
    again = hit_many([(per_second, "u"), (per_second, "u")])
    assert [d.allowed for d in again] == [True, True], "2 of the 2 left"
    assert not per_second.peek("u").allowed


def test_hit_many_repeats_add_up_and_deny_together(make_limiter: Make, clock: ManualClock) -> None:
    limiter = make_limiter("5/second", algorithm="sliding_log", clock=clock)
    assert limiter.hit("a", 2).allowed
    with pytest.raises(InvalidCostError, match="6"):
        limiter.hit_many([("a", 3), ("a", 3)])  # could never be allowed, like a single cost 6
    ds = limiter.hit_many(["a", "a", ("a", 2)])
    assert not any(ds), "4 units of a 3-unit limit: none consumed"
    assert limiter.peek("a", 3).allowed
    assert all(limiter.hit_many(["a", ("a", 2)]))
    assert not limiter.peek("a").allowed


@pytest.mark.parametrize(
    "key",
    ["{tag}", "a}b{c", "\n", "x" * MAX_KEY_BYTES, "ключ-🔑", b"\x00\xff{", "%7Btag%7D", "a b", ""],
)
def test_awkward_keys_are_their_own(make_limiter: Make, key: str | bytes, clock: ManualClock) -> None:
    limiter = make_limiter("2/hour", clock=clock)
    assert limiter.hit(key, 2).allowed
    assert not limiter.hit(key).allowed
    for other in ("tag", "{tag}x", "%7Btag%7D" if key != "%7Btag%7D" else "{tag}", "a"):
        if other != key:
            assert limiter.peek(other, 2).allowed, f"{key!r} leaked into {other!r}"


def test_bad_input_names_the_value(make_limiter: Make) -> None:
    limiter = make_limiter("2/hour")
    with pytest.raises(InvalidCostError, match="99"):
        limiter.hit("k", 99)
    with pytest.raises(KeyTypeError, match="int"):
        limiter.hit(7)  # type: ignore[arg-type]
    with pytest.raises(hotlimit.InvalidKeyError, match="above the maximum"):
        limiter.hit("x" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ArgumentTypeError, match="'not a limiter'"):
        hit_many([("not a limiter", "k")])  # type: ignore[list-item]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_async_twins(make_limiter: Make, algorithm: str, clock: ManualClock) -> None:
    limiter = make_limiter("4/second", algorithm=algorithm, clock=clock)

    async def main() -> None:
        ds = await asyncio.gather(*(limiter.ahit("k") for _ in range(6)))
        assert sorted(d.allowed for d in ds) == [False, False, True, True, True, True]
        assert not (await limiter.apeek("k")).allowed
        assert await limiter.areset("k")
        many = await hotlimit.ahit_many([(limiter, "k", 3), (limiter, "k", 1)])
        assert all(many)
        d = await limiter.aacquire("k", 1, timeout=5.0)
        assert d.allowed, "the test clock is advanced by the wait"
        await limiter.aclose()

    asyncio.run(main())


# -- Redis only -----------------------------------------------------------------------------


@pytest.fixture(params=["redis", "valkey"])
def url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(f"{request.param}_server")
    return str(server.url)


def test_state_expires_with_a_ttl_on_every_write(url: str) -> None:
    direct = redis.Redis.from_url(url)
    # A fixed window's key lives to the end of its window, which a short period could reach
    # between the write and the PTTL on a slow machine: two hours, at most two periods' TTL.
    two_periods = 2 * 2 * 3600 * 1000
    for algorithm in ALGORITHMS:
        limiter = Limiter("3/2h", algorithm=algorithm, redis=url, prefix="ttl:", redis_timeout=T)  # type: ignore[arg-type]
        limiter.hit("k")
        ttl = direct.pttl(limiter.redis_key("k"))
        assert 0 < ttl <= two_periods, (algorithm, ttl)
        limiter.hit("k", 2)
        assert 0 < direct.pttl(limiter.redis_key("k")) <= two_periods
        limiter.reset("k")
    fast = Limiter("1/50ms", redis=url, prefix="ttl:", redis_timeout=T)
    assert fast.hit("gone").allowed
    key = fast.redis_key("gone")
    for _ in range(400):  # bounded wait for Redis' own expiry (at most ~2 s)
        if not direct.exists(key):
            break
        threading.Event().wait(0.005)
    assert not direct.exists(key), "the key outlived its TTL"
    direct.close()


def test_script_flush_is_handled(url: str) -> None:
    limiter = Limiter("10/day", redis=url, prefix="flush:", redis_timeout=T)
    assert limiter.hit("k").remaining == 9
    redis.Redis.from_url(url).script_flush()
    assert limiter.hit("k").remaining == 8, "NOSCRIPT: the script was loaded again"

    async def main() -> None:
        a = Limiter("10/day", redis=url, prefix="flush:", redis_timeout=T)
        assert (await a.ahit("k")).remaining == 7
        redis.Redis.from_url(url).script_flush()
        assert (await a.ahit("k")).remaining == 6
        await a.aclose()

    asyncio.run(main())


def test_server_restart_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    from hotlimit.redis import keeper

    # The subject is a decision made after a restart; the once-a-second heartbeat could land
    # while the server is down and (rightly) open the breaker, so it runs once, before.
    monkeypatch.setattr(keeper, "HEARTBEAT_INTERVAL", 3600.0)
    with servers.server(servers.redis_binary()) as server:
        errors: list[BaseException] = []
        limiter = Limiter("10/day", redis=server.url, redis_timeout=1.0, on_error=errors.append)
        assert limiter.hit("k").remaining == 9
        store = limiter._store
        assert store is not None
        deadline = time.monotonic() + 30
        while limiter.prefix not in store.replicas and time.monotonic() < deadline:
            time.sleep(0.01)  # the first heartbeat is done
        assert limiter.prefix in store.replicas
        server.restart()
        assert limiter.hit("k").remaining == 9, "a fresh server: state and scripts gone, no error"
        assert not errors and not limiter.degraded


def test_server_down_at_the_first_sync_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limiter used only from asyncio so far (its sync lane not made yet) whose server is
    down at its first sync call: the lane's connection was taken as the lane was made, outside
    the code that turns a failed call into a StorageError, and redis-py's ConnectionError
    reached the caller of hit()."""
    from hotlimit.redis import keeper

    monkeypatch.setattr(keeper, "HEARTBEAT_INTERVAL", 3600.0)  # no heartbeat trips it first
    with servers.server(servers.redis_binary()) as server:
        errors: list[BaseException] = []
        limiter = Limiter("10/day", redis=server.url, redis_timeout=1.0, on_error=errors.append)
        assert asyncio.run(limiter.ahit("k")).remaining == 9
        store = limiter._store
        assert store is not None and not store._sync_lanes
        server.stop()
        with pytest.raises(StorageError):
            store.call(*limiter._op("h", "k", 1)[:2], 1)
        d = limiter.hit("k")  # the breaker is open now: decided locally, reported once
        assert d.allowed and limiter.degraded
        limiter.close()


def test_dead_server_is_reported_not_raised() -> None:
    port = servers.free_port()
    errors: list[BaseException] = []
    limiter = Limiter("10/minute", redis=f"redis://user:s3cret@127.0.0.1:{port}/0", on_error=errors.append)
    d = limiter.hit("k")
    assert d.allowed and d.remaining == 9, "decided by the local fallback"
    assert limiter.degraded
    assert len(errors) == 1 and isinstance(errors[0], StorageError)
    assert str(port) in str(errors[0]) and "s3cret" not in str(errors[0])
    for policy, allowed in (("allow", True), ("deny", False)):
        other = Limiter("10/minute", redis=f"redis://127.0.0.1:{port}/1", on_redis_error=policy)  # type: ignore[arg-type]
        assert [other.hit("k").allowed for _ in range(12)] == [allowed] * 12


def test_bad_targets_are_named() -> None:
    with pytest.raises(InvalidArgumentError, match="http://x"):
        Limiter("1/s", redis="http://x", redis_timeout=T)
    with pytest.raises(ArgumentTypeError, match="int"):
        Limiter("1/s", redis=42, redis_timeout=T)
    with pytest.raises(InvalidArgumentError, match="prefix"):
        Limiter("1/s", redis="redis://127.0.0.1:1", prefix="a{b}", redis_timeout=T)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        Limiter("1/s", redis="redis://127.0.0.1:1", redis_timeout=0)


def test_a_user_client_is_used_as_given(redis_server: servers.Server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    limiter = Limiter("2/minute", redis=client, prefix="given:", redis_timeout=T)
    assert limiter.hit("k").allowed
    assert client.exists(limiter.redis_key("k"))
    with pytest.raises(InvalidArgumentError, match="async"):
        asyncio.run(limiter.ahit("k"))
    limiter.close()
    assert client.ping(), "closing the limiter leaves the user's client usable"


def test_deny_cache_answers_without_a_round_trip(redis_server: servers.Server) -> None:
    direct = redis.Redis.from_url(redis_server.url)
    limiter = Limiter("2/minute", redis=redis_server.url, prefix="deny:", redis_timeout=T)
    limiter.hit("k", 2)
    first = limiter.hit("k")
    assert not first.allowed
    calls = _script_calls(direct)
    again = [limiter.hit("k") for _ in range(50)]
    assert not any(again)
    assert _script_calls(direct) == calls, "denials answered locally"
    assert all(0 < d.retry_after <= first.retry_after for d in again)
    limiter.reset("k")
    assert limiter.hit("k").allowed, "reset clears the local denial"
    off = Limiter("2/minute", redis=redis_server.url, prefix="deny:", deny_cache=False, redis_timeout=T)
    calls = _script_calls(direct)
    assert not off.hit("k", 2).allowed
    assert _script_calls(direct) == calls + 1


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_concurrent_threads_coalesce(redis_server: servers.Server) -> None:
    direct = redis.Redis.from_url(redis_server.url)
    direct.config_resetstat()
    limiter = Limiter("1000/day", redis=redis_server.url, prefix="co:", deny_cache=False, redis_timeout=T)
    allowed = []
    start = threading.Barrier(16)

    def work() -> None:
        start.wait()
        n = 0
        for _ in range(100):
            n += limiter.allow("hot")
        allowed.append(n)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 1000, "exact under concurrency"
    calls = _script_calls(direct)
    assert calls < 1600 / 2, f"{calls} script calls for 1600 decisions: no coalescing"


def test_concurrent_tasks_coalesce(redis_server: servers.Server) -> None:
    direct = redis.Redis.from_url(redis_server.url)
    direct.config_resetstat()
    limiter = Limiter("500/day", redis=redis_server.url, prefix="aco:", deny_cache=False, redis_timeout=T)

    async def main() -> int:
        async def one() -> int:
            return sum([(await limiter.ahit("hot")).allowed for _ in range(10)])

        total = sum(await asyncio.gather(*(one() for _ in range(64))))
        await limiter.aclose()
        return total

    assert asyncio.run(main()) == 500
    calls = _script_calls(direct)
    assert calls < 640 / 4, f"{calls} script calls for 640 decisions"


def test_cluster_keys_route_by_client_key(redis_cluster: servers.Cluster) -> None:
    a = Limiter("5/minute", redis=redis_cluster.url, prefix="cl:", redis_timeout=T)
    b = Limiter("50/hour", algorithm="sliding_window", redis=redis_cluster.url, prefix="cl:", redis_timeout=T)
    assert all(hit_many([(a, "user:1"), (b, "user:1")])), "one client key, one slot"
    with pytest.raises(InvalidArgumentError, match="slot"):
        hit_many([(a, "user:1"), (a, "user:2"), (a, "user:3"), (a, "user:4")])
    used = set()
    for i in range(30):
        assert a.hit(f"user:{i}").allowed
        used.add(redis.cluster.key_slot(a.redis_key(f"user:{i}").encode()))
    assert len(used) > 20, "keys spread over the cluster"


# Every process decides at one injected instant (the scripts take the time from a test
# clock when given one): exactly the limit, however long the processes take to start.
_WORKER = """
import sys, threading
from hotlimit import Limiter, ManualClock
url, algorithm, prefix = sys.argv[1], sys.argv[2], sys.argv[5]
limit, attempts = int(sys.argv[3]), int(sys.argv[4])
clock = ManualClock(1_800_000_000.25)
limiter = Limiter(
    f"{limit}/hour", algorithm=algorithm, redis=url, prefix=prefix, redis_timeout=5.0, clock=clock
)
counts = []
def work():
    counts.append(sum(limiter.allow("one-key") for _ in range(attempts)))
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts))
"""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("where", ["redis_server", "redis_cluster"])
def test_exact_across_processes(request: pytest.FixtureRequest, where: str, algorithm: str) -> None:
    import subprocess
    import sys

    url = request.getfixturevalue(where).url
    limit = 300
    argv = [sys.executable, "-c", _WORKER, url, algorithm, str(limit), "40", f"mp-{where}:"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    totals = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(totals) == limit, f"4 processes x 4 threads x 40 attempts, limit {limit}: {totals}"


def test_an_int_subclass_cost_counts_its_value(make_limiter: Callable[..., Limiter]) -> None:
    """A cost of an int subclass with its own __str__: Redis mode sent str(cost) to the
    script, so 2 with __str__ "999" was refused as above capacity (or consumed 999)."""

    class Weird(int):
        def __str__(self) -> str:
            return "999"

        def __lt__(self, other: object) -> bool:
            return False

    limiter = make_limiter("5/minute")
    assert limiter.hit("k", Weird(2)).allowed
    assert limiter.peek("k").remaining == 2, "2 units taken, not 999"
    assert limiter.hit("k", Weird(3)).allowed and not limiter.hit("k").allowed
