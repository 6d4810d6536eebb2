"""Several worker processes per mode: decisions per second on one hot key and on 100k keys,
and hybrid mode's accuracy with four replicas. Each case runs real processes against the
session's Redis server; the numbers are printed in the summary."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.conftest import REDIS
from hotlimit import _bench

GROUP = "throughput, decisions/s"


@pytest.mark.parametrize("mode", ["memory", "hybrid", "redis"])
@pytest.mark.parametrize("keys", ["hot key", "100k keys"])
def test_workers(
    benchmark: Any, redis_url: str, request: pytest.FixtureRequest, mode: str, keys: str
) -> None:
    smoke = request.config.getoption("benchmark_disable")
    seconds = 0.2 if smoke else 0.6
    n_keys = 1 if keys == "hot key" else _bench.N_KEYS
    rates = {}
    for workers in (1, 2, 4):
        rates[workers] = _bench.throughput(redis_url, mode, workers, n_keys, seconds)
        REDIS[(f"{GROUP} ({mode}, {keys})", f"{workers} worker(s)")] = rates[workers]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # measured above
    # Two cores: more workers must never make the whole slower; local modes scale with cores.
    assert rates[2] >= 0.8 * rates[1], rates
    if mode != "redis" and not smoke:
        assert rates[2] >= 1.3 * rates[1], f"{mode} does not scale across processes: {rates}"


def test_hybrid_accuracy(benchmark: Any, redis_url: str) -> None:
    accuracy = _bench.hybrid_accuracy(redis_url, 2)
    REDIS[("hybrid accuracy (4 processes, one key)", "allowed / limit")] = accuracy
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert 0.7 <= accuracy <= 1.05, accuracy
