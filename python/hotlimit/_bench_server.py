"""What a decision costs the Redis server, for ``hotlimit bench`` and ``benchmarks/``.

When a service outgrows one Redis core, what limits it is the server's time per decision. Two
measures of it, both read from the server (``INFO``) around a run, in the same run as a floor:

- *script time*: ``INFO commandstats`` microseconds of EVALSHA per decision (the script's own
  run, without reading the request and writing the reply);
- *server CPU*: ``INFO cpu`` (user + system) per decision, everything the server did: network,
  parsing, the script, the reply. ``1e6 / cpu`` is what one core serves per second, the number
  a capacity plan needs.

Load shapes: one caller (a thread calling ``hit()`` in a loop), 16 threads, 64 asyncio tasks
(calls made at the same time share script calls, so their cost per decision falls); hybrid mode
against Redis mode at 1, 2 and 4 processes; and a 3-primary cluster, to see the load spread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from hotlimit import _bench

__all__ = [
    "Cost",
    "Snapshot",
    "cluster_capacity",
    "format_rows",
    "mode_load",
    "run",
    "script_cost",
    "targets",
]

#: The algorithms the targets name (sliding_log keeps a sorted set: its cost grows with the limit).
ALGORITHMS = ("token_bucket", "fixed_window", "sliding_window")
SHAPES = ("one caller", "16 threads", "64 tasks")
#: Every decision an allowance (sliding_window's largest limit): each one writes state.
RATE = "1000000/hour"
N_KEYS = 1000
COMMANDS_ROW = "floor: TIME, GET, SET KEEPTTL"
COMMANDS = """
local now = redis.call('TIME')
local out = {}
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], ARGV[i], 'KEEPTTL')
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = 1, 0, 0, 0
end
return out
"""


@dataclass
class Snapshot:
    """Cumulative counters of one or more servers (a cluster: every primary, summed)."""

    calls: int  # EVALSHA calls
    usec: int  # EVALSHA microseconds (commandstats)
    cpu: float  # seconds of server CPU, user + system
    gets: int  # GET calls: the script makes one per key it decides or syncs

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            self.calls - other.calls, self.usec - other.usec, self.cpu - other.cpu, self.gets - other.gets
        )


def snapshot(clients: Sequence[redis.Redis]) -> Snapshot:
    calls = usec = gets = 0
    cpu = 0.0
    for c in clients:
        info: Any = c.info("all")
        e = info.get("cmdstat_evalsha", {})
        calls += int(e.get("calls", 0))
        usec += int(e.get("usec", 0))
        gets += int(info.get("cmdstat_get", {}).get("calls", 0))
        cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return Snapshot(calls, usec, cpu, gets)


@dataclass
class Cost:
    """One row: what ``decisions`` cost the server."""

    what: str  # algorithm, "floor: EVALSHA return 1", or a mode
    shape: str  # load shape
    decisions: int
    calls: int  # EVALSHA calls they took
    script_us: float  # commandstats microseconds per decision
    cpu_us: float  # server CPU microseconds per decision
    seconds: float  # wall time of the run
    keys: int = 0  # keys the script decided or synced (its GETs)

    @property
    def per_call(self) -> float:
        return self.decisions / self.calls if self.calls else 0.0


def _cost(what: str, shape: str, clients: Sequence[redis.Redis], run: Callable[[], int]) -> Cost:
    before = snapshot(clients)
    t0 = time.monotonic()
    n = run()
    seconds = time.monotonic() - t0
    d = snapshot(clients) - before
    return Cost(what, shape, n, d.calls, d.usec / n, d.cpu * 1e6 / n, seconds, d.gets)


def _keys(prefix: str) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(N_KEYS)]


def _one_caller(hit: Callable[[str], Any], keys: list[str], n: int) -> Callable[[], int]:
    def run() -> int:
        for i in range(n):
            hit(keys[i % N_KEYS])
        return n

    return run


def _threads(hit: Callable[[str], Any], keys: list[str], n: int, threads: int = 16) -> Callable[[], int]:
    per = max(1, n // threads)

    def run() -> int:
        def worker(t: int) -> None:
            for i in range(per):
                hit(keys[(t * 61 + i) % N_KEYS])

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return per * threads

    return run


def _tasks(ahit: Callable[[str], Any], keys: list[str], n: int, tasks: int = 64) -> Callable[[], int]:
    per = max(1, n // tasks)

    def run() -> int:
        async def worker(t: int) -> None:
            for i in range(per):
                await ahit(keys[(t * 61 + i) % N_KEYS])

        async def main() -> None:
            await asyncio.gather(*(worker(t) for t in range(tasks)))

        asyncio.run(main())
        return per * tasks

    return run


def script_cost(url: str, clients: Sequence[redis.Redis], decisions: int) -> list[Cost]:
    """Each algorithm in Redis mode under each load shape, and the floor (one caller's
    ``EVALSHA`` of ``return 1``), in one run."""
    out: list[Cost] = []
    floor = redis.Redis.from_url(url)
    try:
        one = str(floor.script_load("return 1"))

        def floor_run() -> int:
            for _ in range(decisions):
                floor.evalsha(one, 0)
            return decisions

        floor_run()
        out.append(_cost("floor: EVALSHA return 1", "one caller", clients, floor_run))
        # What the commands a decision needs cost by themselves: the clock once per call, one
        # GET and one SET (keeping the TTL) per key, four integers back per key.
        commands = str(floor.script_load(COMMANDS))
        value = b"\0" * 24
        for per_call in (1, 32):
            keys = [f"{_bench.KEY_PREFIX}floor:{i:06d}" for i in range(N_KEYS)]
            for k in keys:
                floor.set(k, value, px=3_600_000)

            def commands_run(per_call: int = per_call, keys: list[str] = keys) -> int:
                calls = max(1, decisions // per_call)
                for i in range(calls):
                    ks = [keys[(i * per_call + j) % N_KEYS] for j in range(per_call)]
                    floor.evalsha(commands, per_call, *ks, *([value] * per_call))
                return calls * per_call

            out.append(_cost(COMMANDS_ROW, f"{per_call} per call", clients, commands_run))
        for algorithm in ALGORITHMS:
            lim = _bench.shared_limiter(RATE, url, "cost:", algorithm=algorithm, deny_cache=False)
            keys = _keys("k")
            for k in keys:  # every key made: the rows are the steady state, not first writes
                lim.hit(k)
            shapes = {
                "one caller": _one_caller(lim.hit, keys, decisions),
                "16 threads": _threads(lim.hit, keys, decisions),
                "64 tasks": _tasks(lim.ahit, keys, decisions),
            }
            for shape, fn in shapes.items():
                out.append(_cost(algorithm, shape, clients, fn))
            lim.close()
    finally:
        floor.close()
    return out


def mode_load(url: str, clients: Sequence[redis.Redis], seconds: float, procs: Sequence[int]) -> list[Cost]:
    """Redis and hybrid mode, ``procs`` processes each calling ``allow()`` as fast as it can
    over 1,000 keys: the server's time per admitted unit, and (``calls``) the script calls."""
    out = []
    for mode in ("redis", "hybrid"):
        for n in procs:
            argv = [
                sys.executable,
                "-c",
                _bench._WORKER,
                mode,
                str(N_KEYS),
                str(seconds),
                f"{_bench.KEY_PREFIX}load:",
            ]
            marks: list[Snapshot] = []

            def start_at(marks: list[Snapshot] = marks) -> float:
                marks.append(snapshot(clients))  # after every worker's warm-up, before the run
                return time.time() + 0.05

            outs = _bench._run_workers(argv, n, start_at, url=url)
            d = snapshot(clients) - marks[0]
            units = sum(int(x) for x in outs)
            shape = f"{n} process{'es' if n > 1 else ''}"
            out.append(
                Cost(mode, shape, units, d.calls, d.usec / units, d.cpu * 1e6 / units, seconds, d.gets)
            )
    return out


