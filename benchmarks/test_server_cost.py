"""What a decision costs the Redis server (``INFO commandstats`` and ``INFO cpu``), against the
cost of the commands it must run, measured in the same run; hybrid against Redis mode; and how
a 3-primary cluster spreads the load.

Run: ``pytest benchmarks/test_server_cost.py --benchmark-only`` (full: targets asserted) or
``--benchmark-disable`` (smoke: fewer decisions; what every row did asserted, targets printed).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from hotlimit import _bench, _bench_server, _servers


def _lines(data: dict[str, Any]) -> str:
    return "\n".join(_bench_server.format_rows(data))


def test_script_cost(benchmark: Any, redis_url: str, request: pytest.FixtureRequest, target: Any) -> None:
    smoke = request.config.getoption("benchmark_disable")
    decisions = 1_280 if smoke else 12_800
    clients = _bench_server._clients(redis_url)
    rows: list[_bench_server.Cost] = []
    try:
        benchmark.pedantic(
            lambda: rows.extend(_bench_server.script_cost(redis_url, clients, decisions)),
            rounds=1,
            iterations=1,
        )
    finally:
        for c in clients:
            c.close()
        _bench.close_limiters()
    by = {(r.what, r.shape): r for r in rows}
    for algorithm in _bench_server.ALGORITHMS:
        for shape in _bench_server.SHAPES:
            r = by[(algorithm, shape)]
            # Each decision made by the server: calls made and time counted.
            assert r.decisions > 0 and r.calls > 0 and r.script_us > 0, r
        assert by[(algorithm, "one caller")].per_call == 1.0
        # 64 tasks at once share script calls.
        assert by[(algorithm, "64 tasks")].per_call >= 4, by[(algorithm, "64 tasks")]
    data = {"rows": [r.__dict__ for r in rows], "load": [], "cluster": None}
    print(_lines(data))
    commands = by[(_bench_server.COMMANDS_ROW, "32 per call")].script_us
    single = by[(_bench_server.COMMANDS_ROW, "1 per call")].script_us
    for algorithm in _bench_server.ALGORITHMS:
        batched = by[(algorithm, "64 tasks")]
        one = by[(algorithm, "one caller")]
        target(
            batched.script_us <= 2.0,
            f"redis {algorithm}, 64 tasks: {batched.script_us:.2f} us per decision (<= 2)",
        )
        target(
            one.script_us <= 5.0, f"redis {algorithm}, one caller: {one.script_us:.2f} us per decision (<= 5)"
        )
        target(
            batched.script_us <= 2.0 * commands,
            f"redis {algorithm}, 64 tasks: {batched.script_us / commands:.2f}x the commands it runs "
            f"({commands:.2f} us, 32 keys per call) (<= 2x)",
        )
        target(
            one.script_us <= 2.0 * single,
            f"redis {algorithm}, one caller: {one.script_us / single:.2f}x the commands it runs "
            f"({single:.2f} us) (<= 2x)",
        )


def test_hybrid_load(benchmark: Any, redis_url: str, request: pytest.FixtureRequest, target: Any) -> None:
    smoke = request.config.getoption("benchmark_disable")
    procs = (1, 4) if smoke else (1, 2, 4)
    clients = _bench_server._clients(redis_url)
    rows: list[_bench_server.Cost] = []
    try:
        benchmark.pedantic(
            lambda: rows.extend(_bench_server.mode_load(redis_url, clients, 0.3 if smoke else 1.0, procs)),
            rounds=1,
            iterations=1,
        )
    finally:
        for c in clients:
            c.close()
    print(_lines({"rows": [], "load": [r.__dict__ for r in rows], "cluster": None}))
    by = {(r.what, r.shape): r for r in rows}
    for r in rows:
        assert r.decisions > 0 and r.calls > 0, r
    four = "4 processes"
    # Hybrid mode syncs in batches: far fewer script calls than units.
    assert by[("hybrid", four)].calls * 100 < by[("hybrid", four)].decisions, by[("hybrid", four)]
    ratio = by[("hybrid", four)].script_us / by[("redis", four)].script_us
    target(
        ratio <= 0.1, f"hybrid: redis time per admitted unit {ratio:.4f}x redis mode's, 4 processes (<= 0.1x)"
    )


def test_cluster_spreads_the_load(benchmark: Any, request: pytest.FixtureRequest, target: Any) -> None:
    smoke = request.config.getoption("benchmark_disable")
    out: dict[str, Any] = {}
    try:
        benchmark.pedantic(
            lambda: out.update(
                _bench_server.cluster_capacity(_servers.any_binary(), 640 if smoke else 6_400)
            ),
            rounds=1,
            iterations=1,
        )
    finally:
        _bench.close_limiters()
    print(_lines({"rows": [], "load": [], "cluster": out}))
    shares = out["3"]["share"]
    assert len(shares) == 3 and abs(sum(shares) - 1) < 1e-6
    # Every primary serves some of 1,000 keys spread over the slots.
    assert min(shares) > 0.15, shares
    target(
        out["ratio"] >= 2.5,
        f"3-primary cluster serves {out['ratio']:.2f}x one primary (1 / busiest share) (>= 2.5x)",
    )


def test_commands_floor_script_is_what_it_says(redis_url: str) -> None:
    """The floor row runs exactly TIME once and one GET and one SET per key."""
    c = redis.Redis.from_url(redis_url)
    try:
        sha = c.script_load(_bench_server.COMMANDS)
        keys = [f"{_bench.KEY_PREFIX}floorcheck:{i}" for i in range(4)]
        reply = c.evalsha(sha, 4, *keys, *([b"x" * 24] * 4))
        assert reply == [1, 0, 0, 0] * 4
        assert all(c.get(k) == b"x" * 24 and c.pttl(k) == -1 for k in keys)
        c.delete(*keys)
    finally:
        c.close()
