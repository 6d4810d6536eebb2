"""ASGI middleware (Starlette, FastAPI, any ASGI app): decides before the app runs, so a
denied request's body is never read.

>>> from hotlimit import Limiter
>>> from hotlimit.asgi import RateLimitMiddleware, Rule
>>> app = RateLimitMiddleware(lambda scope, receive, send: None,
...                           rules=[Rule("/api/*", Limiter("100/minute"))])
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotlimit._errors import InvalidArgumentError
from hotlimit._native import Decision
from hotlimit.headers import Style, rate_limit_headers, retry_after_seconds
from hotlimit.keys import ClientIP
from hotlimit.limiter import Limiter, ahit_many
from hotlimit.metrics import Metrics

__all__ = ["RateLimitMiddleware", "Rule", "default_body", "match_rule"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope, str], str]


@dataclass
class Rule:
    """Limits for requests whose path matches ``path`` (a glob like ``/api/*``, or a compiled
    regex) and whose method is in ``methods`` (all when empty). Several limits are checked
    together, all-or-nothing. ``key(scope, client_ip)`` picks the client key (default: the IP)."""

    path: str | re.Pattern[str]
    limits: Limiter | Sequence[Limiter]
    methods: Iterable[str] = ()
    key: KeyFunc | None = None
    _methods: frozenset[str] = field(init=False, repr=False)
    _limits: tuple[Limiter, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._methods = frozenset(m.upper() for m in self.methods)
        self._limits = (self.limits,) if isinstance(self.limits, Limiter) else tuple(self.limits)
        if not self._limits or not all(isinstance(x, Limiter) for x in self._limits):
            raise InvalidArgumentError(f"a rule needs one or more Limiter objects, got {self.limits!r}")

    def matches(self, path: str, method: str) -> bool:
        if self._methods and method.upper() not in self._methods:
            return False
        if isinstance(self.path, re.Pattern):
            return self.path.fullmatch(path) is not None
        return fnmatch.fnmatchcase(path, self.path)


def _route_name(rule: Rule) -> str:
    return rule.path.pattern if isinstance(rule.path, re.Pattern) else rule.path


def match_rule(rules: Sequence[Rule], exempt: Sequence[str], path: str, method: str) -> Rule | None:
    """The first rule for this request, or None (no rule, or an exempt path)."""
    if any(fnmatch.fnmatchcase(path, e) for e in exempt):
        return None
    return next((r for r in rules if r.matches(path, method)), None)


def default_body(d: Decision) -> dict[str, Any]:
    return {"error": "rate_limited", "detail": "Too many requests", "retry_after": retry_after_seconds(d)}


class RateLimitMiddleware:
    """Applies the first matching rule to each HTTP request.

    ``exempt``: path globs never limited (health checks). ``skip(scope)``: a predicate that
    exempts a request. ``shadow=True``: decide and report (``on_deny``) but never block.
    ``headers``: ``"ietf"`` (default), ``"draft"`` (``RateLimit-Limit/-Remaining/-Reset``),
    ``"x"`` (``X-RateLimit-*``) or ``None``. ``body(decision)``: the JSON of a 429.
    """

    def __init__(
        self,
        app: ASGIApp,
        rules: Sequence[Rule],
        *,
        client_ip: ClientIP | None = None,
        exempt: Iterable[str] = (),
        skip: Callable[[Scope], bool] | None = None,
        shadow: bool = False,
        headers: Style | None = "ietf",
        on_deny: Callable[[Scope, str, list[Decision]], object] | None = None,
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
                for lim in rule._limits:
                    metrics.watch(lim)
        self.allowed = 0
        self.denied = 0

    def _rule(self, scope: Scope) -> Rule | None:
        if self.skip is not None and self.skip(scope):
            return None
        return match_rule(self.rules, self.exempt, scope.get("path", ""), scope.get("method", "GET"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope)
        if rule is None:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        ip = self.client_ip(peer[0] if peer else None, raw)
        key = rule.key(scope, ip) if rule.key is not None else ip
        t0 = time.perf_counter()
        decisions = await ahit_many([(lim, key) for lim in rule._limits])
        results = list(zip(rule._limits, decisions, strict=True))
        ok = all(decisions)
        if self.metrics is not None:
            self.metrics.record(_route_name(rule), ok, time.perf_counter() - t0)
        if not ok:
            self.denied += 1
            if self.on_deny is not None:
                self.on_deny(scope, key, decisions)
        else:
            self.allowed += 1
        extra = [] if self.headers is None else rate_limit_headers(results, self.headers, denied=not ok)
        if ok or self.shadow:
            encoded = [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra if k != "Retry-After"
            ]

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start" and encoded:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), *encoded]
                await send(message)

            await self.app(scope, receive, send_with_headers)
            return
        worst = max((d for d in decisions if not d.allowed), key=lambda d: d.retry_after)
        payload = json.dumps(self.body(worst)).encode("utf-8")
        if self.headers is None:
            extra = [("Retry-After", str(retry_after_seconds(worst)))]
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra],
        ]
        await send({"type": "http.response.start", "status": 429, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