def cluster_capacity(binary: str, decisions: int) -> dict[str, Any]:
    """Throwaway clusters of 1 and 3 primaries under one load (token bucket, 64 tasks, 1,000
    keys spread over the slots). What a cluster serves per second is bounded by its busiest
    primary: capacity = decisions / that primary's CPU time. This machine's two cores cannot
    saturate three servers and the client together, so the comparison is made on the
    servers' CPU, not on wall-clock throughput."""
    from hotlimit import _servers

    out: dict[str, Any] = {}
    for masters in (1, 3):
        with _servers.cluster(binary, masters=masters) as cl:
            clients = [redis.Redis(port=n.port) for n in cl.nodes]
            try:
                lim = _bench.shared_limiter(RATE, cl.url, f"cluster{masters}:", deny_cache=False)
                keys = _keys("c")
                for k in keys:
                    lim.hit(k)
                before = [snapshot([c]) for c in clients]
                cost = _cost(
                    f"token_bucket, {masters}-primary cluster",
                    "64 tasks",
                    clients,
                    _tasks(lim.ahit, keys, decisions),
                )
                each = [snapshot([c]) - b for c, b in zip(clients, before, strict=True)]
                lim.close()
            finally:
                for c in clients:
                    c.close()
        busiest = max(e.cpu for e in each)
        out[str(masters)] = {
            "cost": asdict(cost),
            "cpu_us": [e.cpu * 1e6 / cost.decisions for e in each],
            # Each primary's share of the decisions (the script's GETs: one per decision).
            "share": [e.gets / max(1, sum(x.gets for x in each)) for e in each],
            "script_us": [e.usec / max(1, e.gets) for e in each],
            "capacity": cost.decisions / busiest if busiest > 0 else 0.0,
        }
    # Measured here: decisions per second of CPU of the busiest primary, 3 against 1 (on two
    # cores shared with the client, a primary at a third of the load spends more per call).
    out["cpu_ratio"] = out["3"]["capacity"] / out["1"]["capacity"] if out["1"]["capacity"] else 0.0
    # The capacity model: a call costs a primary the same whatever the number of primaries (one
    # slot's decisions, the same script), so N primaries serve 1 / (busiest one's share) times
    # what one serves.
    out["ratio"] = 1 / max(out["3"]["share"])
    return out


