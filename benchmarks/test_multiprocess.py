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
    benchmark: Any, redis_url: str, request: pytest.FixtureRequest, mode: str, keys: str, target: Any
) -> None:
    smoke = request.config.getoption("benchmark_disable")
    seconds = 0.2 if smoke else 0.6
    n_keys = 1 if keys == "hot key" else _bench.N_KEYS
    rates = {}
    for workers in (1, 2, 4):
        rates[workers] = _bench.throughput(redis_url, mode, workers, n_keys, seconds)
        REDIS[(f"{GROUP} ({mode}, {keys})", f"{workers} worker(s)")] = rates[workers]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # measured above
    assert all(rate > 0 for rate in rates.values()), f"every worker decided: {rates}"
    # Two cores: more workers must never make the whole slower; local modes scale with cores.
    target(rates[2] >= 0.8 * rates[1], f"{mode}, {keys}: 2 workers >= 0.8x one: {rates}")
    if mode != "redis":
        target(rates[2] >= 1.3 * rates[1], f"{mode}, {keys}: 2 workers >= 1.3x one: {rates}")


def test_hybrid_accuracy(benchmark: Any, redis_url: str, target: Any) -> None:
    accuracy = _bench.hybrid_accuracy(redis_url, 2)
    REDIS[("hybrid accuracy (4 processes, one key)", "allowed / limit")] = accuracy
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    # Admitting more than the bound is a wrong decision, whatever the machine's speed: every
    # worker starts only once it has seen all four replicas. Admitting less is a slow machine.
    assert accuracy <= 1.05, f"hybrid over-admitted: {accuracy:.3f} of the limit"
    target(accuracy >= 0.7, f"hybrid accuracy {accuracy:.3f} (>= 0.7)")
