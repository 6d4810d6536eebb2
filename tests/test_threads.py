"""Exactness: threads hammering one key through the Python API get exactly the limit."""

from __future__ import annotations

import threading

import pytest

from hotlimit import ALGORITHMS, Limiter, ManualClock


def hammer(limiter: Limiter, keys: list[str], threads: int, attempts: int) -> dict[str, int]:
    barrier = threading.Barrier(threads)
    counts: dict[str, int] = dict.fromkeys(keys, 0)
    lock = threading.Lock()

    def worker(offset: int) -> None:
        mine = dict.fromkeys(keys, 0)
        barrier.wait()
        for i in range(attempts):
            k = keys[(i + offset) % len(keys)]
            if limiter.hit(k).allowed:
                mine[k] += 1
        with lock:
            for k, n in mine.items():
                counts[k] += n

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_hot_key_frozen_time(algorithm: str) -> None:
    limiter = Limiter("1000/minute", algorithm=algorithm, clock=ManualClock())  # type: ignore[arg-type]
    assert hammer(limiter, ["hot"], threads=8, attempts=2_000) == {"hot": 1000}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_many_keys_frozen_time(algorithm: str) -> None:
    limiter = Limiter("10/minute", algorithm=algorithm, clock=ManualClock())  # type: ignore[arg-type]
    keys = [f"user:{i}" for i in range(200)]
    counts = hammer(limiter, keys, threads=8, attempts=1_000)  # 40 attempts per key
    assert set(counts.values()) == {10}


def test_one_hot_key_real_clock() -> None:
    # One token per 86.4 s: nothing refills while the test runs, so exactly the burst.
    limiter = Limiter("1000/day")
    assert hammer(limiter, ["hot"], threads=8, attempts=1_000) == {"hot": 1000}
