"""Memory mode against the native floor and the peers (limits, throttled-py, token-bucket).

Run: ``pytest benchmarks/ --benchmark-only`` (full: the targets are asserted) or
``--benchmark-disable`` (smoke: a few rounds each; decisions asserted, targets printed)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from benchmarks.conftest import MEMORY, RESULTS
from hotlimit import Decision, _bench

CASES = _bench.cases(n_keys=_bench.N_KEYS)


def _loop_ns(case: _bench.Case, calls: int) -> float:
    t0 = time.perf_counter_ns()
    _bench._loop(case.fn, case.keys, calls)
    return (time.perf_counter_ns() - t0) / calls


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}|{c.name}" for c in CASES])
def test_hit(benchmark: Any, case: _bench.Case) -> None:
    benchmark.group = case.group
    if case.role == "hotlimit":  # the case measures the path its group names
        answer = case.fn(case.keys[-1])
        allowed = answer.allowed if isinstance(answer, Decision) else answer
        assert bool(allowed) == case.group.endswith("allowed"), (case.group, case.name, answer)
    calls = max(len(case.keys), 20_000)
    best: list[float] = []

    def run() -> None:
        best.append(_loop_ns(case, calls))

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    while len(best) < 3:  # smoke runs (--benchmark-disable) call `run` once: take a few more
        run()
    benchmark.extra_info["ns_per_call"] = min(best)
    RESULTS[(case.group, case.name)] = min(best)


def test_memory_per_key(target: Any) -> None:
    for kind, n in (("hotlimit", 1_000_000), ("dict", 1_000_000), ("limits", 100_000)):
        MEMORY[kind] = _bench.memory_per_key(kind, n)
    ours, theirs = MEMORY["hotlimit"], MEMORY["dict"]
    assert ours is not None and theirs is not None, "the measuring child ran (psutil installed)"
    target(ours <= 64, f"{ours:.1f} bytes per key at 1,000,000 keys (target <= 64)")
    target(ours < theirs, f"{ours:.1f} bytes per key vs a dict's {theirs:.1f}")


def test_faster_than_every_peer_on_every_workload(target: Any) -> None:
    """Same run, same workload: hotlimit's hit() beats each peer of the same algorithm."""
    peers = [c for c in CASES if c.role == "peer"]
    assert peers, "the peers are installed (pip install '.[bench]')"
    for c in peers:
        ours = RESULTS[(c.group, f"hotlimit {c.algorithm} hit()")]
        theirs = RESULTS[(c.group, c.name)]
        target(
            theirs / ours >= 1.5, f"{c.group}: {c.name} {theirs:.0f} ns vs hotlimit {ours:.0f} ns (>= 1.5x)"
        )
