"""Client keys, response fields and the ASGI middleware (Starlette's TestClient, in process),
on memory and Redis limiters."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from hotlimit import InvalidArgumentError, InvalidCostError, Limiter, ManualClock, Rate
from hotlimit.asgi import RateLimitMiddleware, Rule, Scoped
from hotlimit.headers import rate_limit_headers
from hotlimit.keys import ClientIP, hash_secret_key
from tests import servers

# -- client keys ------------------------------------------------------------------------------


def test_untrusted_peer_cannot_spoof() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    spoof = [("X-Forwarded-For", "1.1.1.1"), ("Forwarded", "for=2.2.2.2")]
    assert key("198.51.100.7", spoof) == "198.51.100.7"
    assert ClientIP()("198.51.100.7", spoof) == "198.51.100.7", "no trusted proxies: headers ignored"


def test_trusted_chain_is_read_right_to_left() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8", "192.0.2.1"])
    # The client wrote "6.6.6.6" itself; 203.0.113.9 is what the first trusted proxy saw.
    headers = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 192.0.2.1")]
    assert key("10.0.0.5", headers) == "203.0.113.9"
    rfc = ClientIP(trusted_proxies=["10.0.0.0/8", "192.0.2.1"], header="forwarded")
    assert rfc("10.0.0.5", [("forwarded", 'for=6.6.6.6, for="[2001:db8::1]:443"')]) == "2001:db8::/64"
    assert key("10.0.0.5", [("x-forwarded-for", "10.1.1.1, 10.2.2.2")]) == "10.1.1.1", "all trusted"
    assert key("10.0.0.5", [("x-forwarded-for", "garbage, 203.0.113.9")]) == "203.0.113.9"
    assert key("10.0.0.5", []) == "10.0.0.5"


def test_ipv6_grouping_and_bad_config() -> None:
    assert ClientIP()("2001:db8:1:2:3:4:5:6", []) == "2001:db8:1:2::/64"
    assert ClientIP(ipv6_prefix=None)("2001:db8::5", []) == "2001:db8::5"
    assert ClientIP()("::ffff:192.0.2.7", []) == "192.0.2.7"
    with pytest.raises(InvalidArgumentError, match="not-an-ip"):
        ClientIP(trusted_proxies=["not-an-ip"])


def test_api_keys_are_hashed() -> None:
    h = hash_secret_key("sk_live_secret", secret=b"s" * 32)
    assert h == hash_secret_key(b"sk_live_secret", secret=b"s" * 32)
    assert "sk_live_secret" not in h and h.startswith("k:") and len(h) == 34
    assert h != hash_secret_key("sk_live_secret", secret=b"t" * 32)


# -- response fields --------------------------------------------------------------------------


def test_ietf_and_legacy_fields() -> None:
    clock = ManualClock()  # three hits inside one refill interval, however slow the machine
    per_s = Limiter("2/second", clock=clock)
    per_day = Limiter("100/day", clock=clock)
    results = [(per_s, per_s.hit("k")), (per_day, per_day.hit("k"))]
    fields = dict(rate_limit_headers(results))
    assert fields["RateLimit-Policy"].count(";q=") == 2 and ";w=86400" in fields["RateLimit-Policy"]
    assert ";r=1;t=1" in fields["RateLimit"]
    per_s.hit("k")
    denied = per_s.hit("k")
    fields = dict(rate_limit_headers([(per_s, denied)], style="x", denied=True))
    assert fields["X-RateLimit-Limit"] == "2" and fields["X-RateLimit-Remaining"] == "0"
    assert fields["Retry-After"] == "1", "whole seconds, rounded up"
    assert "RateLimit-Limit" in dict(rate_limit_headers([(per_s, denied)], style="draft"))


# -- ASGI middleware --------------------------------------------------------------------------


_clients: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


class Client:
    """Drives an ASGI app in process through httpx's ASGI transport (peer 127.0.0.1)."""

    def __init__(self, app: object, limiters: list[Limiter]) -> None:
        self.app = app
        self.limiters = limiters
        self.loop = asyncio.new_event_loop()  # one loop: async Redis connections belong to it

    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, **kw)  # type: ignore[arg-type]

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        for lim in self.limiters:
            self.loop.run_until_complete(lim.aclose())
        self.loop.close()

    def post(self, path: str, **kw: object) -> httpx.Response:
        return self.request("POST", path, **kw)

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)


