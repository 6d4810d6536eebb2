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
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hotlimit._errors import InvalidArgumentError
from hotlimit._native import Decision
from hotlimit.headers import Style, ietf_fields_raw, rate_limit_headers, retry_after_seconds
from hotlimit.keys import ClientIP, hash_secret_key
from hotlimit.limiter import Limiter, ahit_many, check_one_backend, hit_many
from hotlimit.metrics import Metrics

__all__ = [
    "Gate",
    "RateLimitMiddleware",
    "Rule",
    "Scoped",
    "Verdict",
    "default_body",
    "log_denial",
    "match_rule",
    "reset_client",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope, str], str]


class Scoped(NamedTuple):
    """A limit of a rule counted under its own key: ``Scoped(per_tenant, key=lambda scope, ip:
    tenant_of(scope))`` next to a per-user limit, both checked all-or-nothing."""

    limiter: Limiter
    key: KeyFunc


Limit = Limiter | Scoped


@dataclass
class Rule:
    """Limits for requests whose path matches ``path`` (a glob like ``/api/*``, or a compiled
    regex) and whose method is in ``methods`` (all when empty; ``HEAD`` counts as ``GET``
    unless ``head_as_get=False``). Several limits are checked together, all-or-nothing, so they
    must share a backend (all in memory, or one Redis store): a rule that mixes them is refused
    when it is built. ``key(scope, client_ip)`` picks the client key (default: the IP)."""

    path: str | re.Pattern[str]
    limits: Limit | Sequence[Limit] = ()
    methods: Iterable[str] = ()
    key: KeyFunc | None = None
    #: Tiers: ``choose(scope, client_key)`` returns the limit(s) for this request (free / pro).
    choose: Callable[[Scope, str], Limit | Sequence[Limit]] | None = None
    #: A HEAD request is a GET without the body: a GET rule limits it too.
    head_as_get: bool = True
    _methods: frozenset[str] = field(init=False, repr=False)
    _limits: tuple[Limit, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.methods, str | bytes):
            raise InvalidArgumentError(f"methods must be a list of HTTP methods, got {self.methods!r}")
        for m in self.methods:
            if not isinstance(m, str) or not _METHOD.fullmatch(m):
                raise InvalidArgumentError(f"an HTTP method is a token like 'GET', got {m!r}")
        if isinstance(self.path, re.Pattern):
            if not isinstance(self.path.pattern, str):
                raise InvalidArgumentError(f"a rule's path regex must be a str pattern, got {self.path!r}")
        elif not isinstance(self.path, str):
            raise InvalidArgumentError(
                f"a rule's path is a glob string or a compiled regex, got {self.path!r}"
            )
        methods = {m.upper() for m in self.methods}
        if self.head_as_get and "GET" in methods:
            methods.add("HEAD")
        self._methods = frozenset(methods)
        self._limits = ()
        self.single: Limiter | None = None
        if self.choose is None or self.limits:
            self.set_limits(self.limits)

    def set_limits(self, limits: Limit | Sequence[Limit]) -> None:
        """Replaces the rule's limits at run time (requests in flight finish on the old ones)."""
        new = _as_limits(limits)
        if not new:
            raise InvalidArgumentError(f"a rule needs one or more Limiter objects, got {limits!r}")
        self._limits = new
        only = new[0]
        #: The one limit of a rule that has one, counted under the client key (no tiers).
        self.single = only if len(new) == 1 and isinstance(only, Limiter) and self.choose is None else None

    def limits_for(self, scope: Scope, key: str, ip: str) -> list[tuple[Limiter, str]]:
        """Each limit of this request with the key it is counted under."""
        limits = self._limits if self.choose is None else _as_limits(self.choose(scope, key))
        return [(x, key) if isinstance(x, Limiter) else (x.limiter, x.key(scope, ip)) for x in limits]

    @property
    def limiters(self) -> list[Limiter]:
        return [x if isinstance(x, Limiter) else x.limiter for x in self._limits]

    def matches(self, path: str, method: str) -> bool:
        if self._methods and method.upper() not in self._methods:
            return False
        if isinstance(self.path, re.Pattern):
            return self.path.fullmatch(path) is not None
        return fnmatch.fnmatchcase(path, self.path)


