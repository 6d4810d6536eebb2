"""The web part of the benchmark: what the ASGI middleware adds to a request, async against
sync decisions, and requests per second behind a real server (uvicorn, driven by wrk).

Used by ``hotlimit bench`` and ``benchmarks/test_web_mode.py``; every ratio compares numbers
from the same run, interleaved round by round.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hotlimit._bench import KEY_PREFIX, shared_limiter
from hotlimit.limiter import Limiter

__all__ = ["asgi_overhead", "async_vs_sync", "behind_uvicorn"]

BIG = "1000000000/hour"  # every request allowed: the common path
_SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
    "scheme": "http", "path": "/hi", "raw_path": b"/hi", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"test"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 5000), "server": ("test", 80),
}  # fmt: skip


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    return Starlette(routes=[Route("/hi", hello)])


def asgi_overhead(url: str | None, quick: bool) -> dict[str, float]:
    """ns per request, raw ASGI calls (no HTTP client) into a Starlette app: bare, behind
    hotlimit's middleware with a memory limiter, and with a hybrid one (given ``url``)."""
    from hotlimit.asgi import RateLimitMiddleware, Rule

    apps: dict[str, Any] = {
        "bare app": _starlette(),
        "+ hotlimit memory": RateLimitMiddleware(_starlette(), [Rule("/hi", Limiter(BIG, redis=False))]),
    }
    hybrid = None
    if url:
        hybrid = shared_limiter(BIG, url, "web:", hybrid=True)
        apps["+ hotlimit hybrid"] = RateLimitMiddleware(_starlette(), [Rule("/hi", hybrid)])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    def loop_of(app: Any) -> Callable[[int], Awaitable[None]]:
        async def many(n: int) -> None:
            for _ in range(n):
                await app(dict(_SCOPE), receive, send)

        return many

    try:
        return _interleaved_async({k: loop_of(a) for k, a in apps.items()}, 500, 5 if quick else 15)
    finally:
        if hybrid is not None:
            hybrid.close()


def async_vs_sync(url: str | None, quick: bool) -> dict[str, float]:
    """ns per decision: ``hit()`` and ``await ahit()`` in memory and hybrid mode; with ``url``,
    Redis ``await ahit()`` from one task and its floor, an asyncio EVALSHA of ``return 1`` on
    one connection."""
    rounds = 5 if quick else 11
    memory = Limiter(BIG, redis=False)
    out: dict[str, float] = {}
    limiters = {"memory": memory}
    if url:
        limiters["hybrid"] = shared_limiter(BIG, url, "async:", hybrid=True)
    sync: dict[str, Callable[[], object]] = {}
    calls: dict[str, Callable[[int], Awaitable[None]]] = {}
    for mode, lim in limiters.items():
        hit, ahit = lim.hit, lim.ahit
        sync[f"{mode} hit()"] = lambda hit=hit: hit("user:42")  # type: ignore[misc]

        async def many(n: int, ahit: Any = ahit) -> None:
            for _ in range(n):
                await ahit("user:42")

        calls[f"{mode} await ahit()"] = many
    for name, fn in sync.items():
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for _ in range(20_000):
                fn()
            samples.append((time.perf_counter_ns() - t0) / 20_000)
        out[name] = statistics.median(samples)
    out.update(_interleaved_async(calls, 20_000, rounds))
    if url:
        out.update(_redis_async(url, rounds))
    for lim in limiters.values():
        lim.close()
    return out


def _redis_async(url: str, rounds: int) -> dict[str, float]:
    import redis.asyncio

    async def main() -> dict[str, float]:
        client = redis.asyncio.Redis.from_url(url)
        one = await client.script_load("return 1")
        conn: Any = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        lim = shared_limiter(BIG, url, "async:", deny_cache=False)

        async def floor(n: int) -> None:
            for _ in range(n):
                await conn.send_command("EVALSHA", one, 0)
                await conn.read_response()

        async def ours(n: int) -> None:
            for _ in range(n):
                await lim.ahit("user:42")

        await floor(20)
        await ours(20)
        samples: dict[str, list[float]] = {
            "redis floor: asyncio EVALSHA return 1": [],
            "redis await ahit()": [],
        }
        for _ in range(rounds):
            for name, fn in (("redis floor: asyncio EVALSHA return 1", floor), ("redis await ahit()", ours)):
                t0 = time.perf_counter_ns()
                await fn(200)
                samples[name].append((time.perf_counter_ns() - t0) / 200)
        await lim.aclose()
        await client.connection_pool.release(conn)
        await client.aclose()
        return {k: statistics.median(v) for k, v in samples.items()}

    return asyncio.run(main())


def _interleaved_async(
    calls: dict[str, Callable[[int], Awaitable[None]]], n: int, rounds: int
) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    try:
        samples: dict[str, list[float]] = {k: [] for k in calls}
        for fn in calls.values():
            loop.run_until_complete(fn(50))  # warm up
        for _ in range(rounds):
            for name, fn in calls.items():
                t0 = time.perf_counter_ns()
                loop.run_until_complete(fn(n))
                samples[name].append((time.perf_counter_ns() - t0) / n)
        return {k: statistics.median(v) for k, v in samples.items()}
    finally:
        loop.close()


