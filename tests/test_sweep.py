"""Idle keys are dropped by the native background sweeper, with no call from the user, and
their memory goes back to the operating system."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from hotlimit import Limiter, ManualClock, _native

CHILD = textwrap.dedent(
    """
    import json, time, psutil
    from hotlimit import Limiter, ManualClock, _native

    proc = psutil.Process()
    clock = ManualClock()
    limiter = Limiter("10/minute", clock=clock, max_keys=2_000_000, sweep_interval=0.05)
    hit = limiter.hit
    for i in range(1000):  # warm up allocator paths
        hit(f"warm:{i:07d}")
    limiter.reset  # noqa
    clock.advance(3600)
    deadline = time.monotonic() + 30
    while len(limiter) and time.monotonic() < deadline:
        time.sleep(0.01)
    base = proc.memory_info().rss
    for i in range(1_000_000):
        hit(f"user:{i:016d}")  # 21-character keys
    full = proc.memory_info().rss
    keys_full = len(limiter)
    clock.advance(3600)  # every key is idle: its state equals a fresh key's
    deadline = time.monotonic() + 60
    while len(limiter) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The pass that emptied the table trims memory before it counts itself done: two more
    # completed passes (not a guessed sleep) mean it has finished.
    passes = _native._sweeper_passes()
    deadline = time.monotonic() + 60
    while _native._sweeper_passes() < passes + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"base": base, "full": full, "after": proc.memory_info().rss,
                      "keys_full": keys_full, "keys_after": len(limiter)}))
    """
)


@pytest.mark.slow
def test_million_idle_keys_are_swept_and_memory_returns() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=240, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["keys_full"] == 1_000_000
    assert r["keys_after"] == 0
    grown = r["full"] - r["base"]
    left = r["after"] - r["base"]
    assert grown > 20_000_000, f"the table really held the keys ({grown} bytes)"
    assert left < 0.15 * grown, f"RSS went back near its baseline: {left} of {grown} bytes remain"


def test_sweep_keeps_live_keys() -> None:
    clock = ManualClock()
    limiter = Limiter("10/second", clock=clock)
    for i in range(1000):
        limiter.hit(f"k{i}")
    limiter.hit("busy", 10)
    clock.advance(0.5)
    assert limiter.sweep() == 1000
    assert len(limiter) == 1
    assert not limiter.hit("busy", 6).allowed, "the live key kept its state"


def test_background_thread_runs_without_calls() -> None:
    clock = ManualClock()
    limiter = Limiter("5/second", clock=clock, sweep_interval=0.01, algorithm="sliding_log")
    for i in range(100):
        limiter.hit(f"k{i}")
    passes = _native._sweeper_passes()
    clock.advance(10)
    import time

    deadline = time.monotonic() + 20
    while len(limiter) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(limiter) == 0
    assert _native._sweeper_passes() > passes


def test_limiters_are_collected() -> None:
    import gc
    import weakref

    limiter = Limiter("5/second")
    ref = weakref.ref(limiter)
    del limiter
    gc.collect()
    assert ref() is None
