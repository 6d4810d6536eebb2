"""Soak test: hotlimit under steady load for minutes, with Redis restarted under it.

Run by hand, not in CI (pytest does not collect it: the file name has no ``test_`` prefix and
``testpaths`` is ``tests``)::

    python benchmarks/soak.py                     # 10 minutes, its own redis-server
    python benchmarks/soak.py --minutes 1 --restart-every 20 --out soak.json   # a smoke run
    python benchmarks/soak.py --redis redis://host:6379/0   # a server of yours: never restarted

What runs, in this one process, for ``--minutes``:

* Three limiters at once: memory mode (``redis=False``), Redis mode and hybrid mode
  (``hybrid=True``); the two shared ones use the same URL, so they share one store, one set of
  connections and one circuit breaker, as an application's limiters would.
* Per mode, ``--threads`` threads calling ``hit`` and ``--tasks`` asyncio tasks (on one event
  loop in a thread of its own) awaiting ``ahit``. Each mode's workers together walk through
  ``--keys`` distinct keys, round and round, at a bounded rate (a batch, then a sleep), so the
  machine stays usable: the defaults come to about one core, this process and the server
  together, on a shared 2-core VM. With the defaults a key is revisited every ~10 s in memory
  and hybrid mode and stays tracked for 6 s after a hit (``10/minute``), so about 600,000
  keys are live against ``max_keys`` = 500,000: the tables sit at their bound, new keys
  reclaim idle ones and the sweeper drops the rest. Every batch also hits one hot key, which
  is denied most of the time (the deny cache, in Redis mode).
* Every ``--restart-every`` seconds (own server only) the server is stopped and started again
  on the same port, empty; the time until each shared limiter's ``degraded`` is false again
  is measured from the moment the new server is ready (its log line).
* Every ``--sample-every`` seconds one line: RSS, threads (Python's and the kernel's), open
  file descriptors, the clients the server counts, CPU (this process + the server), decisions
  per second per mode, keys tracked per limiter's table, whether each shared limiter is
  degraded, breaker trips so far, exceptions, the server's commands slower than 10 ms (own
  server only) and the load average. At the end, every breaker trip that was not a restart's
  is listed with its error: a reply slower than ``redis_timeout`` (50 ms) trips the breaker.

The verdict compares the median of the last 20% of the samples with the median of the first
minute after warm-up (warm-up: the first minute, or the first 20% of a shorter run): RSS is
flat within +20%, threads within +2, descriptors within +5, server connections within +5.
The exit status is 1 if anything grew, if a restart took more than 5 s to recover, if an
exception reached a caller, or if a mode made no decisions in some sample.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from hotlimit import Limiter
from hotlimit._servers import Server, redis_binary

MODES = ("memory", "redis", "hybrid")
SHARED = ("redis", "hybrid")
#: Flatness margins: the tail's median may exceed the baseline's by at most this much.
RSS_GROWTH = 0.20
MARGINS = {"threads_py": 2, "threads_os": 2, "fds": 5, "server_clients": 5}
#: A restart whose breaker stays open longer than this (after the server is back) fails the run.
RECOVERY_LIMIT_S = 5.0
#: How long to wait for a breaker to close before calling the restart a failure.
RECOVERY_GIVE_UP_S = 30.0
#: Workers sleep after every batch of about this long, at their share of the target rate.
BATCH_S = 0.02
#: Time in the first minute of the run that counts as warm-up (tables filling, clients
#: connecting), and the baseline window after it.
WARMUP_S = 60.0
BASELINE_S = 60.0


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Counter:
    """One worker's tallies: written by that worker only, summed by the sampler (a stale read
    of an int is fine for a rate)."""

    calls: int = 0
    allowed: int = 0
    errors: int = 0


@dataclass
class Load:
    """The workers of all three modes and what they have counted."""

    limiters: dict[str, Limiter]
    keys: int
    rates: dict[str, float]
    threads: int
    tasks: int
    stop: threading.Event = field(default_factory=threading.Event)
    counters: dict[str, list[Counter]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        workers = self.threads + self.tasks
        for mode in MODES:
            self.counters[mode] = [Counter() for _ in range(workers)]
            for w in range(self.threads):
                t = threading.Thread(target=self._thread, args=(mode, w), name=f"soak-{mode}-{w}")
                self._workers.append(t)
        self._workers.append(threading.Thread(target=lambda: asyncio.run(self._loop()), name="soak-asyncio"))
        for t in self._workers:
            t.start()

    def join(self, timeout: float = 30.0) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(timeout)

    def _plan(self, mode: str) -> tuple[int, int, float]:
        """A worker of ``mode``: calls per batch, the stride through the keys (worker ``w``
        takes keys ``w``, ``w + stride``, ...: together a mode's workers cover every key) and
        the interval between batches, for the worker's share of the mode's target rate."""
        per_worker = self.rates[mode] / (self.threads + self.tasks)
        batch = max(1, round(per_worker * BATCH_S))
        return batch, self.threads + self.tasks, batch / per_worker

    def _record_error(self, mode: str, e: BaseException) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{mode}: {type(e).__name__}: {e}")

    def _thread(self, mode: str, w: int) -> None:
        hit = self.limiters[mode].hit
        counter = self.counters[mode][w]
        batch, stride, interval = self._plan(mode)
        n, i = self.keys, w
        deadline = time.monotonic()
        while not self.stop.is_set():
            allowed = 0
            for j in range(batch + 1):
                key = "hot" if j == batch else f"k{i}"
                i = (i + stride) % n
                try:
                    allowed += bool(hit(key))
                except Exception as e:
                    counter.errors += 1
                    self._record_error(mode, e)
            counter.calls += batch + 1
            counter.allowed += allowed
            deadline += interval
            delay = deadline - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:
                deadline = time.monotonic()  # fell behind (a stall): go on, don't burst to catch up

    async def _task(self, mode: str, w: int) -> None:
        ahit = self.limiters[mode].ahit
        counter = self.counters[mode][w]
        batch, stride, interval = self._plan(mode)
        n, i = self.keys, w
        deadline = time.monotonic()
        while not self.stop.is_set():
            allowed = 0
            for j in range(batch + 1):
                key = "hot" if j == batch else f"k{i}"
                i = (i + stride) % n
                try:
                    allowed += bool(await ahit(key))
                except Exception as e:
                    counter.errors += 1
                    self._record_error(mode, e)
            counter.calls += batch + 1
            counter.allowed += allowed
            deadline += interval
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:
                    deadline = time.monotonic()
                await asyncio.sleep(0)  # let the other tasks run

    async def _loop(self) -> None:
        await asyncio.gather(
            *(self._task(mode, self.threads + k) for mode in MODES for k in range(self.tasks))
        )

    def totals(self) -> dict[str, tuple[int, int, int]]:
        """Per mode: calls, allowed, errors so far."""
        out = {}
        for mode, cs in self.counters.items():
            out[mode] = (sum(c.calls for c in cs), sum(c.allowed for c in cs), sum(c.errors for c in cs))
        return out


# -- measurements ---------------------------------------------------------------------------------


def proc_status() -> tuple[int, int]:
    """VmRSS in kB and the kernel's thread count, from /proc/self/status."""
    rss = threads = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


#: Our own server logs commands slower than this (SLOWLOG); a user's server is left alone.
SLOWLOG_US = 10_000


def server_info(url: str, slowlog: bool) -> dict[str, Any] | None:
    """The server's INFO (clients, memory, cpu), over a connection of its own (not counted in
    ``connected_clients`` below); None while the server does not answer. With ``slowlog``
    (our own server), also ``slow_commands``, the commands slower than ``SLOWLOG_US`` since
    the last sample, and ``slowest_ms``: a reply held up past ``redis_timeout`` (50 ms)
    opens a breaker, and this tells a slow server from a slow client."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        info: dict[str, Any] = dict(client.info("everything"))  # type: ignore[arg-type]
        info["connected_clients"] = int(info["connected_clients"]) - 1  # this connection
        if slowlog:
            client.config_set("slowlog-log-slower-than", SLOWLOG_US)  # again after a restart
            entries: Any = client.slowlog_get(128)
            client.slowlog_reset()
            info["slow_commands"] = len(entries)
            info["slowest_ms"] = max((e["duration"] / 1000 for e in entries), default=0.0)
        return info
    except redis.RedisError:
        return None
    finally:
        client.close()


def table_stats(limiter: Limiter) -> dict[str, int]:
    """Keys and full-table events of the native table a limiter decides with: ``stats()`` in
    memory mode; in hybrid mode the local table (``stats()`` there describes a table hybrid
    mode does not use: always 0 keys); in Redis mode the outage fallback table, made at the
    first outage (its ``unsent_keys`` wait for Redis, its ``lost_units`` did not fit)."""
    if limiter.mode == "memory":
        return limiter.stats()
    native = limiter._local if limiter.mode == "hybrid" else limiter._fallback
    return native.stats() if native is not None else {"keys": 0, "full_events": 0}


@dataclass
class Restart:
    n: int
    at: float  #: seconds into the run when the server was stopped
    ready_s: float  #: stop -> the new server's "Ready to accept connections" (its log)
    recovery_s: dict[str, float | None]  #: per shared limiter: server ready -> not degraded
    noticed: dict[str, bool]  #: whether the breaker opened at all


def ready_time(server: Server) -> float | None:
    """When the server logged "Ready to accept connections", on ``time.monotonic``'s clock.

    The server's own millisecond timestamp, so neither our PING loop's 20 ms steps nor this
    busy process's GIL delays land in the recovery times; None if the log has no such line."""
    assert server.directory is not None
    try:
        text = (server.directory / "server.log").read_text(errors="replace")
    except OSError:
        return None
    stamps = [line for line in text.splitlines() if "Ready to accept connections" in line]
    if not stamps:
        return None
    # "1234:M 03 Dec 2026 14:54:05.729 * Ready to accept connections tcp", in local time.
    when = " ".join(stamps[-1].split()[1:5])
    try:
        wall = datetime.datetime.strptime(when, "%d %b %Y %H:%M:%S.%f").timestamp()
    except ValueError:
        return None
    return wall - (time.time() - time.monotonic())


def restart_and_measure(server: Server, shared: dict[str, Limiter], n: int, t0: float) -> Restart:
    """Restarts the server (stop, start on the same port: state and scripts gone) and waits
    until each shared limiter's ``degraded`` is false again.

    Recovery is measured from the moment the new server is ready to the moment ``degraded``
    turned false, which is the breaker's ``closed_at`` (private, read here for its precision:
    polling ``degraded`` from this thread would add the GIL's delays in a busy process). A
    limiter that has made no call since the server went down still reads "not degraded",
    though its next call fails: only a breaker that opened after the stop (or was open at it)
    and is closed again counts as recovered."""
    breakers = {}
    for mode, limiter in shared.items():
        assert limiter._store is not None
        breakers[mode] = limiter._store.breaker
    open_at_stop = {mode: b.is_open for mode, b in breakers.items()}
    down = time.monotonic()
    server.restart()
    up = time.monotonic()
    ready = ready_time(server)
    if ready is None or not down < ready <= up:
        ready = up  # no usable log line: from when our own PING was answered
    recovery: dict[str, float | None] = dict.fromkeys(shared)
    noticed = dict.fromkeys(shared, False)
    pending = set(shared)
    while pending:
        now = time.monotonic()
        for mode in list(pending):
            breaker = breakers[mode]
            opened = open_at_stop[mode] or breaker.opened_at >= down
            if opened and not shared[mode].degraded:
                recovery[mode] = max(0.0, breaker.closed_at - ready)
                noticed[mode] = True
                pending.discard(mode)
            elif not opened and now - up > 2.0:
                # Under load every lane meets the dead connection within milliseconds; two
                # seconds without a trip means this one never saw the outage.
                recovery[mode] = 0.0
                pending.discard(mode)
            elif now - up > RECOVERY_GIVE_UP_S:
                pending.discard(mode)  # recovery stays None: never closed
        time.sleep(0.001)
    return Restart(n, round(down - t0, 1), round(ready - down, 3), recovery, noticed)


class CountingHandler(logging.Handler):
    """Keeps hotlimit's log records (a lost-units warning, a keeper error) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 20:
            self.records.append(f"{record.levelname}: {record.getMessage()}")


# -- verdict ----------------------------------------------------------------------------------------


def windows(
    samples: list[dict[str, Any]], duration: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The baseline (the first minute after warm-up) and the tail (the last 20% of the run)."""
    warm = min(WARMUP_S, 0.2 * duration)
    tail_from = 0.8 * duration
    base_to = min(warm + BASELINE_S, tail_from)
    base = [s for s in samples if warm <= s["t"] < base_to]
    tail = [s for s in samples if s["t"] >= tail_from]
    return base, tail


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    xs = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(xs) if xs else None


def verdict(
    samples: list[dict[str, Any]], restarts: list[Restart], duration: float, errors: int, own_server: bool
) -> tuple[bool, list[str]]:
    ok = True
    lines: list[str] = []
    base, tail = windows(samples, duration)
    if not base or not tail:
        return False, ["too few samples for a verdict (run longer)"]
    growing: list[str] = []
    b, e = median_of(base, "rss_kb"), median_of(tail, "rss_kb")
    assert b is not None and e is not None
    rss_flat = e <= b * (1 + RSS_GROWTH)
    lines.append(
        f"RSS {'flat' if rss_flat else 'GROWING'}: {b / 1024:.1f} MB -> {e / 1024:.1f} MB"
        f" ({(e / b - 1) * 100:+.1f}%)"
    )
    if not rss_flat:
        growing.append("RSS")
    for key, margin in MARGINS.items():
        b2, e2 = median_of(base, key), median_of(tail, key)
        if b2 is None or e2 is None:
            lines.append(f"{key}: no data")
            continue
        flat = e2 <= b2 + margin
        lines.append(
            f"{key} {'flat' if flat else 'GROWING'}: {b2:g} -> {e2:g} ({e2 - b2:+g}, margin +{margin})"
        )
        if not flat:
            growing.append(key)
    ok &= not growing
    for mode in MODES:
        stalled = [s["t"] for s in samples if s[f"dps_{mode}"] == 0]
        if stalled:
            ok = False
            lines.append(f"{mode} mode made no decisions in the samples at t = {stalled} s")
    if errors:
        ok = False
        lines.append(f"{errors} exceptions reached callers")
    flat_text = (
        "RSS, threads, fds and server connections flat" if not growing else ("GROWING: " + ", ".join(growing))
    )
    if not own_server:
        restart_text = "no restarts (a server given with --redis is never restarted)"
    elif not restarts:
        restart_text = "no restarts (the run is shorter than --restart-every)"
    else:
        worst: float | None = 0.0
        for r in restarts:
            for mode, took in r.recovery_s.items():
                if took is None:
                    worst = None
                    lines.append(f"restart {r.n}: {mode} still degraded {RECOVERY_GIVE_UP_S:.0f} s later")
                elif worst is not None:
                    worst = max(worst, took)
        if worst is None or worst > RECOVERY_LIMIT_S:
            ok = False
        restart_text = (
            f"breaker closed within {worst:.3f} s of each restart ({len(restarts)} restarts)"
            if worst is not None
            else "breaker did NOT close after a restart"
        )
    lines.append(f"VERDICT: {'PASS' if ok else 'FAIL'}: {flat_text}; {restart_text}")
    return ok, lines


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument(
        "--restart-every", type=float, default=120.0, help="seconds between restarts (default 120)"
    )
    p.add_argument(
        "--keys", type=int, default=1_000_000, help="distinct keys cycled through (default 1,000,000)"
    )
    p.add_argument(
        "--max-keys", type=int, default=None, help="max_keys of each limiter (default: --keys / 2)"
    )
    p.add_argument("--redis", default=None, help="a server of yours (never restarted); default: start one")
    p.add_argument("--rate", default="10/minute", help="each limiter's rate per key (default 10/minute)")
    p.add_argument("--memory-rate", type=float, default=100_000, help="memory-mode calls/s target")
    p.add_argument("--hybrid-rate", type=float, default=100_000, help="hybrid-mode calls/s target")
    p.add_argument("--redis-rate", type=float, default=5_000, help="Redis-mode calls/s target")
    p.add_argument("--threads", type=int, default=2, help="threads per mode (default 2)")
    p.add_argument("--tasks", type=int, default=4, help="asyncio tasks per mode (default 4)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--out", type=Path, default=None, help="write every sample (.csv, else JSON) here")
    return p.parse_args(argv)


@contextlib.contextmanager
def redis_target(url: str | None) -> Iterator[tuple[str, Server | None]]:
    if url is not None:
        yield url, None
        return
    server = Server(redis_binary()).start()
    try:
        yield server.url, server
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    duration = args.minutes * 60.0
    max_keys = args.max_keys or max(1, args.keys // 2)
    log = CountingHandler()
    logging.getLogger("hotlimit").addHandler(log)
    #: (seconds into the run, limiter, error) per on_error call: one per breaker trip.
    storage_errors: list[tuple[float, str, str]] = []

    def on_error(mode: str) -> Any:
        return lambda e: storage_errors.append((round(time.monotonic() - t0, 2), mode, repr(e)[:160]))

    t0 = time.monotonic()

    with redis_target(args.redis) as (url, server):
        if server is None:
            print(f"using {url} as given: nothing is restarted, recovery is not measured")
        else:
            print(f"started redis-server on {url}; restarting it every {args.restart_every:g} s")
        prefix = f"hotlimit-soak:{os.getpid()}:"
        limiters = {
            "memory": Limiter(args.rate, redis=False, max_keys=max_keys),
            "redis": Limiter(
                args.rate,
                redis=url,
                prefix=prefix,
                max_keys=max_keys,
                on_error=on_error("redis"),
            ),
            "hybrid": Limiter(
                args.rate,
                redis=url,
                prefix=prefix,
                hybrid=True,
                max_keys=max_keys,
                on_error=on_error("hybrid"),
            ),
        }
        rates = {"memory": args.memory_rate, "redis": args.redis_rate, "hybrid": args.hybrid_rate}
        print(
            f"{args.minutes:g} min, {args.keys:,} keys, max_keys {max_keys:,}, rate {args.rate}; "
            f"per mode {args.threads} threads + {args.tasks} asyncio tasks; targets/s "
            + ", ".join(f"{m} {r:,.0f}" for m, r in rates.items())
        )
        load = Load(limiters, args.keys, rates, args.threads, args.tasks)
        samples: list[dict[str, Any]] = []
        restarts: list[Restart] = []
        end = t0 + duration

        def restarter() -> None:
            assert server is not None
            n = 0
            while True:
                at = t0 + (n + 1) * args.restart_every
                if at >= end:
                    load.stop.wait()  # no more restarts; alive to the end, so threads stay flat
                    return
                if load.stop.wait(at - time.monotonic()):
                    return
                n += 1
                r = restart_and_measure(server, {m: limiters[m] for m in SHARED}, n, t0)
                restarts.append(r)
                took = ", ".join(
                    f"{m} {'never' if v is None else f'{v:.3f} s'}{'' if r.noticed[m] else ' (no trip)'}"
                    for m, v in r.recovery_s.items()
                )
                print(
                    f"  restart {n} at t={r.at:.0f}s: server ready {r.ready_s:.2f} s after the stop;"
                    f" not degraded after: {took}"
                )

        load.start()
        restart_thread = threading.Thread(target=restarter, name="soak-restarter")
        if server is not None:
            restart_thread.start()
        prev_t, prev_totals, prev_cpu = t0, load.totals(), os.times()
        prev_server_cpu: float | None = None
        try:
            k = 0
            while True:
                k += 1
                at = t0 + k * args.sample_every
                if at > end:
                    break
                time.sleep(max(0.0, at - time.monotonic()))
                now, totals, cpu = time.monotonic(), load.totals(), os.times()
                rss, threads_os = proc_status()
                with open("/proc/loadavg") as f:
                    loadavg = float(f.read().split()[0])
                info = server_info(url, slowlog=server is not None)
                server_cpu = None if info is None else float(info["used_cpu_user"] + info["used_cpu_sys"])
                dt = now - prev_t
                s: dict[str, Any] = {
                    "t": round(now - t0, 1),
                    "rss_kb": rss,
                    "threads_py": threading.active_count(),
                    "threads_os": threads_os,
                    "fds": len(os.listdir("/proc/self/fd")),
                    "server_clients": None if info is None else info["connected_clients"],
                    "server_used_memory": None if info is None else info["used_memory"],
                    "cpu_pct": round((cpu.user + cpu.system - prev_cpu.user - prev_cpu.system) / dt * 100, 1),
                    "loadavg": loadavg,
                    "slow_commands": None if info is None else info.get("slow_commands"),
                    "slowest_ms": None if info is None else info.get("slowest_ms"),
                    "server_cpu_pct": (
                        round((server_cpu - prev_server_cpu) / dt * 100, 1)
                        if server_cpu is not None
                        and prev_server_cpu is not None
                        and server_cpu >= prev_server_cpu
                        else None  # the first sample, or the server restarted in between
                    ),
                }
                for mode in MODES:
                    calls, allowed, _ = totals[mode]
                    d_calls = calls - prev_totals[mode][0]
                    s[f"dps_{mode}"] = round(d_calls / dt)
                    s[f"allowed_pct_{mode}"] = (
                        round((allowed - prev_totals[mode][1]) / d_calls * 100, 1) if d_calls else None
                    )
                    st = table_stats(limiters[mode])
                    s[f"keys_{mode}"] = st["keys"]
                    s[f"full_events_{mode}"] = st["full_events"]
                    for extra in ("unsent_keys", "lost_units"):
                        if extra in st:
                            s[f"{extra}_{mode}"] = st[extra]
                for mode in SHARED:
                    s[f"degraded_{mode}"] = limiters[mode].degraded
                store = limiters["redis"]._store
                assert store is not None
                s["breaker_trips"] = store.breaker.trips
                s["errors"] = sum(t[2] for t in totals.values())
                samples.append(s)
                prev_t, prev_totals, prev_cpu, prev_server_cpu = now, totals, cpu, server_cpu
                print(
                    f"t={s['t']:5.0f}s rss={rss / 1024:6.1f}MB thr={s['threads_py']}/{threads_os} "
                    f"fds={s['fds']} conns={s['server_clients']} cpu={s['cpu_pct']:.0f}%"
                    f"+{s['server_cpu_pct'] if s['server_cpu_pct'] is not None else '?'}% | "
                    + " ".join(f"{m} {s[f'dps_{m}'] / 1000:.1f}k/s" for m in MODES)
                    + " | keys "
                    + " ".join(f"{s[f'keys_{m}']}" for m in MODES)
                    + f" | degraded r={int(s['degraded_redis'])} h={int(s['degraded_hybrid'])}"
                    f" trips={s['breaker_trips']} errors={s['errors']}"
                    + (
                        f" | slow {s['slow_commands']}, max {s['slowest_ms']:.0f} ms"
                        if s["slowest_ms"]
                        else ""
                    )
                    + f" | load {loadavg:.1f}",
                    flush=True,
                )
        except KeyboardInterrupt:
            print("interrupted: verdict on the samples so far")
            duration = time.monotonic() - t0
        finally:
            load.join()
            if restart_thread.is_alive():
                restart_thread.join(RECOVERY_GIVE_UP_S + 15)
            for limiter in limiters.values():
                limiter.close()

        ok, lines = verdict(
            samples, restarts, duration, sum(t[2] for t in load.totals().values()), server is not None
        )
        print()
        if samples:
            first, last = samples[0], samples[-1]
            print("start -> end: " + ", ".join(f"{k} {first[k]} -> {last[k]}" for k in (*MARGINS, "rss_kb")))
            for mode in MODES:
                dps = [s[f"dps_{mode}"] for s in samples]
                print(
                    f"{mode:>6}: median {statistics.median(dps):,.0f} decisions/s"
                    f" (min {min(dps):,}, max {max(dps):,}); "
                    f"full-table events {samples[-1][f'full_events_{mode}']:,}"
                )
        for r in restarts:
            took = ", ".join(
                f"{m} {'never' if v is None else f'{v * 1000:.0f} ms'}" for m, v in r.recovery_s.items()
            )
            print(
                f"restart {r.n} at t={r.at:.0f}s: server ready {r.ready_s:.2f} s after the stop;"
                f" not degraded after: {took}"
            )
        # The two shared limiters share one store and breaker: each trip calls both on_error
        # callbacks, so the Redis-mode limiter's calls are the trips. A trip outside every
        # restart (from the stop to 2 s after the server was ready) is a spurious one: a reply
        # slower than redis_timeout (50 ms) on this machine, or a fault worth a look.
        trips = [(t, e) for t, mode, e in storage_errors if mode == "redis"]
        spurious = [
            (t, e) for t, e in trips if not any(r.at <= t <= r.at + r.ready_s + 2.0 for r in restarts)
        ]
        print(
            f"breaker trips: {len(trips)} ({len(trips) - len(spurious)} at restarts, {len(spurious)} others)"
        )
        for t, e in spurious[:10]:
            print(f"  trip at t={t:.1f}s: {e}")
        slow = [x for x in samples if x.get("slowest_ms")]
        if slow:
            print(
                f"server commands over {SLOWLOG_US // 1000} ms: {sum(x['slow_commands'] for x in slow)}"
                f" (slowest {max(x['slowest_ms'] for x in slow):.1f} ms)"
            )
        lines.insert(-1, f"breaker trips outside restarts: {len(spurious)}")
        if load.errors:
            print("exceptions from callers (first ones):", *load.errors, sep="\n  ")
        if log.records:
            print("hotlimit log (first records):", *log.records, sep="\n  ")
        for line in lines:
            print(line)
        if args.out is not None:
            write_out(args.out, vars(args), samples, restarts, storage_errors, lines)
        return 0 if ok else 1


def write_out(
    path: Path,
    args: dict[str, Any],
    samples: list[dict[str, Any]],
    restarts: list[Restart],
    errors: list[tuple[float, str, str]],
    lines: list[str],
) -> None:
    """Every sample as CSV (``.csv``), or everything as JSON: arguments, samples, restarts,
    on_error calls and the verdict."""
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            # Some fields appear only later (the Redis-mode fallback table, at the first outage).
            fields = list(dict.fromkeys(k for x in samples for k in x)) or ["t"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(samples)
        return
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
        "samples": samples,
        "restarts": [r.__dict__ for r in restarts],
        "on_error": [{"t": t, "limiter": mode, "error": e} for t, mode, e in errors],
        "verdict": lines,
    }
    path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
