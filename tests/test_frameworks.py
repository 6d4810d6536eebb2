"""Each framework's own idiom, against the real framework: a FastAPI dependency, a Django
middleware and view decorator, a Flask extension, and WebSocket handshakes in the ASGI
middleware."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import WebSocket  # at module level: FastAPI resolves the endpoints' annotations here

from hotlimit import InvalidRateError, Limiter, ManualClock
from hotlimit.asgi import RateLimitMiddleware, Rule

# -- FastAPI ----------------------------------------------------------------------------------


def test_fastapi_dependency_per_route_and_per_router() -> None:
    import httpx
    from fastapi import APIRouter, Depends, FastAPI

    from hotlimit.fastapi import RateLimit

    clock = ManualClock()
    app = FastAPI()

    @app.get("/search", dependencies=[Depends(RateLimit(Limiter("2/minute", clock=clock)))])
    async def search() -> dict[str, str]:
        return {"ok": "search"}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"ok": "free"}

    router = APIRouter(prefix="/admin", dependencies=[Depends(RateLimit(Limiter("1/minute", clock=clock)))])

    @router.get("/a")
    async def a() -> dict[str, str]:
        return {"ok": "a"}

    @router.get("/b")
    async def b() -> dict[str, str]:
        return {"ok": "b"}

    app.include_router(router)
    loop = asyncio.new_event_loop()

    class Client:  # in process, through httpx's ASGI transport, one event loop
        def get(self, path: str) -> httpx.Response:
            async def go() -> httpx.Response:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    return await c.get(path)

            return loop.run_until_complete(go())

    client = Client()
    try:
        first = client.get("/search")
        assert first.status_code == 200 and first.json() == {"ok": "search"}
        assert "ratelimit" in first.headers and "ratelimit-policy" in first.headers
        assert client.get("/search").status_code == 200
        denied = client.get("/search")
        assert denied.status_code == 429
        assert denied.headers["retry-after"] == "30" and "ratelimit" in denied.headers
        assert denied.json()["detail"]["error"] == "rate_limited"
        assert all(client.get("/free").status_code == 200 for _ in range(5)), "no dependency, no limit"
        # One dependency object on the router: one budget for all its routes.
        assert [client.get("/admin/a").status_code, client.get("/admin/b").status_code] == [200, 429]
    finally:
        loop.close()


# -- Django -----------------------------------------------------------------------------------


def _django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="t", MIDDLEWARE=[]
        )
        django.setup()


def _views() -> Any:
    from django.http import HttpResponse
    from django.utils.decorators import method_decorator
    from django.views import View

    from hotlimit.django import ratelimit

    clock = ManualClock()

    @ratelimit(Limiter("2/minute", clock=clock))
    def login(request: Any) -> HttpResponse:
        return HttpResponse("login ok")

    @method_decorator(ratelimit(Limiter("1/minute", clock=clock), methods=["POST"]), name="dispatch")
    class Upload(View):
        def get(self, request: Any) -> HttpResponse:
            return HttpResponse("form")

        def post(self, request: Any) -> HttpResponse:
            return HttpResponse("stored")

    def open_view(request: Any) -> HttpResponse:
        return HttpResponse("open")

    return login, Upload.as_view(), open_view


urlpatterns: list[Any] = []


def _urls() -> list[Any]:
    from django.urls import path

    login, upload, open_view = _views()
    return [
        path("login/", login),
        path("upload/", upload),
        path("api/items/", open_view),
        path("health/", open_view),
    ]


def test_django_view_decorator_function_and_class_based() -> None:
    _django()
    from django.test import Client, override_settings

    urlpatterns[:] = _urls()
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[]):
        client = Client(REMOTE_ADDR="192.0.2.20")
        codes = [client.get("/login/").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        denied = client.get("/login/")
        assert denied["Retry-After"] == "30" and denied.json()["error"] == "rate_limited"
        assert Client(REMOTE_ADDR="192.0.2.21").get("/login/").status_code == 200, "per client"
        assert [client.post("/upload/").status_code for _ in range(2)] == [200, 429]
        assert all(client.get("/upload/").status_code == 200 for _ in range(3)), "GET is not limited"


def test_django_middleware_from_settings() -> None:
    _django()
    from django.core.exceptions import ImproperlyConfigured
    from django.test import Client, override_settings

    from hotlimit.keys import ClientIP

    urlpatterns[:] = _urls()
    config = {
        "RULES": [Rule("/api/*", Limiter("2/minute", clock=ManualClock()))],
        "CLIENT_IP": ClientIP(trusted_proxies=["10.0.0.0/8"]),
        "EXEMPT": ["/health/"],
    }
    middleware = ["hotlimit.django.RateLimitMiddleware"]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware, HOTLIMIT=config):
        proxy = Client(REMOTE_ADDR="10.0.0.1")
        one = {"HTTP_X_FORWARDED_FOR": "203.0.113.1"}
        codes = [proxy.get("/api/items/", **one).status_code for _ in range(3)]  # type: ignore[arg-type]
        assert codes == [200, 200, 429]
        ok = proxy.get("/api/items/", HTTP_X_FORWARDED_FOR="203.0.113.2")
        assert ok.status_code == 200 and "RateLimit-Policy" in ok, "another client behind the proxy"
        assert all(proxy.get("/health/").status_code == 200 for _ in range(4))
    empty = override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware, HOTLIMIT={})
    with empty, pytest.raises(ImproperlyConfigured, match="RULES"):
        Client().get("/api/items/")
    typo = override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware, HOTLIMIT={**config, "RULE": []})
    with typo, pytest.raises(ImproperlyConfigured, match="RULE"):
        Client().get("/api/items/")


# -- Flask ------------------------------------------------------------------------------------


def test_flask_extension_like_flask_limiter() -> None:
    import flask

    from hotlimit.flask import HotLimit

    app = flask.Flask("t")
    app.config["HOTLIMIT_DEFAULT"] = ["3 per minute"]
    app.config["HOTLIMIT_TRUSTED_PROXIES"] = ["127.0.0.1"]
    limiter = HotLimit()

    @app.get("/slow")
    @limiter.limit("1 per day")
    def slow() -> str:
        return "24"

    @app.get("/other")
    @limiter.limit("1 per day")
    def other() -> str:
        return "own budget"

    @app.get("/ping")
    @limiter.exempt
    def ping() -> str:
        return "pong"

    @app.get("/default")
    def default() -> str:
        return "d"

    limiter.init_app(app)
    client = app.test_client()
    first = client.get("/slow")
    assert first.status_code == 200 and "RateLimit" in first.headers
    denied = client.get("/slow")
    assert denied.status_code == 429 and denied.get_json()["error"] == "rate_limited"
    assert int(denied.headers["Retry-After"]) > 3600
    assert client.get("/other").status_code == 200, "each view its own budget"
    assert all(client.get("/ping").status_code == 200 for _ in range(5))
    assert [client.get("/default").status_code for _ in range(4)] == [200, 200, 200, 429]
    behind = client.get("/slow", headers={"X-Forwarded-For": "203.0.113.7"})
    assert behind.status_code == 200, "a client behind the trusted proxy has its own key"

    off = flask.Flask("off")
    off.config["HOTLIMIT_ENABLED"] = False
    HotLimit(off)
    off.add_url_rule("/x", "x", lambda: "x")
    assert all(off.test_client().get("/x").status_code == 200 for _ in range(3))

    bad = flask.Flask("bad")
    bad.config["HOTLIMIT_DEFAULT"] = ["lots per minute"]
    with pytest.raises(InvalidRateError, match="lots per minute"):
        HotLimit(bad)


# -- WebSocket handshakes ---------------------------------------------------------------------


def _handshake(
    app: Any, client: tuple[str, int], extensions: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "raw_path": b"/ws",
        "query_string": b"", "headers": [(b"host", b"test")], "client": client, "server": None,
        "subprotocols": [], "extensions": extensions or {},
    }  # fmt: skip
    inbox = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


async def _echo_app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000})


def test_websocket_handshakes_are_limited_per_client() -> None:
    app = RateLimitMiddleware(
        _echo_app, [Rule("/ws", Limiter("2/minute", clock=ManualClock()), methods=["GET"])]
    )
    peer = ("198.51.100.9", 4000)
    first, second, third = (_handshake(app, peer) for _ in range(3))
    assert first[0]["type"] == "websocket.accept" and second[0]["type"] == "websocket.accept"
    assert third == [{"type": "websocket.close", "code": 1008, "reason": "rate limited"}], (
        "refused, not accepted"
    )
    assert _handshake(app, ("198.51.100.10", 4000))[0]["type"] == "websocket.accept", "per client"
    # With the denial-response extension, a real 429 with Retry-After.
    denial = _handshake(app, peer, {"websocket.http.response": {}})
    assert denial[0]["type"] == "websocket.http.response.start" and denial[0]["status"] == 429
    assert (b"retry-after", b"30") in denial[0]["headers"]
    assert denial[1]["type"] == "websocket.http.response.body"
    other_path = RateLimitMiddleware(_echo_app, [Rule("/api/*", Limiter("1/minute"))])
    assert all(_handshake(other_path, peer)[0]["type"] == "websocket.accept" for _ in range(3))


# -- what an adversarial pass over the integrations found -------------------------------------


def test_django_decorator_on_async_views() -> None:
    _django()
    from django.http import HttpResponse
    from django.test import AsyncClient, override_settings
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View

    from hotlimit.django import ratelimit

    clock = ManualClock()

    @ratelimit(Limiter("1/minute", clock=clock))
    async def aview(request: Any) -> HttpResponse:
        return HttpResponse("async ok")

    @method_decorator(ratelimit(Limiter("1/minute", clock=clock)), name="dispatch")
    class AsyncCBV(View):
        async def get(self, request: Any) -> HttpResponse:
            return HttpResponse("async cbv")

    urlpatterns[:] = [path("a/", aview), path("cbv/", AsyncCBV.as_view())]

    async def main() -> list[int]:
        client = AsyncClient(REMOTE_ADDR="192.0.2.30")
        codes = []
        for url in ("/a/", "/a/", "/cbv/", "/cbv/"):
            response = await client.get(url)
            codes.append(response.status_code)
            if response.status_code == 200:
                assert "RateLimit" in response
        return codes

    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[]):
        assert asyncio.run(main()) == [200, 429, 200, 429]


def test_django_middleware_and_decorator_fields_join() -> None:
    _django()
    from django.http import HttpResponse
    from django.test import Client, override_settings
    from django.urls import path

    from hotlimit.django import ratelimit

    clock = ManualClock()

    @ratelimit(Limiter("1/minute", clock=clock))
    def tight(request: Any) -> HttpResponse:
        return HttpResponse("t")

    urlpatterns[:] = [path("api/tight/", tight)]
    config = {"RULES": [Rule("/api/*", Limiter("100/minute", clock=clock))]}
    with override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=["hotlimit.django.RateLimitMiddleware"], HOTLIMIT=config
    ):
        client = Client(REMOTE_ADDR="192.0.2.31")
        ok = client.get("/api/tight/")
        assert ok.status_code == 200 and ok["RateLimit-Policy"].count(";q=") == 2, ok["RateLimit-Policy"]
        denied = client.get("/api/tight/")
        assert denied.status_code == 429
        assert "r=0" in denied["RateLimit"] and denied["RateLimit-Policy"].count(";q=") == 2


def test_django_settings_are_checked_at_start_up() -> None:
    _django()
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from hotlimit.django import RateLimitMiddleware

    rule = Rule("/api/*", Limiter("1/minute"))
    for config in (
        {"RULES": rule},
        {"RULES": ["/api/*"]},
        {"RULES": [rule], "CLIENT_IP": "10.0.0.0/8"},
        {"RULES": [rule], "EXEMPT": "/health/"},
        {"RULES": [rule], "SHADOW": "false"},
        {"RULES": [rule], "HEADERS": "IETF"},
        [rule],
    ):
        with override_settings(HOTLIMIT=config), pytest.raises(ImproperlyConfigured, match="HOTLIMIT"):
            RateLimitMiddleware(lambda request: None)  # type: ignore[arg-type, return-value]


def test_fastapi_dependency_covers_websocket_routes() -> None:
    from fastapi import APIRouter, Depends, FastAPI

    from hotlimit.fastapi import RateLimit

    app = FastAPI()
    router = APIRouter(dependencies=[Depends(RateLimit(Limiter("2/minute", clock=ManualClock())))])

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    app.include_router(router)
    peer = ("198.51.100.40", 1)
    sent = [_handshake(app, peer) for _ in range(3)]
    kinds = [s[0]["type"] for s in sent]
    assert kinds == ["websocket.accept", "websocket.accept", "websocket.close"], sent
    assert _handshake(app, peer)[0].get("code") == 1008


def test_flask_app_factories_keep_their_own_settings_and_counts() -> None:
    import flask

    from hotlimit.flask import HotLimit

    limiter = HotLimit()

    def create(default: str, headers: str) -> flask.Flask:
        app = flask.Flask("factory")
        app.config["HOTLIMIT_DEFAULT"] = default  # one rate as a plain string is fine too
        app.config["HOTLIMIT_HEADERS"] = headers
        app.add_url_rule("/x", "x", lambda: "x")
        limiter.init_app(app)
        return app

    a, b = create("2 per day", "ietf"), create("3 per day", "x")
    ca, cb = a.test_client(), b.test_client()
    assert [ca.get("/x").status_code for _ in range(3)] == [200, 200, 429]
    assert [cb.get("/x").status_code for _ in range(4)] == [200, 200, 200, 429], "B counts on its own"
    assert "X-RateLimit-Limit" in cb.get("/x").headers and "RateLimit" in ca.get("/x").headers
    off = flask.Flask("off")
    off.config["HOTLIMIT_ENABLED"] = False
    off.add_url_rule("/x", "x", lambda: "x")
    limiter.init_app(off)
    assert ca.get("/x").status_code == 429, "a third app's settings do not switch A off"


def test_flask_decorators_by_name_stacked_and_checked_early() -> None:
    import functools

    import flask

    from hotlimit.flask import HotLimit

    app = flask.Flask("t")
    limiter = HotLimit(app)

    def login_required(view: Any) -> Any:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return wrapper

    @app.get("/w")
    @login_required
    @limiter.limit("1 per day")
    def wrapped_view() -> str:
        return "w"

    @app.get("/stack")
    @limiter.limit("10 per minute", key=lambda environ, ip: "everyone")
    @limiter.limit("10 per minute")
    @limiter.limit("1 per day", key=lambda environ, ip: "everyone-daily")
    def stacked() -> str:
        return "s"

    client = app.test_client()
    assert [client.get("/w").status_code for _ in range(2)] == [200, 429], "found under its wrapper"
    assert client.get("/stack").status_code == 200, "two limits of one rate: each its own"
    other = client.get(
        "/stack", headers={"X-Forwarded-For": "1.2.3.4"}, environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    assert other.status_code == 429, "the daily limit counts under its own key: everyone"
    with pytest.raises(InvalidRateError, match="fortnight"):
        limiter.limit("1 per fortnight")
    static = flask.Flask("s", static_folder=None)
    HotLimit(static).init_app(static)
    assert static.test_client().options("/w").status_code in (200, 404)
