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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from hotlimit.asgi import Gate, KeyFunc, Limit, Rule, Verdict
from hotlimit.headers import Style
from hotlimit.keys import ClientIP

__all__ = ["RateLimitMiddleware", "ratelimit"]

View = TypeVar("View", bound=Callable[..., HttpResponse])


def _denied(verdict: Verdict) -> HttpResponse:
    response = HttpResponse(verdict.body, status=429, content_type="application/json")
    for name, value in verdict.headers:
        response[name] = value
    return response


def _with_fields(response: HttpResponse, verdict: Verdict) -> HttpResponse:
    for name, value in verdict.headers:
        response[name] = value
    return response


class RateLimitMiddleware:
    """Applies the first matching rule of ``settings.HOTLIMIT["RULES"]`` to each request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        config: dict[str, Any] = dict(getattr(settings, "HOTLIMIT", {}))
        rules = config.pop("RULES", None)
        if not rules:
            raise ImproperlyConfigured("hotlimit: settings.HOTLIMIT['RULES'] needs one or more Rule objects")
        unknown = set(config) - {"CLIENT_IP", "EXEMPT", "HEADERS", "SHADOW"}
        if unknown:
            raise ImproperlyConfigured(f"hotlimit: unknown settings.HOTLIMIT keys {sorted(unknown)}")
        self.get_response = get_response
        self.gate = Gate(
            None,
            rules,
            client_ip=config.get("CLIENT_IP"),
            exempt=config.get("EXEMPT", ()),
            headers=config.get("HEADERS", "ietf"),
            shadow=bool(config.get("SHADOW", False)),
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rule = self.gate._rule(request, request.path_info, request.method or "GET")
        if rule is None:
            return self.get_response(request)
        verdict = self.gate.decide(request, rule, self.gate.client_ip.from_wsgi(request.META))
        if not verdict.passes:
            return _denied(verdict)
        return _with_fields(self.get_response(request), verdict)


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
        @functools.wraps(view)
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not rule.matches("*", request.method or "GET"):
                return view(request, *args, **kwargs)
            verdict = gate.decide(request, rule, gate.client_ip.from_wsgi(request.META))
            if not verdict.passes:
                return _denied(verdict)
            return _with_fields(view(request, *args, **kwargs), verdict)

        return limited  # type: ignore[return-value]

    return decorate