def _app(**kw: object) -> tuple[Client, dict[str, list[object]]]:
    seen: dict[str, list[object]] = {"bodies": [], "denied": []}

    async def upload(request: Request) -> PlainTextResponse:
        seen["bodies"].append(await request.body())
        return PlainTextResponse("ok")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("up")

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"]), Route("/health", health)])
    url = kw.pop("redis", None)
    # Memory limiters run on a manual clock: a slow request must not move retry_after.
    backend = {"redis": url, "prefix": "web:", "redis_timeout": 2.0} if url else {"clock": ManualClock()}
    limits = [Limiter(str(kw.pop("rate", "2/minute")), **backend), Limiter("100/day", **backend)]  # type: ignore[arg-type]
    rules = [Rule("/upload", limits, methods=["POST"])]
    wrapped = RateLimitMiddleware(
        app, rules, exempt=["/health"], on_deny=lambda scope, key, ds: seen["denied"].append(key), **kw
    )
    client = Client(wrapped, limits)
    _clients.append(client)
    return client, seen


def test_denies_with_429_json_and_never_reads_the_body() -> None:
    client, seen = _app()
    for _ in range(2):
        r = client.post("/upload", content=b"data")
        assert r.status_code == 200 and "RateLimit" in r.headers and "RateLimit-Policy" in r.headers
    r = client.post("/upload", content=b"big body that must not be read")
    assert r.status_code == 429
    assert r.json() == {"error": "rate_limited", "detail": "Too many requests", "retry_after": 30}
    assert r.headers["retry-after"] == "30"
    assert seen["bodies"] == [b"data", b"data"], "the denied request's body was never read"
    assert seen["denied"] == ["127.0.0.1"]
    assert all(client.get("/health").status_code == 200 for _ in range(5)), "exempt path"


def test_shadow_mode_reports_but_never_blocks() -> None:
    client, seen = _app(shadow=True)
    codes = [client.post("/upload", content=b"x").status_code for _ in range(4)]
    assert codes == [200] * 4
    assert len(seen["denied"]) == 2


