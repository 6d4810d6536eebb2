"""Memory-mode benchmark: hotlimit against a native floor and the Python libraries people use.

Used by ``hotlimit bench`` and by the pytest-benchmark suite in ``benchmarks/``. Every number in
one report comes from the same process and run, so ratios compare like with like.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from itertools import repeat
from typing import Any

from hotlimit import _native
from hotlimit.limiter import Limiter

__all__ = ["Case", "Result", "cases", "measure", "memory_per_key", "run"]

HOT_KEY = "user:000000000042"
N_KEYS = 100_000
ALGORITHMS = ("token_bucket", "sliding_window", "fixed_window", "sliding_log")

# Rates that keep each algorithm on the path being measured.
ALLOW_RATE = {
    "token_bucket": "1000000000/second",
    "sliding_window": "1000000/second",
    "fixed_window": "4000000000/second",
    "sliding_log": "10000/1ms",
}
DENY_RATE = "1/day"


@dataclass
class Case:
    """One thing to time: ``fn(key)`` over ``keys``."""

    group: str  # workload, e.g. "hot key, allowed"
    name: str  # implementation
    fn: Callable[[str], object]
    keys: list[str]
    role: str = "hotlimit"  # "hotlimit" | "floor" | "peer"
    algorithm: str = ""


@dataclass
class Result:
    group: str
    name: str
    role: str
    algorithm: str
    ns_per_call: float
    runs: list[float] = field(default_factory=list)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _keys(n: int) -> list[str]:
    return [f"user:{i:012d}" for i in range(n)]


def _drained(make: Callable[[], Callable[[str], object]], keys: list[str]) -> Callable[[str], object]:
    """A hit function whose keys are already over their limit."""
    fn = make()
    for k in keys:
        for _ in range(3):
            fn(k)
    return fn


def _peers(rate: str, path: str) -> Iterator[tuple[str, str, Callable[[], Callable[[str], object]]]]:
    """(name, algorithm, factory) for every peer installed. Each factory gives ``hit(key)``."""
    limit, _, per = rate.partition("/")
    per_s = {"second": 1.0, "day": 86_400.0, "1ms": 0.001}[per]
    if have("limits"):
        from limits import RateLimitItemPerDay, RateLimitItemPerSecond, storage, strategies

        item = RateLimitItemPerDay(int(limit)) if per == "day" else RateLimitItemPerSecond(int(limit))
        for cls, alg in (
            (strategies.FixedWindowRateLimiter, "fixed_window"),
            (strategies.MovingWindowRateLimiter, "sliding_log"),
            (strategies.SlidingWindowCounterRateLimiter, "sliding_window"),
        ):

            def make(cls: Any = cls) -> Callable[[str], object]:
                lim = cls(storage.MemoryStorage())
                return lambda k: lim.hit(item, k)

            yield f"limits {cls.__name__}", alg, make
    if have("throttled"):
        from throttled import RateLimiterType, Throttled, rate_limiter
        from throttled import store as tstore

        for kind, alg in (
            (RateLimiterType.TOKEN_BUCKET, "token_bucket"),
            (RateLimiterType.GCRA, "token_bucket"),
        ):

            def make_t(kind: Any = kind) -> Callable[[str], object]:
                quota = rate_limiter.per_duration(
                    timedelta(seconds=per_s), limit=int(limit), burst=int(limit)
                )
                t = Throttled(using=kind.value, quota=quota, store=tstore.MemoryStore())
                return lambda k: t.limit(k)

            yield f"throttled-py {kind.value}", alg, make_t
    if have("token_bucket"):
        import token_bucket

        def make_tb() -> Callable[[str], object]:
            lim = token_bucket.Limiter(int(limit) / per_s, int(limit), token_bucket.MemoryStorage())
            return lambda k: lim.consume(k)

        yield "token-bucket (falconry)", "token_bucket", make_tb


def cases(n_keys: int = N_KEYS, peers: bool = True, algorithms: tuple[str, ...] = ALGORITHMS) -> list[Case]:
    """Every workload: hot key and ``n_keys`` round-robin, allowed and denied paths."""
    many = _keys(n_keys)
    hot = [HOT_KEY]
    noop = _native.Noop().noop
    out: list[Case] = []
    for keys, where in ((hot, "hot key"), (many, f"{n_keys // 1000}k keys")):
        for path in ("allowed", "denied"):
            group = f"{where}, {path}"
            out.append(Case(group, "floor: native no-op(key)", noop, keys, "floor"))
            for alg in algorithms:
                rate = ALLOW_RATE[alg] if path == "allowed" else DENY_RATE

                def make(alg: str = alg, rate: str = rate) -> Callable[[str], object]:
                    return Limiter(rate, algorithm=alg, max_keys=max(1_000_000, 4 * n_keys)).hit  # type: ignore[arg-type]

                fn = make() if path == "allowed" else _drained(make, keys)
                out.append(Case(group, f"hotlimit {alg} hit()", fn, keys, "hotlimit", alg))
                if alg == "token_bucket":
                    lim = Limiter(rate, max_keys=max(1_000_000, 4 * n_keys))
                    if path == "denied":
                        for k in keys:
                            lim.allow(k)
                    out.append(Case(group, "hotlimit token_bucket allow()", lim.allow, keys, "hotlimit", alg))
            if peers:
                peer_rate = "1000000000/second" if path == "allowed" else DENY_RATE
                for name, alg, factory in _peers(peer_rate, path):
                    fn = factory() if path == "allowed" else _drained(factory, keys)
                    out.append(Case(group, name, fn, keys, "peer", alg))
    return out


def _loop(fn: Callable[[str], object], keys: list[str], calls: int) -> float:
    """Seconds for ``calls`` calls, cycling through ``keys``."""
    if len(keys) == 1:
        k = keys[0]
        t0 = time.perf_counter_ns()
        for _ in repeat(None, calls):
            fn(k)
        return (time.perf_counter_ns() - t0) / 1e9
    rounds, rest = divmod(calls, len(keys))
    t0 = time.perf_counter_ns()
    for _ in repeat(None, rounds):
        for k in keys:
            fn(k)
    for k in keys[:rest]:
        fn(k)
    return (time.perf_counter_ns() - t0) / 1e9


def measure(case: Case, seconds: float = 0.2, runs: int = 5) -> Result:
    """Median ns/call over ``runs`` runs of about ``seconds`` each (the loop is included, as it
    is for the floor)."""
    calls = max(len(case.keys), 1_000)
    # Calibrate: grow until one run takes a tenth of the budget.
    while _loop(case.fn, case.keys, calls) < seconds / 10 and calls < 50_000_000:
        calls *= 4
    per_run = max(int(calls * (seconds / max(_loop(case.fn, case.keys, calls), 1e-9))), 1)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        samples = [_loop(case.fn, case.keys, per_run) / per_run * 1e9 for _ in range(runs)]
    finally:
        if gc_was:
            gc.enable()
    return Result(case.group, case.name, case.role, case.algorithm, statistics.median(samples), samples)


_MEM_CHILD = textwrap.dedent(
    """
    import gc, json, sys, psutil
    kind, n = sys.argv[1], int(sys.argv[2])
    keys = (f"user:{i:016d}" for i in range(n))  # 21 characters
    proc = psutil.Process()
    if kind == "hotlimit":
        from hotlimit import Limiter
        lim = Limiter("10/minute", max_keys=n + 1)
        hit = lim.hit
    elif kind == "limits":
        from limits import RateLimitItemPerMinute, storage, strategies
        item = RateLimitItemPerMinute(10)
        s = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
        hit = lambda k: s.hit(item, k)
    else:
        d = {}
        def hit(k, d=d):
            d[k] = 1
    hit("warm-up")
    gc.collect()
    base = proc.memory_info().rss
    for k in keys:
        hit(k)
    gc.collect()
    print(json.dumps((proc.memory_info().rss - base) / n))
    """
)


def memory_per_key(kind: str, n: int) -> float | None:
    """RSS bytes per key after ``n`` keys, measured in a fresh interpreter. None if unavailable."""
    if kind == "limits" and not have("limits"):
        return None
    if not have("psutil"):
        return None
    out = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD, kind, str(n)], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        return None
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def run(
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs the comparison; returns a report (results, memory, targets)."""
    say = progress or (lambda _m: None)
    t_start = time.monotonic()
    seconds, runs = (0.04, 3) if quick else (0.15, 5)
    n_keys = 20_000 if quick else N_KEYS
    all_cases = cases(n_keys=n_keys)
    results: list[Result] = []
    for i, case in enumerate(all_cases, 1):
        say(f"[{i}/{len(all_cases)}] {case.group}: {case.name}")
        results.append(measure(case, seconds=seconds, runs=runs))
    say("memory per key ...")
    mem_n = 1_000_000
    memory = {
        "hotlimit": memory_per_key("hotlimit", mem_n),
        "limits MemoryStorage": memory_per_key("limits", 100_000 if quick else mem_n),
        "python dict": memory_per_key("dict", mem_n),
    }
    return {
        "version": _native.__version__,
        "quick": quick,
        "n_keys": n_keys,
        "results": [asdict(r) for r in results],
        "memory_bytes_per_key": memory,
        "targets": targets(results, memory),
        "seconds": round(time.monotonic() - t_start, 1),
    }