def run(
    url: str, quick: bool, say: Callable[[str], None], cluster_binary: str | None = None
) -> dict[str, Any]:
    clients = _clients(url)
    try:
        decisions = 2_000 if quick else 12_800
        say("redis server time per decision: each algorithm, one caller, 16 threads, 64 tasks ...")
        rows = script_cost(url, clients, decisions)
        say("redis server time per admitted unit: redis and hybrid mode, 1/2/4 processes ...")
        load = mode_load(url, clients, 0.3 if quick else 1.0, (1, 4) if quick else (1, 2, 4))
    finally:
        for c in clients:
            c.close()
    spread = None
    if cluster_binary is not None:
        say("clusters of 1 and 3 primaries: capacity with keys spread ...")
        spread = cluster_capacity(cluster_binary, decisions)
    return {
        "rows": [asdict(r) for r in rows],
        "load": [asdict(r) for r in load],
        "cluster": spread,
    }


def _clients(url: str) -> list[redis.Redis]:
    """One client per primary (a cluster URL: every primary), for INFO."""
    probe = redis.Redis.from_url(url)
    try:
        info: Any = probe.info("cluster")
    finally:
        probe.close()
    if not info.get("cluster_enabled", 0):
        return [redis.Redis.from_url(url)]
    rc: Any = redis.RedisCluster.from_url(url)
    try:
        primaries = [(n.host, n.port) for n in rc.get_primaries()]
    finally:
        rc.close()
    # The URL's credentials and TLS settings, each primary's address.
    kw: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    return [redis.Redis(**{**kw, "host": host, "port": port}) for host, port in primaries]


def _rows(data: dict[str, Any]) -> list[Cost]:
    return [Cost(**r) for r in data["rows"]]