def test_other_routes_and_methods_pass(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    client, _ = _app(redis=url, rate="1/minute", headers="x")
    assert client.post("/upload", content=b"a").headers["x-ratelimit-remaining"] == "0"
    assert client.post("/upload", content=b"a").status_code == 429, "shared limit in Redis"
    assert client.get("/health").status_code == 200
    assert client.get("/upload").status_code == 405, "GET is not in the rule; the app answers"


# -- WSGI middleware (Flask) ------------------------------------------------------------------


def test_flask_app_through_wsgi_middleware() -> None:
    import flask

    from hotlimit.keys import ClientIP
    from hotlimit.wsgi import RateLimitMiddleware as WSGIMiddleware

    app = flask.Flask("t")
    bodies: list[bytes] = []

    @app.post("/upload")
    def upload() -> str:
        bodies.append(flask.request.get_data())
        return "ok"

    @app.get("/health")
    def health() -> str:
        return "up"

    rules = [Rule("/upload", Limiter("2/minute"), methods=["POST"])]
    app.wsgi_app = WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, rules, exempt=["/health"], client_ip=ClientIP(trusted_proxies=["127.0.0.1"])
    )
    client = app.test_client()
    forwarded = {"X-Forwarded-For": "203.0.113.5"}
    assert [client.post("/upload", data=b"x", headers=forwarded).status_code for _ in range(2)] == [200, 200]
    r = client.post("/upload", data=b"never read", headers=forwarded)
    assert r.status_code == 429 and r.get_json()["error"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1 and "RateLimit" in r.headers
    assert bodies == [b"x", b"x"]
    other = client.post("/upload", data=b"y", headers={"X-Forwarded-For": "203.0.113.6"})
    assert other.status_code == 200, "a different client behind the trusted proxy"
    assert all(client.get("/health").status_code == 200 for _ in range(4))


# -- decorators -------------------------------------------------------------------------------


def test_decorator_raises_or_waits() -> None:
    from hotlimit import ManualClock, RateLimitExceeded

    clock = ManualClock()
    limiter = Limiter("2/second", clock=clock)

    @limiter.limit(key=lambda user: f"user:{user}")
    def work(user: str) -> str:
        return f"done {user}"

    assert work("a") == "done a" and work("a") == "done a"
    with pytest.raises(RateLimitExceeded) as info:
        work("a")
    assert info.value.decision.retry_after > 0 and info.value.key == "user:a"
    assert work("b") == "done b", "keys are per user"

    @limiter.limit(key="shared", wait=True, timeout=5.0)
    async def slow() -> int:
        return 1

    async def main() -> list[int]:
        return [await slow() for _ in range(4)]

    assert asyncio.run(main()) == [1, 1, 1, 1], "waited (the test clock moved) instead of raising"
    with pytest.raises(InvalidCostError, match="at least 1"):
        limiter.limit(cost=0)


# -- metrics and a real server ----------------------------------------------------------------


def test_metrics_count_and_export() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from hotlimit.metrics import Metrics

    metrics = Metrics()
    client, _ = _app(metrics=metrics)
    for _ in range(3):
        client.post("/upload", content=b"x")
    snap = metrics.snapshot()
    assert snap["routes"]["/upload"]["allowed"] == 2 and snap["routes"]["/upload"]["denied"] == 1
    assert all(s == {"mode": "memory", "degraded": False} for s in snap["limiters"].values())
    registry = CollectorRegistry()
    metrics.register_prometheus(registry)
    text = generate_latest(registry).decode()
    assert 'hotlimit_decisions_total{outcome="denied",route="/upload"} 1.0' in text
    assert 'hotlimit_decision_seconds_count{route="/upload"} 3.0' in text
    assert "127.0.0.1" not in text, "no client key in the metrics"


def test_end_to_end_through_uvicorn() -> None:
    """A real server on loopback, a real HTTP client: 429 after the limit, with its fields."""
    import socket
    import threading
    import time

    import uvicorn

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = RateLimitMiddleware(Starlette(routes=[Route("/hi", hello)]), [Rule("/hi", Limiter("3/hour"))])
    sock = socket.socket()  # bound here: no window for another process to take the port
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            codes = [http.get("/hi").status_code for _ in range(4)]
            last = http.get("/hi")
        assert codes == [200, 200, 200, 429]
        assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
        assert last.json()["error"] == "rate_limited"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


# -- tiers, run-time changes, admin reset, logs -------------------------------------------------


def test_tiers_runtime_changes_reset_and_hashed_logs(caplog: pytest.LogCaptureFixture) -> None:
    free, pro = Limiter("1/minute"), Limiter("3/minute")

    def tier(scope: dict[str, object], key: str) -> Limiter:
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        return pro if headers.get(b"x-plan") == b"pro" else free

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a", ok), Route("/b", ok)])
    rule_b = Rule("/b", Limiter("1/minute"))
    mw = RateLimitMiddleware(app, [Rule("/a", choose=tier), rule_b])
    client = Client(mw, [])
    _clients.append(client)
    assert [client.get("/a").status_code for _ in range(2)] == [200, 429], "free tier: 1"
    pro_codes = [client.get("/a", headers={"x-plan": "pro"}).status_code for _ in range(4)]
    assert pro_codes == [200, 200, 200, 429], "pro tier: 3, counted separately"
    assert client.get("/b").status_code == 200
    with caplog.at_level("INFO", logger="hotlimit"):
        assert client.get("/b").status_code == 429
    assert "rate limited: route=/b client=k:" in caplog.text and "127.0.0.1" not in caplog.text
    rule_b.set_limits(Limiter("5/minute"))
    assert client.get("/b").status_code == 200, "a new limit at run time"
    assert mw.reset("127.0.0.1") == 1
    with pytest.raises(InvalidArgumentError, match="Limiter"):
        rule_b.set_limits([])


# -- Django through the WSGI middleware -----------------------------------------------------------


def test_django_view_through_wsgi_middleware() -> None:
    import io
    import wsgiref.util

    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="t", MIDDLEWARE=[]
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application

    from hotlimit.wsgi import RateLimitMiddleware as WSGIMiddleware

    app = WSGIMiddleware(get_wsgi_application(), [Rule("/view/", Limiter("2/minute"))])

    def call() -> tuple[str, dict[str, str], bytes]:
        environ: dict[str, object] = {
            "PATH_INFO": "/view/",
            "REMOTE_ADDR": "192.0.2.10",
            "wsgi.input": io.BytesIO(),
        }
        wsgiref.util.setup_testing_defaults(environ)
        seen: dict[str, object] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *exc: object) -> None:
            seen["status"], seen["headers"] = status, dict(headers)

        body = b"".join(app(environ, start_response))
        return str(seen["status"]), seen["headers"], body  # type: ignore[return-value]

    from django.test import override_settings

    with override_settings(ROOT_URLCONF=__name__):  # another test may have configured Django
        first = call()
    assert first[0].startswith("200") and first[2] == b"django ok" and "RateLimit" in first[1]
    call()
    status, headers, body = call()
    assert status.startswith("429") and int(headers["Retry-After"]) >= 1 and b"rate_limited" in body