def _find(results: list[Result], group: str, name: str) -> float | None:
    for r in results:
        if r.group == group and r.name == name:
            return r.ns_per_call
    return None


def targets(results: list[Result], memory: dict[str, float | None]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value."""
    g = "hot key, allowed"
    hit = _find(results, g, "hotlimit token_bucket hit()")
    floor = _find(results, g, "floor: native no-op(key)")
    limits = [r.ns_per_call for r in results if r.group == g and r.name.startswith("limits ")]
    tb = _find(results, g, "token-bucket (falconry)")
    out: list[dict[str, Any]] = []
    if hit and floor:
        out.append(
            {
                "target": "token_bucket hit(), hot key <= 2x the native floor",
                "value": hit / floor,
                "unit": "x floor",
                "met": hit / floor <= 2.0,
            }
        )
    if hit and limits:
        out.append(
            {
                "target": ">= 40x faster than limits' fastest memory strategy",
                "value": min(limits) / hit,
                "unit": "x faster",
                "met": min(limits) / hit >= 40,
            }
        )
    if hit and tb:
        out.append(
            {
                "target": ">= 5x faster than token-bucket",
                "value": tb / hit,
                "unit": "x faster",
                "met": tb / hit >= 5,
            }
        )
    m = memory.get("hotlimit")
    if m is not None:
        out.append(
            {
                "target": "<= 64 bytes RSS per key at 1,000,000 keys",
                "value": m,
                "unit": "bytes/key",
                "met": m <= 64,
            }
        )
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table: ns/call, ratio to the floor, and speed-up of hotlimit's
    same-algorithm hit() over each peer."""
    results = [Result(**r) for r in report["results"]]
    lines = [
        f"hotlimit {report['version']} memory mode, "
        f"{'quick' if report['quick'] else 'full'} run ({report['seconds']} s); "
        "ns per call incl. the Python loop, median",
    ]
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    width = max(len(r.name) for r in results) + 2
    for group, rows in groups.items():
        floor = next((r.ns_per_call for r in rows if r.role == "floor"), None)
        ours = {r.algorithm: r.ns_per_call for r in rows if r.role == "hotlimit" and "hit()" in r.name}
        lines.append("")
        lines.append(f"{group:<{width}}{'ns/call':>10}{'x floor':>10}{'hotlimit is':>16}")
        for r in rows:
            ratio = f"{r.ns_per_call / floor:.2f}" if floor else "-"
            vs = ""
            if r.role == "peer" and r.algorithm in ours:
                vs = f"{r.ns_per_call / ours[r.algorithm]:.1f}x faster"
            lines.append(f"  {r.name:<{width - 2}}{r.ns_per_call:>10.1f}{ratio:>10}{vs:>16}")
    lines.append("")
    lines.append("memory, RSS bytes per key (21-character keys):")
    for name, v in report["memory_bytes_per_key"].items():
        lines.append(f"  {name:<30}{'n/a' if v is None else f'{v:.1f}':>10}")
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"  [{mark:>7}] {t['target']}: {t['value']:.2f} {t['unit']}")
    return "\n".join(lines)