def format_rows(data: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "redis server time per decision (script: INFO commandstats, EVALSHA; cpu: INFO cpu, user + sys):",
        f"  {'':<30}{'load':<13}{'script us':>10}{'cpu us':>9}{'decisions/call':>16}{'x commands':>12}",
    ]
    rows = _rows(data)
    floors = {r.shape: r.script_us for r in rows if r.what == COMMANDS_ROW}
    versus = {"one caller": floors.get("1 per call"), "64 tasks": floors.get("32 per call")}
    for r in rows:
        f = versus.get(r.shape) if not r.what.startswith("floor") else None
        x = f"{r.script_us / f:.2f}" if f else ""
        lines.append(
            f"  {r.what:<30}{r.shape:<13}{r.script_us:>10.2f}{r.cpu_us:>9.2f}{r.per_call:>16.1f}{x:>12}"
        )
    load = [Cost(**r) for r in data["load"]]
    if load:
        lines.append("")
        lines.append("redis server time per admitted unit, allow() as fast as each process can, 1,000 keys:")
        lines.append(
            f"  {'mode':<8}{'processes':<14}{'units/s':>12}{'script us':>11}{'cpu us':>9}{'calls/s':>10}"
            f"{'keys/call':>11}{'us/key':>8}"
        )
        for r in load:
            lines.append(
                f"  {r.what:<8}{r.shape:<14}{r.decisions / r.seconds:>12,.0f}{r.script_us:>11.3f}"
                f"{r.cpu_us:>9.3f}{r.calls / r.seconds:>10,.0f}{r.keys / max(1, r.calls):>11.1f}"
                f"{r.script_us * r.decisions / max(1, r.keys):>8.2f}"
            )
    cl = data.get("cluster")
    if cl:
        lines.append("")
        lines.append("redis cluster, token_bucket, 64 tasks over 1,000 keys spread over the slots:")
        for m in ("1", "3"):
            c = Cost(**cl[m]["cost"])
            cpus = " / ".join(f"{x:.1f}" for x in cl[m]["cpu_us"])
            lines.append(
                f"  {m} primar{'y' if m == '1' else 'ies'}: script {c.script_us:.2f} us per decision, "
                f"{c.per_call:.1f} per call; cpu us per decision, each primary: {cpus}; "
                f"capacity {cl[m]['capacity']:,.0f} decisions/s (busiest primary at 100%)"
            )
        shares = " / ".join(f"{x:.1%}" for x in cl["3"]["share"])
        per = " / ".join(f"{x:.1f}" for x in cl["3"]["script_us"])
        lines.append(
            f"  3 primaries: decisions per primary {shares} (script us per decision {per}), so they "
            f"serve {cl['ratio']:.2f}x what one serves at the same cost per call; by CPU measured "
            f"here {cl['cpu_ratio']:.2f}x"
        )
    return lines


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _rows(data)
    out: list[dict[str, Any]] = []
    for algorithm in ALGORITHMS:
        by = {r.shape: r for r in rows if r.what == algorithm}
        for shape, bound in (("64 tasks", 2.0), ("one caller", 5.0)):
            if shape in by:
                v = by[shape].script_us
                out.append(
                    {
                        "target": f"redis {algorithm}, {shape}: server time <= {bound:.0f} us per decision",
                        "value": v,
                        "unit": "us",
                        "met": v <= bound,
                    }
                )
    load = [Cost(**r) for r in data["load"]]
    four = {r.what: r for r in load if r.shape.startswith("4 ")}
    if "redis" in four and "hybrid" in four:
        v = four["hybrid"].script_us / four["redis"].script_us
        out.append(
            {
                "target": "hybrid redis time per unit <= 0.1x redis mode's, 4 processes",
                "value": v,
                "unit": "x",
                "met": v <= 0.1,
            }
        )
    cl = data.get("cluster")
    if cl:
        v = cl["ratio"]
        out.append(
            {
                "target": "3-primary cluster serves >= 2.5x one primary, keys spread (1 / busiest share)",
                "value": v,
                "unit": "x",
                "met": v >= 2.5,
            }
        )
    return out