def _as_limits(limits: Limit | Sequence[Limit]) -> tuple[Limit, ...]:
    new = (limits,) if isinstance(limits, Limiter | Scoped) else tuple(limits)
    for x in new:
        if not isinstance(x, Limiter | Scoped) or not isinstance(
            x if isinstance(x, Limiter) else x.limiter, Limiter
        ):
            raise InvalidArgumentError(f"a rule's limits are Limiter or Scoped objects, got {x!r}")
    limiters = [x if isinstance(x, Limiter) else x.limiter for x in new]
    check_one_backend(limiters)
    if len({id(lim) for lim in limiters}) != len(limiters):
        # Under one key the two costs would add up; under two (Scoped) the keys of different
        # kinds would share one namespace, where a user "acme" and a tenant "acme" collide.
        raise InvalidArgumentError(
            "a rule lists the same Limiter twice: give each limit its own Limiter (with its own "
            "name=, if they share a rate and a Redis store)"
        )
    return new


_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STYLES = ("ietf", "draft", "x", None)


_log = logging.getLogger("hotlimit")


def log_denial(rule: Rule, key: str) -> None:
    """Logs a denial with a hash of the client key, never the key itself."""
    if _log.isEnabledFor(logging.INFO):
        _log.info("rate limited: route=%s client=%s", _route_name(rule), hash_secret_key(key))


def reset_client(rules: Sequence[Rule], key: str) -> int:
    """Admin: forgets ``key`` in every static limit of ``rules``; returns how many had it."""
    return sum(bool(lim.reset(key)) for rule in rules for lim in rule.limiters)


def _route_name(rule: Rule) -> str:
    return rule.path.pattern if isinstance(rule.path, re.Pattern) else rule.path


def match_rule(rules: Sequence[Rule], exempt: Sequence[str], path: str, method: str) -> Rule | None:
    """The first rule for this request, or None (no rule, or an exempt path)."""
    if any(fnmatch.fnmatchcase(path, e) for e in exempt):
        return None
    return next((r for r in rules if r.matches(path, method)), None)


def default_body(d: Decision) -> dict[str, Any]:
    return {"error": "rate_limited", "detail": "Too many requests", "retry_after": retry_after_seconds(d)}


class Verdict(NamedTuple):
    """What a middleware does with a request once its limits are checked."""

    passes: bool  # allowed, or shadow mode: hand it to the app
    headers: list[tuple[str, str]]  # fields for the app's response, or for the 429
    body: bytes  # the 429's JSON (empty when the request passes)


class Gate:
    """Everything the ASGI and WSGI middlewares share: the options, rule matching, client keys,
    the decision, metrics, logs and hooks, and the response fields. Subclasses do the I/O.

    ``exempt``: path globs never limited (health checks). ``skip(request)``: a predicate that
    exempts a request. ``shadow=True``: decide and report (``on_deny``) but never block.
    ``headers``: ``"ietf"`` (default), ``"draft"`` (``RateLimit-Limit/-Remaining/-Reset``),
    ``"x"`` (``X-RateLimit-*``) or ``None``. ``body(decision)``: the JSON of a 429.
    ``request`` is the ASGI scope or the WSGI environ.
    """

    def __init__(
        self,
        app: Any,
        rules: Sequence[Rule],
        *,
        client_ip: ClientIP | None = None,
        exempt: Iterable[str] = (),
        skip: Callable[[Any], bool] | None = None,
        shadow: bool = False,
        headers: Style | None = "ietf",
        on_deny: Callable[[Any, str, list[Decision]], object] | None = None,
        body: Callable[[Decision], dict[str, Any]] = default_body,
        metrics: Metrics | None = None,
    ) -> None:
        if headers not in _STYLES:
            raise InvalidArgumentError(f"headers must be 'ietf', 'draft', 'x' or None, got {headers!r}")
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
        self.allowed = 0
        self.denied = 0
        self._routes: dict[tuple[str, str], Rule | None] = {}
        #: Nothing but the decision and the IETF fields to do for an allowed request.
        self._plain = metrics is None and headers == "ietf"

    def reset(self, key: str) -> int:
        """Admin: forgets one client (its key as the rules compute it) in every rule."""
        return reset_client(self.rules, key)

    def _rule(self, request: Any, path: str, method: str) -> Rule | None:
        if self.skip is not None and self.skip(request):
            return None
        # Matching depends only on the path and the method (the rules are fixed once the
        # middleware is built; set_limits changes limits, not matching): remembered, so a
        # request pays one dict lookup instead of a glob per exempt path and rule. Bounded: a
        # flood of distinct paths only empties it now and then.
        route = (path, method)
        try:
            return self._routes[route]
        except KeyError:
            pass
        rule = match_rule(self.rules, self.exempt, path, method)
        if len(self._routes) >= _ROUTE_CACHE:
            self._routes.clear()
        self._routes[route] = rule
        return rule

    def decide(self, request: Any, rule: Rule, ip: str) -> Verdict:
        """The verdict on one request under ``rule``, for client address ``ip`` (sync: WSGI,
        Django, Flask). ``request`` is what key functions receive."""
        started = time.perf_counter() if self.metrics is not None else 0.0
        key = rule.key(request, ip) if rule.key is not None else ip
        pairs = rule.limits_for(request, key, ip)
        decisions = [pairs[0][0].hit(pairs[0][1])] if len(pairs) == 1 else hit_many(pairs)
        return self._verdict(request, rule, key, pairs, decisions, started)

    async def adecide(self, request: Any, rule: Rule, ip: str) -> Verdict:
        """:meth:`decide` for asyncio code (ASGI, FastAPI)."""
        started = time.perf_counter() if self.metrics is not None else 0.0
        key = rule.key(request, ip) if rule.key is not None else ip
        pairs = rule.limits_for(request, key, ip)
        decisions = [await pairs[0][0].ahit(pairs[0][1])] if len(pairs) == 1 else await ahit_many(pairs)
        return self._verdict(request, rule, key, pairs, decisions, started)

    def _verdict(
        self,
        request: Any,
        rule: Rule,
        key: str,
        pairs: list[tuple[Limiter, str]],
        decisions: list[Decision],
        started: float,
    ) -> Verdict:
        ok = all(decisions)
        if self.metrics is not None:
            self.metrics.record(_route_name(rule), ok, time.perf_counter() - started)
        results = [(lim, d) for (lim, _), d in zip(pairs, decisions, strict=True)]
        if ok:
            self.allowed += 1
            extra = [] if self.headers is None else rate_limit_headers(results, self.headers)
            return Verdict(True, extra, b"")
        self.denied += 1
        log_denial(rule, key)
        if self.on_deny is not None:
            self.on_deny(request, key, decisions)
        extra = [] if self.headers is None else rate_limit_headers(results, self.headers, denied=True)
        if self.shadow:
            return Verdict(True, [(k, v) for k, v in extra if k != "Retry-After"], b"")
        worst = max((d for d in decisions if not d.allowed), key=lambda d: d.retry_after)
        if self.headers is None:
            extra = [("Retry-After", str(retry_after_seconds(worst)))]
        return Verdict(False, extra, json.dumps(self.body(worst)).encode("utf-8"))