def _django_view(request: object) -> object:
    from django.http import HttpResponse

    return HttpResponse(b"django ok")


def __getattr__(name: str) -> object:
    # Django reads ROOT_URLCONF (this module) lazily; build the patterns on first use.
    if name == "urlpatterns":
        from django.urls import path

        return [path("view/", _django_view)]
    raise AttributeError(name)


def test_per_user_and_per_tenant_limits_together() -> None:
    from hotlimit.asgi import Scoped

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    per_user = Limiter("2/minute")
    per_tenant = Limiter("3/minute")

    def user(scope: dict[str, object], ip: str) -> str:
        return "u:" + dict(scope["headers"]).get(b"x-user", b"?").decode()  # type: ignore[call-overload]

    def tenant(scope: dict[str, object], ip: str) -> str:
        return "t:" + dict(scope["headers"]).get(b"x-tenant", b"?").decode()  # type: ignore[call-overload]

    rule = Rule("/api", [per_user, Scoped(per_tenant, tenant)], key=user)
    client = Client(RateLimitMiddleware(Starlette(routes=[Route("/api", ok)]), [rule]), [])
    _clients.append(client)

    def get(u: str) -> int:
        return client.get("/api", headers={"x-user": u, "x-tenant": "acme"}).status_code

    assert [get("alice"), get("alice"), get("alice")] == [200, 200, 429], "per user: 2"
    assert get("bob") == 200, "the tenant's third unit"
    assert get("carol") == 429, "per tenant: 3, all-or-nothing"
    assert per_user.peek("u:carol").remaining == 1, "the tenant denial consumed nothing from carol"


def test_starlette_add_middleware_as_in_the_readme() -> None:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/api/x", ok)])
    app.add_middleware(
        RateLimitMiddleware, rules=[Rule("/api/*", [Limiter("1/minute"), Limiter("10000/day")])]
    )
    client = Client(app, [])
    _clients.append(client)
    assert [client.get("/api/x").status_code for _ in range(2)] == [200, 429]


