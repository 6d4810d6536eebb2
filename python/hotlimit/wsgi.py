"""WSGI middleware (Flask, Django, any WSGI app), with the same rules, keys and response fields
as :mod:`hotlimit.asgi`; it decides before the app runs, so a denied request's body is never
read."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hotlimit.asgi import Gate, Rule, Scoped

__all__ = ["RateLimitMiddleware", "Rule", "Scoped"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class RateLimitMiddleware(Gate):
    """Wraps a WSGI app: ``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, rules)`` (Flask),
    or around Django's ``get_wsgi_application()``. Options as in :class:`hotlimit.asgi.Gate`;
    ``skip(environ)`` and ``on_deny(environ, key, decisions)`` take the WSGI environ."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        rule = self._rule(environ, environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET"))
        if rule is None:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        verdict = self.decide(environ, rule, self.client_ip.from_wsgi(environ))
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