_ROUTE_CACHE = 4096

# ASGI header names are lower-case bytes; the few hotlimit writes, encoded once.
_NAMES: dict[str, bytes] = {}


def _encoded(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in fields:
        raw = _NAMES.get(name)
        if raw is None:
            raw = _NAMES[name] = name.lower().encode("latin-1")
        out.append((raw, value.encode("latin-1")))
    return out


def _adding(fields: list[tuple[bytes, bytes]], send: Send) -> Send:
    """``send`` with ``fields`` added to the response's headers."""

    async def send_with_fields(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *fields]}
        await send(message)

    return send_with_fields


class RateLimitMiddleware(Gate):
    """Applies the first matching rule to each HTTP request and WebSocket handshake (options:
    see :class:`Gate`). A handshake is a GET: a rule for GET (or for every method) limits the
    connections to its path; a denied one is refused with a 429 where the server supports the
    WebSocket denial response, else closed before it is accepted (code 1008)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        rule = self._rule(scope, scope.get("path", ""), scope.get("method", "GET"))
        if rule is None:
            await self.app(scope, receive, send)
            return
        ip = self.client_ip.from_asgi(scope.get("client"), scope.get("headers", ()))
        single = rule.single
        if single is not None and self._plain and rule.key is None:
            # The common rule and answer: one limit under the client address, allowed.
            d = await single.ahit(ip)
            if d.allowed:
                self.allowed += 1
                await self.app(scope, receive, _adding(ietf_fields_raw(single, d), send))
                return
            verdict = self._verdict(scope, rule, ip, [(single, ip)], [d], 0.0)
        else:
            verdict = await self.adecide(scope, rule, ip)
        encoded = _encoded(verdict.headers)
        if verdict.passes:
            await self.app(scope, receive, _adding(encoded, send) if encoded else send)
            return
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(verdict.body)).encode()),
            *encoded,
        ]
        await send({"type": "http.response.start", "status": 429, "headers": response_headers})
        await send({"type": "http.response.body", "body": verdict.body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self._rule(scope, scope.get("path", ""), "GET")
        if rule is None:
            await self.app(scope, receive, send)
            return
        ip = self.client_ip.from_asgi(scope.get("client"), scope.get("headers", ()))
        verdict = await self.adecide(scope, rule, ip)
        if verdict.passes:
            await self.app(scope, receive, send)
            return
        message = await receive()  # the handshake: websocket.connect
        if message.get("type") != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            encoded = _encoded(verdict.headers)
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), *encoded],
                }
            )
            await send({"type": "websocket.http.response.body", "body": verdict.body})
            return
        await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