def test_key_helpers_and_a_hybrid_limiter(redis_server: object) -> None:
    from hotlimit.keys import api_key, grouped, user

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    url = redis_server.url  # type: ignore[attr-defined]
    shared = Limiter("2/minute", redis=url, prefix="webhy:", hybrid=True, redis_timeout=2.0)
    rules = [
        Rule("/a", shared, key=grouped("export", api_key("x-api-key", secret=b"s" * 32))),
        Rule("/b", shared, key=grouped("export", api_key("x-api-key", secret=b"s" * 32))),
    ]
    seen: list[str] = []
    app = RateLimitMiddleware(
        Starlette(routes=[Route("/a", ok), Route("/b", ok)]), rules, on_deny=lambda s, k, d: seen.append(k)
    )
    client = Client(app, [shared])
    _clients.append(client)
    h = {"x-api-key": "sk_live_1"}
    codes = [client.get("/a", headers=h).status_code, client.get("/b", headers=h).status_code]
    assert codes == [200, 200] and client.get("/a", headers=h).status_code == 429, "one budget for the group"
    assert seen and seen[0].startswith("export:k:") and "sk_live_1" not in seen[0]
    assert client.get("/a", headers={"x-api-key": "sk_live_2"}).status_code == 200
    assert user()({"REMOTE_USER": "ann"}, "1.2.3.4") == "user:ann"
    assert user()({"headers": []}, "1.2.3.4") == "ip:1.2.3.4"


# -- the web edge holds under adversarial input (issue: no spoofed keys, correct rules) -------


def test_only_the_named_forwarding_header_is_read() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    # The proxy appends to X-Forwarded-For only; the client's own Forwarded passes through it.
    spoof = [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=6.6.6.6")]
    assert key("10.0.0.1", spoof) == "203.0.113.9"
    assert key("10.0.0.1", list(reversed(spoof))) == "203.0.113.9", "header order does not matter"
    rfc = ClientIP(trusted_proxies=["10.0.0.0/8"], header="Forwarded")
    assert rfc("10.0.0.1", spoof) == "6.6.6.6", "the operator named Forwarded: only it is read"
    assert rfc("10.0.0.1", [("x-forwarded-for", "1.1.1.1")]) == "10.0.0.1"
    # Repeated fields of the named header are one list; elements without for= are hops too.
    assert rfc("10.0.0.1", [("forwarded", "for=6.6.6.6"), ("forwarded", "proto=https;for=203.0.113.7")]) == (
        "203.0.113.7"
    )
    assert rfc("10.0.0.1", [("forwarded", "for=6.6.6.6, proto=https")]) == "10.0.0.1", "unknown hop: stop"
    real = ClientIP(trusted_proxies=["10.0.0.0/8"], header="X-Real-IP")
    assert real("10.0.0.1", [("x-real-ip", "203.0.113.8"), ("x-forwarded-for", "6.6.6.6")]) == "203.0.113.8"
    for bad in ("x forwarded", "", "a:b"):
        with pytest.raises(InvalidArgumentError, match="header"):
            ClientIP(header=bad)
    with pytest.raises(InvalidArgumentError, match="string"):
        ClientIP(trusted_proxies="10.0.0.0/8")


def _rotating_forwarded(n: int) -> list[list[tuple[str, str]]]:
    return [[("X-Forwarded-For", "203.0.113.9"), ("Forwarded", f"for=6.6.6.{i}")] for i in range(n)]


def test_rotating_forwarded_header_does_not_pick_the_key_asgi() -> None:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    lim = Limiter("1/minute")
    app = RateLimitMiddleware(
        Starlette(routes=[Route("/login", ok)]),
        [Rule("/login", lim)],
        client_ip=ClientIP(trusted_proxies=["127.0.0.1"]),  # the test transport's peer
    )
    client = Client(app, [lim])
    _clients.append(client)
    codes = [client.get("/login", headers=dict(h)).status_code for h in _rotating_forwarded(5)]
    assert codes == [200, 429, 429, 429, 429]


def test_rotating_forwarded_header_does_not_pick_the_key_wsgi() -> None:
    import flask

    from hotlimit.wsgi import RateLimitMiddleware as WSGIMiddleware

    app = flask.Flask("t")
    app.add_url_rule("/login", "login", lambda: "ok")
    app.wsgi_app = WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, [Rule("/login", Limiter("1/minute"))], client_ip=ClientIP(trusted_proxies=["127.0.0.1"])
    )
    client = app.test_client()
    codes = [client.get("/login", headers=dict(h)).status_code for h in _rotating_forwarded(5)]
    assert codes == [200, 429, 429, 429, 429]


