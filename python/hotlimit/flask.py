"""Flask: an extension in the style of Flask-Limiter, so moving over is a short diff.

>>> from flask import Flask
>>> from hotlimit.flask import HotLimit
>>> app = Flask(__name__)
>>> app.config["HOTLIMIT_DEFAULT"] = ["200 per day", "50 per hour"]
>>> limiter = HotLimit(app)
>>> @app.get("/slow")
... @limiter.limit("1 per day")
... def slow() -> str:
...     return "24"
>>> @app.get("/ping")
... @limiter.exempt
... def ping() -> str:
...     return "pong"

Config keys: ``HOTLIMIT_DEFAULT`` (rates or Limiters for every view without its own limit),
``HOTLIMIT_STORAGE`` (a Redis URL: rates given as strings become Redis limiters on it; default
memory), ``HOTLIMIT_TRUSTED_PROXIES`` (CIDRs, ``"unix"``), ``HOTLIMIT_FORWARDED_HEADER``
(default ``X-Forwarded-For``), ``HOTLIMIT_HEADERS`` (``"ietf"``, ``"draft"``, ``"x"`` or None),
``HOTLIMIT_ENABLED`` (False turns every check off). Several limits of a view are checked
all-or-nothing; a denial is a 429 with the JSON body, ``Retry-After`` and the rate-limit fields.
Limits are counted per view (each view its own budget) under ``key(environ, client_ip)``
(default: the client address).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import flask

from hotlimit._errors import InvalidArgumentError
from hotlimit.asgi import Gate, KeyFunc, Rule, Verdict
from hotlimit.keys import ClientIP
from hotlimit.limiter import Limiter

__all__ = ["HotLimit"]

F = TypeVar("F", bound=Callable[..., Any])
LimitSpec = str | Limiter


class HotLimit:
    """The extension: ``HotLimit(app)`` or ``HotLimit()`` then ``init_app(app)``."""

    def __init__(self, app: flask.Flask | None = None, *, key: KeyFunc | None = None) -> None:
        self._key = key
        self._own: dict[Callable[..., Any], list[tuple[str, Sequence[LimitSpec], KeyFunc | None]]] = {}
        self._exempt: set[Callable[..., Any]] = set()
        self._rules: dict[str, Rule | None] = {}
        self._made: dict[tuple[str, str], Limiter] = {}
        self._gate: Gate | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        config = app.config
        self._enabled = bool(config.get("HOTLIMIT_ENABLED", True))
        self._storage = config.get("HOTLIMIT_STORAGE")
        self._default = list(config.get("HOTLIMIT_DEFAULT", ()))
        client_ip = ClientIP(
            trusted_proxies=config.get("HOTLIMIT_TRUSTED_PROXIES", ()),
            header=config.get("HOTLIMIT_FORWARDED_HEADER", "x-forwarded-for"),
        )
        self._gate = Gate(None, [], client_ip=client_ip, headers=config.get("HOTLIMIT_HEADERS", "ietf"))
        for spec in self._default:
            self._limiter(spec, "default")  # bad rates are named now, not at the first request
        app.before_request(self._check)
        app.after_request(self._add_fields)
        app.extensions["hotlimit"] = self

    def limit(self, *limits: LimitSpec, key: KeyFunc | None = None) -> Callable[[F], F]:
        """This view's own limits (instead of the defaults): rate strings or Limiters."""
        if not limits:
            raise InvalidArgumentError("limit() needs one or more rates or Limiters")

        def decorate(view: F) -> F:
            self._own.setdefault(view, []).append((view.__qualname__, limits, key))
            return view

        return decorate

    def exempt(self, view: F) -> F:
        """No limit for this view, not even the defaults."""
        self._exempt.add(view)
        return view

    def _limiter(self, spec: LimitSpec, scope: str) -> Limiter:
        if isinstance(spec, Limiter):
            return spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"a limit is a rate string or a Limiter, got {spec!r}")
        made = self._made.get((scope, spec))
        if made is None:
            # Each view counts in its own namespace, named after it and the rate, so views
            # with the same rate do not share a budget (and replicas agree on the name).
            name = "flask-" + hashlib.blake2b(f"{scope}|{spec}".encode(), digest_size=8).hexdigest()
            if self._storage:
                made = Limiter(spec, redis=self._storage, name=name)
            else:
                made = Limiter(spec, redis=False)
            self._made[(scope, spec)] = made
        return made

    def _rule_for(self, endpoint: str, view: Callable[..., Any]) -> Rule | None:
        if endpoint in self._rules:
            return self._rules[endpoint]
        rule: Rule | None = None
        if view not in self._exempt:
            own = self._own.get(view)
            if own:
                limits = [self._limiter(spec, endpoint) for _, specs, _ in own for spec in specs]
                rule = Rule("*", limits, key=own[0][2] or self._key)
            elif self._default:
                rule = Rule("*", [self._limiter(s, endpoint) for s in self._default], key=self._key)
        self._rules[endpoint] = rule
        return rule

    def _check(self) -> flask.Response | None:
        gate = self._gate
        if not self._enabled or gate is None or flask.request.endpoint is None:
            return None
        view = flask.current_app.view_functions.get(flask.request.endpoint)
        rule = None if view is None else self._rule_for(flask.request.endpoint, view)
        if rule is None:
            return None
        environ = flask.request.environ
        verdict = gate.decide(environ, rule, gate.client_ip.from_wsgi(environ))
        flask.g._hotlimit = verdict
        if verdict.passes:
            return None
        return flask.Response(verdict.body, status=429, headers=verdict.headers, mimetype="application/json")

    def _add_fields(self, response: flask.Response) -> flask.Response:
        verdict: Verdict | None = flask.g.pop("_hotlimit", None)
        if verdict is not None and verdict.passes:
            for name, value in verdict.headers:
                response.headers[name] = value
        return response
