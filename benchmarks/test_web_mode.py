"""What the middleware adds to a request: Starlette without limiting, with hotlimit's ASGI
middleware and with slowapi; Flask without, with hotlimit's WSGI middleware and with
flask-limiter. Requests are driven in process (no sockets), all allowed, same run."""

from __future__ import annotations

import asyncio
import io
import statistics
import time
import wsgiref.util
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.conftest import REDIS
from hotlimit import Limiter
from hotlimit.asgi import RateLimitMiddleware, Rule
from hotlimit.wsgi import RateLimitMiddleware as WSGIMiddleware

BIG = "100000000/minute"


def _starlette_apps() -> dict[str, Any]:
    from slowapi import Limiter as SlowLimiter
    from slowapi import _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    plain = Starlette(routes=[Route("/hi", hello)])
    ours = RateLimitMiddleware(
        Starlette(routes=[Route("/hi", hello)]), [Rule("/hi", Limiter(BIG, redis=False))]
    )
    slow = SlowLimiter(key_func=get_remote_address)

    @slow.limit(BIG)
    async def limited(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    slow_app = Starlette(routes=[Route("/hi", limited)])
    slow_app.state.limiter = slow
    slow_app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return {"Starlette, no limiter": plain, "Starlette + hotlimit": ours, "Starlette + slowapi": slow_app}


def _flask_apps() -> dict[str, Any]:
    import flask
    from flask_limiter import Limiter as FlaskLimiter
    from flask_limiter.util import get_remote_address

    def make() -> flask.Flask:
        app = flask.Flask("bench")
        app.add_url_rule("/hi", "hi", lambda: "hi")
        return app

    plain, ours, theirs = make(), make(), make()
    ours.wsgi_app = WSGIMiddleware(ours.wsgi_app, [Rule("/hi", Limiter(BIG, redis=False))])  # type: ignore[method-assign]
    FlaskLimiter(get_remote_address, app=theirs, default_limits=[BIG], storage_uri="memory://")
    return {"Flask, no limiter": plain, "Flask + hotlimit": ours, "Flask + flask-limiter": theirs}


_loops: list[asyncio.AbstractEventLoop] = []


def _asgi_call(app: Any) -> Callable[[], None]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/hi", "raw_path": b"/hi", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test")], "client": ("127.0.0.1", 5000), "server": ("test", 80),
    }  # fmt: skip
    loop = asyncio.new_event_loop()
    _loops.append(loop)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200

    async def many(n: int) -> None:
        for _ in range(n):
            await app(dict(scope), receive, send)

    return lambda: loop.run_until_complete(many(100))


def _wsgi_call(app: Any) -> Callable[[], None]:
    def one() -> None:
        environ: dict[str, Any] = {"PATH_INFO": "/hi", "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO()}
        wsgiref.util.setup_testing_defaults(environ)

        def start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> None:
            assert status.startswith("200"), status

        for _ in app(environ, start_response):
            pass

    return lambda: [one() for _ in range(100)] and None


def _interleaved(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter_ns()
            fn()
            samples[name].append((time.perf_counter_ns() - t0) / 100)
    return {k: statistics.median(v) for k, v in samples.items()}


@pytest.mark.parametrize("framework", ["starlette", "flask"])
def test_added_latency(benchmark: Any, request: pytest.FixtureRequest, framework: str, target: Any) -> None:
    smoke = request.config.getoption("benchmark_disable")
    apps = _starlette_apps() if framework == "starlette" else _flask_apps()
    wrap = _asgi_call if framework == "starlette" else _wsgi_call
    calls = {name: wrap(app) for name, app in apps.items()}
    per_request = _interleaved(calls, 5 if smoke else 30)
    benchmark.pedantic(next(iter(calls.values())), rounds=3, iterations=1)
    while _loops:
        _loops.pop().close()
    base_name = next(n for n in per_request if "no limiter" in n)
    base = per_request[base_name]
    group = f"web, {framework}: ns per request (added over no limiter)"
    for name, ns in per_request.items():
        REDIS[(group, f"{name} (+{ns - base:,.0f} ns)")] = ns
    ours = next(v for n, v in per_request.items() if "hotlimit" in n) - base
    theirs = next(v for n, v in per_request.items() if "no limiter" not in n and "hotlimit" not in n) - base
    target(ours < theirs, f"{framework}: hotlimit adds {ours:.0f} ns, the peer {theirs:.0f} ns")


# -- the web targets: raw ASGI overhead, async against sync, behind uvicorn ------------


def _record(group: str, rows: dict[str, float]) -> None:
    for name, value in rows.items():
        REDIS[(group, name)] = value


def _check(target: Any, web: dict[str, Any]) -> None:
    from hotlimit import _bench_web

    for t in _bench_web.targets(web):
        target(t["met"], f"{t['target']}: {t['value']:.2f} {t['unit']}")


def test_asgi_overhead_and_async_decisions(
    benchmark: Any, redis_url: str, request: pytest.FixtureRequest, target: Any
) -> None:
    from hotlimit import _bench_web

    smoke = request.config.getoption("benchmark_disable")
    asgi = _bench_web.asgi_overhead(redis_url, smoke)
    timings = _bench_web.async_vs_sync(redis_url, smoke)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # measured above
    assert set(asgi) == {"bare app", "+ hotlimit memory", "+ hotlimit hybrid"} and min(asgi.values()) > 0
    _record("web, raw ASGI into Starlette: ns per request", asgi)
    _record("web, async against sync: ns per decision", timings)
    _check(target, {"asgi": asgi, "async": timings})


def test_requests_per_second_behind_uvicorn(
    benchmark: Any, redis_url: str, request: pytest.FixtureRequest, target: Any
) -> None:
    from hotlimit import _bench_web

    smoke = request.config.getoption("benchmark_disable")
    rps = _bench_web.behind_uvicorn(redis_url, 1.0 if smoke else 5.0, 1 if smoke else 3)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert rps is not None, "wrk is installed (apt-get install wrk)"
    assert all(v > 0 for v in rps.values()), rps  # every request answered 2xx (wrk output checked)
    _record("web, one uvicorn worker: requests per second (throughput)", rps)
    _check(target, {"uvicorn": rps})