def test_unix_socket_proxy_can_be_trusted_and_a_missing_peer_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trusted = ClientIP(trusted_proxies=["unix"])
    assert trusted(None, [("x-forwarded-for", "6.6.6.6, 203.0.113.9")]) == "203.0.113.9"
    assert trusted(None, [("x-forwarded-for", "203.0.113.10")]) == "203.0.113.10"
    untrusted = ClientIP()
    with caplog.at_level("WARNING", logger="hotlimit"):
        assert untrusted(None, [("x-forwarded-for", "203.0.113.9")]) == "unknown"
        assert untrusted("", []) == "unknown"
    warnings = [r for r in caplog.records if "no client address" in r.getMessage()]
    assert len(warnings) == 1, "said once, not per request"
    assert "trusted_proxies=['unix']" in warnings[0].getMessage()

    # Through the ASGI middleware: a server on a Unix socket gives no "client" in the scope.
    lim = Limiter("1/minute")
    app = RateLimitMiddleware(_plain_app(), [Rule("/*", lim)], client_ip=ClientIP(trusted_proxies=["unix"]))
    statuses = [
        _raw_asgi(app, "GET", "/x", None, [(b"x-forwarded-for", f"203.0.113.{i}".encode())])
        for i in (1, 2, 1)
    ]
    assert statuses == [200, 200, 429], "each client behind the Unix-socket proxy has its own key"


def _plain_app() -> Starlette:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/{p:path}", ok, methods=["GET", "POST"])])


def _raw_asgi(app: object, method: str, path: str, client: object, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), *headers], "client": client, "server": None,
    }  # fmt: skip
    status: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))  # type: ignore[call-overload]

    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    return status[0]