_APP = textwrap.dedent(
    """
    import os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from hotlimit import Limiter
    from hotlimit.asgi import RateLimitMiddleware, Rule

    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/hi", hello)])
    mode = os.environ["HOTLIMIT_BENCH_MODE"]
    if mode == "memory":
        app = RateLimitMiddleware(app, [Rule("/hi", Limiter("1000000000/hour", redis=False))])
    elif mode == "hybrid":
        lim = Limiter("1000000000/hour", redis=os.environ["HOTLIMIT_BENCH_REDIS_URL"],
                      prefix=os.environ["HOTLIMIT_BENCH_PREFIX"], hybrid=True, redis_timeout=2.0)
        app = RateLimitMiddleware(app, [Rule("/hi", lim)])
    """
)


def behind_uvicorn(url: str | None, seconds: float, rounds: int = 2) -> dict[str, float] | None:
    """Requests per second of one uvicorn worker serving a Starlette app, bare and behind
    hotlimit (memory; hybrid with ``url``), measured with wrk on loopback, interleaved.
    None when wrk is not installed (``apt-get install wrk``)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    modes = ["bare", "memory"] + (["hybrid"] if url else [])
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "hotlimit_bench_app.py"), "w", encoding="utf-8") as f:
            f.write(_APP)
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for mode in modes:
                port = _free_port()
                env = {
                    **os.environ, "HOTLIMIT_BENCH_MODE": mode, "HOTLIMIT_BENCH_REDIS_URL": url or "",
                    "HOTLIMIT_BENCH_PREFIX": f"{KEY_PREFIX}uvicorn:",
                }  # fmt: skip
                argv = [
                    sys.executable, "-m", "uvicorn", "hotlimit_bench_app:app", "--app-dir", tmp,
                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
                ]  # fmt: skip
                servers[mode] = (subprocess.Popen(argv, env=env), port)
            for proc, port in servers.values():
                _wait_listening(proc, port)
            samples: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(rounds):
                for mode, (_, port) in servers.items():
                    out = subprocess.run(
                        [wrk, "-t1", "-c32", f"-d{max(1, round(seconds))}s", f"http://127.0.0.1:{port}/hi"],
                        capture_output=True, text=True, timeout=seconds + 60, check=True,
                    )  # fmt: skip
                    found = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
                    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
                    if found is None or non2xx is not None:
                        raise RuntimeError(f"wrk against {mode}: {out.stdout[-500:]}")
                    samples[mode].append(float(found.group(1)))
            return {f"uvicorn {m}": statistics.median(v) for m, v in samples.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"uvicorn on port {port} did not start within {timeout} s")


def run(url: str | None, quick: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """The web rows of ``hotlimit bench``."""
    say("web: what the ASGI middleware adds to a request ...")
    out: dict[str, Any] = {"asgi": asgi_overhead(url, quick)}
    say("web: await ahit() against hit() ...")
    out["async"] = async_vs_sync(url, quick)
    say("web: requests per second behind uvicorn (wrk) ...")
    out["uvicorn"] = behind_uvicorn(url, 1.0 if quick else 3.0, 1 if quick else 3)
    return out


def targets(web: dict[str, Any]) -> list[dict[str, Any]]:
    """The web targets, each with its measured value (one definition for the report and the
    benchmark suite)."""
    out: list[dict[str, Any]] = []

    def add(target: str, value: float, unit: str, met: bool) -> None:
        out.append({"target": target, "value": value, "unit": unit, "met": met})

    asgi = web.get("asgi") or {}
    for mode, limit_us in (("memory", 2.0), ("hybrid", 2.5)):
        if f"+ hotlimit {mode}" in asgi:
            bare = asgi["bare app"]
            added = (asgi[f"+ hotlimit {mode}"] - bare) / 1000
            add(
                f"ASGI middleware ({mode}) adds <= {limit_us} us over the bare app",
                added,
                "us",
                added <= limit_us,
            )
    a = web.get("async") or {}
    for mode in ("memory", "hybrid"):
        if f"{mode} await ahit()" in a:
            ratio = a[f"{mode} await ahit()"] / a[f"{mode} hit()"]
            add(f"{mode} await ahit() <= 2x hit()", ratio, "x hit()", ratio <= 2.0)
    if "redis await ahit()" in a:
        ratio = a["redis await ahit()"] / a["redis floor: asyncio EVALSHA return 1"]
        add("redis await ahit(), one task <= 1.2x asyncio EVALSHA floor", ratio, "x floor", ratio <= 1.2)
    uv = web.get("uvicorn")
    if uv:
        for mode, share in (("memory", 0.95), ("hybrid", 0.93)):
            if f"uvicorn {mode}" in uv:
                kept = uv[f"uvicorn {mode}"] / uv["uvicorn bare"]
                add(
                    f"behind uvicorn, hotlimit {mode} keeps >= {share:.0%} of bare req/s",
                    kept,
                    "x bare",
                    kept >= share,
                )
    return out


def format_rows(web: dict[str, Any]) -> list[str]:
    lines = ["", "web: ns per request, raw ASGI calls into Starlette (added over the bare app)"]
    bare = web["asgi"]["bare app"]
    for name, ns in web["asgi"].items():
        lines.append(f"  {name:<34}{ns:>10,.0f} ns   (+{(ns - bare) / 1000:,.1f} us)")
    lines.append("async against sync decisions, ns per decision")
    for name, ns in web["async"].items():
        lines.append(f"  {name:<40}{ns:>12,.0f} ns")
    uv = web.get("uvicorn")
    if uv:
        lines.append("one uvicorn worker, wrk on loopback: requests per second")
        for name, rps in uv.items():
            lines.append(f"  {name:<34}{rps:>10,.0f}   ({rps / uv['uvicorn bare']:.2f}x bare)")
    else:
        lines.append("behind uvicorn: skipped (wrk is not installed: apt-get install wrk)")
    return lines
