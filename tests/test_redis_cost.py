"""What a decision costs the Redis server, asserted by what the server counts (never by time):
the commands a decision runs, the TTLs it does not rewrite, state that lives at least as long
as its decision says, and a value that is not hotlimit's state.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from hotlimit import Limiter, _servers
from tests import servers

T = 5.0
#: The algorithms whose state is one string value (sliding_log keeps a sorted set).
SHARED = ("token_bucket", "fixed_window", "sliding_window")
_n = itertools.count()


@pytest.fixture
def fresh() -> Iterator[_servers.Server]:
    """A server of its own: its counters see this test's commands only."""
    with _servers.server(_servers.redis_binary()) as srv:
        yield srv


def _limiter(rate: str, algorithm: str, url: str) -> Limiter:
    """A Redis limiter of its own prefix, every decision made by the server (no deny cache)."""
    return Limiter(
        rate, algorithm=algorithm, redis=url, prefix=f"cost{next(_n)}:", redis_timeout=T, deny_cache=False
    )  # type: ignore[arg-type]


def _stats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def _expire_events(client: redis.Redis, run: Callable[[], None], prefix: str) -> int:
    """How many TTLs the server set on keys under ``prefix`` while ``run()`` ran (keyspace
    notifications; the limiter's own membership key gets one at each heartbeat)."""
    client.config_set("notify-keyspace-events", "Eg")
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("__keyevent@0__:expire")
    seen = 0
    done = threading.Event()

    def count() -> None:
        nonlocal seen
        while True:
            m = sub.get_message(timeout=0.05)
            if m is None:
                if done.is_set():
                    return
                continue
            if bytes(m["data"]).startswith(prefix.encode()):
                seen += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.1)  # subscribed before the first write
        run()
        time.sleep(0.2)
    finally:
        done.set()
        t.join(10)
        sub.close()
        client.config_set("notify-keyspace-events", "")
    return seen


@pytest.mark.parametrize("algorithm", SHARED)
def test_a_decision_reads_and_writes_once_and_sets_a_ttl_once_per_window(
    fresh: _servers.Server, algorithm: str
) -> None:
    """64 tasks, 16 keys, 10 rounds: one GET and one SET per decision, the clock once per
    script call, and a TTL set once per key (each key's first write), not on each decision.
    Before, every write was a PSETEX: a TTL each time (160 TTLs for 160 decisions)."""
    lim = _limiter("1000000/hour", algorithm, fresh.url)
    keys = [f"k{i}" for i in range(16)]
    client = fresh.client()

    def run() -> None:
        async def task(n: int) -> None:
            for r in range(10):
                d = await lim.ahit(keys[(n + r) % 16])
                assert d.allowed

        async def main() -> None:
            await asyncio.gather(*(task(n) for n in range(16)))

        asyncio.run(main())

    client.config_resetstat()
    ttls = _expire_events(client, run, lim._key_head)
    stats = _stats(client)
    lim.close()
    decisions = 160
    assert stats.get("get") == decisions, stats
    assert stats.get("set") == decisions, stats
    # The clock once per script call (the calls carry 8 decisions on average or more), not
    # once per decision; the limiter's membership heartbeat makes EVALSHA calls of its own.
    assert 0 < stats["time"] <= min(stats["evalsha"], decisions // 4), stats
    assert "psetex" not in stats, stats
    if algorithm == "token_bucket":
        # A bucket's TTL runs a quarter of its capacity past the TAT: with a capacity of a
        # million intervals, never rewritten in this run.
        assert ttls == len(keys), ttls
    else:
        # Once per key and window (an hour; a run that crosses a window's end sets it again).
        assert len(keys) <= ttls <= 2 * len(keys), ttls


def test_a_bucket_hit_at_its_rate_sets_a_ttl_once_every_quarter_capacity(fresh: _servers.Server) -> None:
    """A bucket of 40/second hit about at its rate: the TTL runs a quarter of the capacity
    (250 ms) past the TAT, so it is set again about every 250 ms (every ~9 hits), not on each
    of the 200 hits."""
    lim = Limiter("40/second", redis=fresh.url, prefix="q:", redis_timeout=T, deny_cache=False)
    client = fresh.client()

    def run() -> None:
        for _ in range(200):
            assert lim.hit("k").allowed
            time.sleep(0.025)  # about the rate: each hit is allowed, the TAT keeps moving

    ttls = _expire_events(client, run, lim._key_head)
    lim.close()
    assert 8 <= ttls <= 60, ttls


@pytest.mark.parametrize("algorithm", SHARED)
def test_state_lives_at_least_as_long_as_its_decision_says(
    redis_server: servers.Server, algorithm: str
) -> None:
    """After each allowed hit, the key's TTL covers the decision's reset_after: state kept
    only as long as a TTL that was set for an earlier, shorter state would be lost early."""
    lim = _limiter("20/2s", algorithm, redis_server.url)
    client = redis_server.client()
    checked = 0
    for i in range(120):
        key = f"k{i % 3}"
        t0 = time.monotonic()
        d = lim.hit(key, 1 + i % 3)
        pttl = client.pttl(lim.redis_key(key))
        # The TTL counts down while the reply and the PTTL travel; one ms for the rounding.
        slack = (time.monotonic() - t0) * 1000 + 1
        if d.allowed:
            checked += 1
            assert pttl > 0, (i, d, pttl)
            assert pttl + slack >= d.reset_after * 1000, (i, d, pttl, slack)
        time.sleep(0.01 * (i % 4))
    lim.close()
    assert checked > 20


@pytest.mark.parametrize("algorithm", SHARED)
@pytest.mark.parametrize("junk", [b"garbage", b"\xff" * 16, b"\xff" * 24, b"\x00" * 24, b"1700000000 5 9"])
def test_a_value_that_is_not_state_is_overwritten(
    redis_server: servers.Server, algorithm: str, junk: bytes
) -> None:
    """A string that is not hotlimit's state (another program's, or an older format) is no
    state: the key starts afresh, nothing is raised and the breaker stays closed. Before, a
    value the script could not parse made every call on that key fail (StorageError)."""
    lim = Limiter("5/minute", algorithm=algorithm, redis=redis_server.url, prefix="junk:", redis_timeout=T)  # type: ignore[arg-type]
    client = redis_server.client()
    key = f"victim-{junk.hex()[:12]}"
    client.set(lim.redis_key(key), junk)
    d = lim.hit(key)
    assert d.allowed and d.remaining == 4, d
    assert 0 <= d.reset_after <= 120 and d.retry_after == 0, d  # a sliding window: 2 periods
    assert lim.hit(key).remaining == 3
    assert lim._store is not None and not lim._store.breaker.is_open
    lim.close()