def test_a_rule_mixing_backends_is_refused_when_built(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    local, shared = Limiter("5/minute"), Limiter("5/minute", redis=url, prefix="mix:", redis_timeout=2.0)
    with pytest.raises(InvalidArgumentError, match="one place") as e:
        Rule("/x", [local, shared])
    assert "5/minute" in str(e.value) and "memory" in str(e.value)
    rule = Rule("/x", [Limiter("1/second"), local])
    with pytest.raises(InvalidArgumentError, match="one place"):
        rule.set_limits([local, shared])
    shared.close()


def test_head_counts_as_get() -> None:
    lim = Limiter("1/minute")
    app = RateLimitMiddleware(_plain_app(), [Rule("/export", lim, methods=["GET"])])
    peer = ("198.51.100.1", 1234)
    assert [_raw_asgi(app, "HEAD", "/export", peer, []) for _ in range(3)] == [200, 429, 429]
    assert _raw_asgi(app, "GET", "/export", peer, []) == 429, "HEAD and GET share one budget"
    own = RateLimitMiddleware(
        _plain_app(), [Rule("/export", Limiter("1/minute"), methods=["GET"], head_as_get=False)]
    )
    assert [_raw_asgi(own, "HEAD", "/export", peer, []) for _ in range(3)] == [200, 200, 200]


def _sf_list(value: str) -> list[tuple[str, dict[str, int]]]:
    import http_sfv

    parsed = http_sfv.List()
    parsed.parse(value.encode("ascii"))  # raises on anything outside RFC 9651's syntax
    return [(item.value, dict(item.params)) for item in parsed]


def test_policy_fields_are_valid_structured_fields_that_state_the_real_quota() -> None:
    a, b = Limiter("5/minute"), Limiter("5/minute")
    fields = dict(rate_limit_headers([(a, a.hit("k")), (b, b.hit("k"))]))
    policy, now = _sf_list(fields["RateLimit-Policy"]), _sf_list(fields["RateLimit"])
    assert len({name for name, _ in policy}) == 2, f"two limits, two names: {fields['RateLimit-Policy']}"
    assert [name for name, _ in policy] == [name for name, _ in now]

    def quota(lim: Limiter) -> tuple[dict[str, int], dict[str, int]]:
        d = lim.hit("k")
        f = dict(rate_limit_headers([(lim, d)]))
        (_, p), (_, r) = _sf_list(f["RateLimit-Policy"])[0], _sf_list(f["RateLimit"])[0]
        assert 0 <= r["r"] <= p["q"], (lim.rate, p, r)
        return p, r

    assert quota(Limiter("3/500ms", algorithm="fixed_window"))[0] == {"q": 6, "w": 1}, "not half the rate"
    p, r = quota(Limiter("10/second; burst=20"))
    assert p == {"q": 20, "w": 2} and r["r"] == 19, "a burst above the limit is the quota"
    assert quota(Limiter("10/second"))[0] == {"q": 10, "w": 1}
    assert quota(Limiter("1/second; burst=1"))[0] == {"q": 1, "w": 1}
    assert quota(Limiter("100/day"))[0] == {"q": 100, "w": 86400}
    assert quota(Limiter("7/1500ms", algorithm="sliding_window"))[0] == {"q": 14, "w": 3}
    huge = Limiter(Rate(8_640_000_000_000_000, timedelta(days=100)))
    p, r = quota(huge)  # the parser refuses integers over 15 digits
    assert p == {"q": 1_000_000_000, "w": 1}, p


def test_ipv4_mapped_proxies_are_trusted_as_their_ipv4_address() -> None:
    """A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; a trusted proxy seen that way
    must still be trusted, or every client behind it shares one key."""
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    assert key("::ffff:10.0.0.1", [("x-forwarded-for", "203.0.113.9")]) == "203.0.113.9"
    assert key("10.0.0.1", [("x-forwarded-for", "203.0.113.9, ::ffff:10.0.0.2")]) == "203.0.113.9"
    assert key("::ffff:198.51.100.7", [("x-forwarded-for", "203.0.113.9")]) == "198.51.100.7"
    assert ClientIP(ipv6_prefix=None)("fe80::1%eth0", []) == ClientIP(ipv6_prefix=None)("fe80::1%eth1", [])


def test_forwarded_quoted_strings_cannot_inject_hops() -> None:
    """RFC 7239 values may be quoted strings holding ',' and ';': a proxy that copies the
    client's Host into host="..." must not let the client write a last hop."""
    key = ClientIP(trusted_proxies=["10.0.0.0/8"], header="forwarded")
    assert key("10.0.0.1", [("forwarded", 'for=203.0.113.9;host="a,for=6.6.6.1"')]) == "203.0.113.9"
    assert key("10.0.0.1", [("forwarded", 'host="a;for=6.6.6.2";for=203.0.113.9;proto=https')]) == (
        "203.0.113.9"
    )
    assert key("10.0.0.1", [("forwarded", 'for=203.0.113.9;host="a\\",for=6.6.6.3"')]) == "203.0.113.9"
    assert key("10.0.0.1", [("forwarded", 'for="[2001:db8::7]:8080";proto=https, for=10.0.0.9')]) == (
        "2001:db8::/64"
    )


def test_outage_policy_holds_for_rules_with_several_limits() -> None:
    """With Redis down, a rule with two limits answered from a full-rate in-process table that
    ignored on_redis_error: "deny" admitted, "allow" denied."""
    from hotlimit import hit_many

    port = servers.free_port()  # nothing listens
    for policy, expected in (("deny", False), ("allow", True)):
        url = f"redis://127.0.0.1:{port}/0"
        a = Limiter("1/minute", redis=url, prefix="out:", name="a", on_redis_error=policy)  # type: ignore[arg-type]
        b = Limiter("1/minute", redis=url, prefix="out:", name="b", on_redis_error=policy)  # type: ignore[arg-type]
        results = [all(hit_many([(a, "k"), (b, "k")])) for _ in range(3)]
        assert results == [expected] * 3, (policy, results)
        a.close()
        b.close()


def test_hybrid_and_exact_limits_cannot_share_a_rule(redis_server: object) -> None:
    from hotlimit import hit_many

    url = redis_server.url  # type: ignore[attr-defined]
    exact = Limiter("2/minute", redis=url, prefix="hm:", redis_timeout=2.0)
    hybrid = Limiter("100/minute", redis=url, prefix="hm:", hybrid=True, redis_timeout=2.0)
    with pytest.raises(InvalidArgumentError, match="one place"):
        Rule("/x", [exact, hybrid])
    with pytest.raises(InvalidArgumentError, match="hybrid"):
        hit_many([(exact, "k"), (hybrid, "k")])
    exact.close()
    hybrid.close()


def test_a_denied_hit_many_reports_what_is_really_left() -> None:
    from hotlimit import hit_many

    clock = ManualClock()  # no refill between the calls, however slow the machine
    five, one = Limiter("5/second", clock=clock), Limiter("1/minute", clock=clock)
    assert all(hit_many([(five, "k"), (one, "k")]))
    denied = hit_many([(five, "k"), (one, "k")])
    assert not any(denied)
    assert denied[0].remaining == 4 and denied[0].retry_after == 0, "nothing taken: 4 left, not 3"
    assert denied[0].reset_after == pytest.approx(0.2), "and full again in one interval, not two"
    assert five.peek("k").remaining == 3, "and indeed nothing was taken"


def test_rule_and_middleware_options_are_checked_when_built() -> None:
    lim = Limiter("1/minute")
    for methods in ([b"GET"], [" get "], b"GET", "GET", [None]):
        with pytest.raises(InvalidArgumentError, match="method"):
            Rule("/x", lim, methods=methods)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="path"):
        Rule(re.compile(b"/x"), lim)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="twice"):
        Rule("/x", [lim, Scoped(lim, lambda scope, ip: ip)])
    with pytest.raises(InvalidArgumentError, match="twice"):
        Rule("/x", [lim, lim])
    for style in ("IETF", "bogus", True):
        with pytest.raises(InvalidArgumentError, match="headers"):
            RateLimitMiddleware(_plain_app(), [Rule("/x", lim)], headers=style)  # type: ignore[arg-type]
    assert Rule("/x", lim, methods=["get"]).matches("/x", "HEAD"), "lowercase names are methods too"


def test_policy_names_stay_distinct_and_ascii(redis_server: object) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    lims = [
        Limiter(r, redis=url, prefix="nm:", name=n, redis_timeout=2.0)
        for r, n in (("10/second", "api-2"), ("5/second", "api"), ("1/second", "api"), ("2/second", "t:10"))
    ] + [Limiter("3/second", redis=url, prefix="nm:", name="t/10", redis_timeout=2.0)]
    fields = dict(rate_limit_headers([(lim, lim.peek("k")) for lim in lims]))
    names = [name for name, _ in _sf_list(fields["RateLimit-Policy"])]
    assert len(set(names)) == 5, names
    assert names == [name for name, _ in _sf_list(fields["RateLimit"])]
    for lim in lims:
        lim.close()
