"""Django: a middleware for ``settings.MIDDLEWARE`` and a view decorator.

Settings (``settings.HOTLIMIT``, a dict)::

    HOTLIMIT = {
        "RULES": [
            Rule("/api/*", Limiter("100/minute")),
            Rule("/login/", Limiter("5/minute"), methods=["POST"]),
        ],
        "CLIENT_IP": ClientIP(trusted_proxies=["10.0.0.0/8"]),  # optional
        "EXEMPT": ["/health/"],  # optional: path globs never limited
        "HEADERS": "ietf",  # or "draft", "x", None
        "SHADOW": False,  # decide and log, never block
    }
    MIDDLEWARE = [..., "hotlimit.django.RateLimitMiddleware", ...]

Views, as django-ratelimit users write them::

    @ratelimit(Limiter("5/minute"))
    def login(request): ...

    @method_decorator(ratelimit(Limiter("5/minute")), name="dispatch")
    class Login(View): ...

Key functions receive the ``HttpRequest`` and the client address; the helpers in
:mod:`hotlimit.keys` (``api_key``, ``user``, ``grouped``) work with it. A denial is a 429 with
the JSON body, ``Retry-After`` and the rate-limit fields, as in the ASGI and WSGI middlewares.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from hotlimit._errors import InvalidArgumentError
from hotlimit.asgi import Gate, KeyFunc, Limit, Rule, Verdict
from hotlimit.headers import Style
from hotlimit.keys import ClientIP

__all__ = ["RateLimitMiddleware", "ratelimit"]


async def _finish(pending: Awaitable[HttpResponse], verdict: Verdict) -> HttpResponse:
    return _with_fields(await pending, verdict)


async def _ready(response: HttpResponse) -> HttpResponse:
    return response


View = TypeVar("View", bound=Callable[..., HttpResponse])


def _denied(verdict: Verdict) -> HttpResponse:
    response = HttpResponse(verdict.body, status=429, content_type="application/json")
    for name, value in verdict.headers:
        response[name] = value
    return response


def _with_fields(response: HttpResponse, verdict: Verdict) -> HttpResponse:
    """Adds the verdict's fields; where a decorator of the view already set them, the two
    lists join (RateLimit and RateLimit-Policy are lists) and the inner Retry-After stays."""
    for name, value in verdict.headers:
        if name not in response:
            response[name] = value
        elif name in _LISTS:
            response[name] = f"{response[name]}, {value}"
    return response


_LISTS = ("RateLimit", "RateLimit-Policy")


class RateLimitMiddleware:
    """Applies the first matching rule of ``settings.HOTLIMIT["RULES"]`` to each request;
    sync or async, as the rest of the middleware chain is."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.gate = _gate_from_settings(getattr(settings, "HOTLIMIT", {}))
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)  # Django then calls it as the async middleware it is

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        rule = self.gate._rule(request, request.path_info, request.method or "GET")
        if rule is None:
            return self.get_response(request)
        verdict = self.gate.decide(request, rule, self.gate.client_ip.from_wsgi(request.META))
        if not verdict.passes:
            return _denied(verdict)
        return _with_fields(self.get_response(request), verdict)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        rule = self.gate._rule(request, request.path_info, request.method or "GET")
        if rule is None:
            return await self.get_response(request)
        verdict = await self.gate.adecide(request, rule, self.gate.client_ip.from_wsgi(request.META))
        if not verdict.passes:
            return _denied(verdict)
        return _with_fields(await self.get_response(request), verdict)


def _gate_from_settings(config: object) -> Gate:
    """A Gate from ``settings.HOTLIMIT``, every key checked: a typo or a wrong type is a
    configuration error at start-up, not a surprise at the first request."""

    def bad(why: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"hotlimit: settings.HOTLIMIT{why}")

    if not isinstance(config, dict):
        raise bad(f" must be a dict, got {type(config).__name__}")
    unknown = set(config) - {"RULES", "CLIENT_IP", "EXEMPT", "HEADERS", "SHADOW"}
    if unknown:
        raise bad(f": unknown keys {sorted(unknown)}")
    rules = config.get("RULES")
    if not isinstance(rules, list | tuple) or not rules or not all(isinstance(r, Rule) for r in rules):
        raise bad(f"['RULES'] must be a list of one or more hotlimit Rule objects, got {rules!r:.100}")
    client_ip = config.get("CLIENT_IP")
    if client_ip is not None and not isinstance(client_ip, ClientIP):
        raise bad(f"['CLIENT_IP'] must be a hotlimit.keys.ClientIP, got {client_ip!r:.100}")
    exempt = config.get("EXEMPT", ())
    if not isinstance(exempt, list | tuple) or not all(isinstance(e, str) for e in exempt):
        raise bad(f"['EXEMPT'] must be a list of path globs, got {exempt!r:.100}")
    shadow = config.get("SHADOW", False)
    if not isinstance(shadow, bool):
        raise bad(f"['SHADOW'] must be True or False, got {shadow!r:.100}")
    try:
        return Gate(
            None,
            rules,
            client_ip=client_ip,
            exempt=exempt,
            headers=config.get("HEADERS", "ietf"),
            shadow=shadow,
        )
    except InvalidArgumentError as e:
        raise bad(f": {e}") from e


def ratelimit(
    limits: Limit | Sequence[Limit],
    *,
    key: KeyFunc | None = None,
    methods: Sequence[str] = (),
    client_ip: ClientIP | None = None,
    headers: Style | None = "ietf",
) -> Callable[[View], View]:
    """A view decorator: ``limits`` for every call of the view (or only for ``methods``)."""
    rule = Rule("*", limits, key=key, methods=methods)
    gate = Gate(None, [rule], client_ip=client_ip, headers=headers)

    def decorate(view: View) -> View:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def alimited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                if not rule.matches("*", request.method or "GET"):
                    return await view(request, *args, **kwargs)
                verdict = await gate.adecide(request, rule, gate.client_ip.from_wsgi(request.META))
                if not verdict.passes:
                    return _denied(verdict)
                return _with_fields(await view(request, *args, **kwargs), verdict)

            return alimited  # type: ignore[return-value]

        @functools.wraps(view)
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not rule.matches("*", request.method or "GET"):
                return view(request, *args, **kwargs)
            verdict = gate.decide(request, rule, gate.client_ip.from_wsgi(request.META))
            if not verdict.passes:
                # An async class-based view's dispatch (through method_decorator) must return
                # an awaitable, the denial included.
                owner = getattr(getattr(view, "func", None), "__self__", None)
                if getattr(owner, "view_is_async", False):
                    return _ready(_denied(verdict))
                return _denied(verdict)
            response = view(request, *args, **kwargs)
            if inspect.isawaitable(response):  # an async class-based view's dispatch
                return _finish(response, verdict)
            return _with_fields(response, verdict)

        return limited  # type: ignore[return-value]

    return decorate
