"""WSGI middleware (Flask, Django, any WSGI app), with the same rules, keys and response fields
as :mod:`hotlimit.asgi`; it decides before the app runs, so a denied request's body is never
read."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hotlimit._native import Decision
from hotlimit.asgi import Rule, Scoped, _route_name, default_body, log_denial, match_rule, reset_client
from hotlimit.headers import Style, rate_limit_headers, retry_after_seconds
from hotlimit.keys import ClientIP
from hotlimit.limiter import hit_many
from hotlimit.metrics import Metrics

__all__ = ["RateLimitMiddleware", "Rule", "Scoped"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _headers(environ: Environ) -> list[tuple[str, str]]:
    out = []
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            out.append((k[5:].replace("_", "-").lower(), str(v)))
    return out


class RateLimitMiddleware:
    """Wraps a WSGI app: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, rules)`` (Flask),
    or around Django's ``get_wsgi_application()``. Options as in the ASGI middleware;
    ``skip(environ)`` and ``on_deny(environ, key, decisions)`` take the WSGI environ."""

    def __init__(
        self,
        app: WSGIApp,
        rules: Sequence[Rule],
        *,
        client_ip: ClientIP | None = None,
        exempt: Iterable[str] = (),
        skip: Callable[[Environ], bool] | None = None,
        shadow: bool = False,
        headers: Style | None = "ietf",
        on_deny: Callable[[Environ, str, list[Decision]], object] | None = None,
        body: Callable[[Decision], dict[str, Any]] = default_body,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.rules = list(rules)
        self.client_ip = client_ip or ClientIP()
        self.exempt = tuple(exempt)
        self.skip = skip
        self.shadow = shadow
        self.headers = headers
        self.on_deny = on_deny
        self.body = body
        self.metrics = metrics
        if metrics is not None:
            for rule in self.rules:
                for lim in rule.limiters:
                    metrics.watch(lim)

    def reset(self, key: str) -> int:
        """Admin: forgets one client in every rule."""
        return reset_client(self.rules, key)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.skip is not None and self.skip(environ):
            return self.app(environ, start_response)
        rule = match_rule(
            self.rules, self.exempt, environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        )
        if rule is None:
            return self.app(environ, start_response)
        ip = self.client_ip(environ.get("REMOTE_ADDR"), _headers(environ))
        key = rule.key(environ, ip) if rule.key is not None else ip
        t0 = time.perf_counter()
        pairs = rule.limits_for(environ, key, ip)
        decisions = [pairs[0][0].hit(pairs[0][1])] if len(pairs) == 1 else hit_many(pairs)
        ok = all(decisions)
        if self.metrics is not None:
            self.metrics.record(_route_name(rule), ok, time.perf_counter() - t0)
        if not ok:
            log_denial(rule, key)
            if self.on_deny is not None:
                self.on_deny(environ, key, decisions)
        results = [(lim, d) for (lim, _), d in zip(pairs, decisions, strict=True)]
        extra = [] if self.headers is None else rate_limit_headers(results, self.headers, denied=not ok)
        if ok or self.shadow:
            added = [(k, v) for k, v in extra if k != "Retry-After"]

            def start_with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
                return start_response(status, [*headers, *added], *exc)

            return self.app(environ, start_with_headers)
        worst = max((d for d in decisions if not d.allowed), key=lambda d: d.retry_after)
        payload = json.dumps(self.body(worst)).encode("utf-8")
        if self.headers is None:
            extra = [("Retry-After", str(retry_after_seconds(worst)))]
        start_response(
            "429 Too Many Requests",
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra],
        )
        return [payload]
