"""WSGI middleware (Flask, Django, any WSGI app), with the same rules, keys and response fields
as :mod:`hotlimit.asgi`; it decides before the app runs, so a denied request's body is never
read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from hotlimit.asgi import Gate, Rule, Scoped
from hotlimit.limiter import hit_many

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


class RateLimitMiddleware(Gate):
    """Wraps a WSGI app: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, rules)`` (Flask),
    or around Django's ``get_wsgi_application()``. Options as in :class:`hotlimit.asgi.Gate`;
    ``skip(environ)`` and ``on_deny(environ, key, decisions)`` take the WSGI environ."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        rule = self._rule(environ, environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET"))
        if rule is None:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        started = time.perf_counter()
        key, pairs = self._limits(environ, rule, environ.get("REMOTE_ADDR"), _headers(environ))
        decisions = [pairs[0][0].hit(pairs[0][1])] if len(pairs) == 1 else hit_many(pairs)
        verdict = self._verdict(environ, rule, key, pairs, decisions, started)
        if verdict.passes:

            def start_with_headers(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
                return start_response(status, [*headers, *verdict.headers], *exc)

            return self.app(environ, start_with_headers)  # type: ignore[no-any-return]
        start_response(
            "429 Too Many Requests",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(verdict.body))),
                *verdict.headers,
            ],
        )
        return [verdict.body]
