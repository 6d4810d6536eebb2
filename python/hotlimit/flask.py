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
(default: the client address). Like Flask-Limiter, the ``static`` endpoint and ``OPTIONS``
requests are not limited, and views are known by module and name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import flask

from hotlimit._errors import InvalidArgumentError
from hotlimit.asgi import Gate, KeyFunc, Rule, Scoped, Verdict
from hotlimit.keys import ClientIP
from hotlimit.limiter import Limiter
from hotlimit.rate import Rate

__all__ = ["HotLimit"]

F = TypeVar("F", bound=Callable[..., Any])
LimitSpec = str | Limiter


def _name(view: Callable[..., Any]) -> str:
    """A view's identity, as Flask-Limiter has it: module and qualified name, so a view under
    another functools.wraps decorator (login_required) is still the view that was limited."""
    return f"{view.__module__}.{view.__qualname__}"


@dataclass
class _AppState:
    """What one app's config made: each app its own limiters, rules and settings."""

    gate: Gate
    enabled: bool
    storage: str | None
    default: list[LimitSpec]
    rules: dict[str, Rule | None] = field(default_factory=dict)
    made: dict[tuple[str, int, str], Limiter] = field(default_factory=dict)


class HotLimit:
    """The extension: ``HotLimit(app)``, or ``HotLimit()`` then ``init_app(app)`` for each app
    (app factories: every app keeps its own settings and counts)."""

    def __init__(self, app: flask.Flask | None = None, *, key: KeyFunc | None = None) -> None:
        self._key = key
        # Decorators are app-independent: a view's own limits, by the view's name.
        self._own: dict[str, list[tuple[Sequence[LimitSpec], KeyFunc | None]]] = {}
        self._exempt: set[str] = set()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        config = app.config
        default = config.get("HOTLIMIT_DEFAULT", ())
        if isinstance(default, str | Limiter):
            default = [default]
        client_ip = ClientIP(
            trusted_proxies=config.get("HOTLIMIT_TRUSTED_PROXIES", ()),
            header=config.get("HOTLIMIT_FORWARDED_HEADER", "x-forwarded-for"),
        )
        state = _AppState(
            gate=Gate(None, [], client_ip=client_ip, headers=config.get("HOTLIMIT_HEADERS", "ietf")),
            enabled=bool(config.get("HOTLIMIT_ENABLED", True)),
            storage=config.get("HOTLIMIT_STORAGE"),
            default=list(default),
        )
        for spec in state.default:  # bad rates are named now, not at the first request
            self._limiter(state, spec, "default", 0)
        app.extensions["hotlimit"] = state
        app.before_request(self._check)
        app.after_request(self._add_fields)

    def limit(self, *limits: LimitSpec, key: KeyFunc | None = None) -> Callable[[F], F]:
        """This view's own limits (instead of the defaults): rate strings or Limiters, counted
        under ``key(environ, client_ip)`` (default: the client address). Stacked decorators
        each count under their own key; all of a view's limits are checked all-or-nothing."""
        if not limits:
            raise InvalidArgumentError("limit() needs one or more rates or Limiters")
        for spec in limits:
            if isinstance(spec, str):
                Rate.parse(spec)  # a bad rate is named at import, not at the first request
            elif not isinstance(spec, Limiter):
                raise InvalidArgumentError(f"a limit is a rate string or a Limiter, got {spec!r}")

        def decorate(view: F) -> F:
            self._own.setdefault(_name(view), []).append((limits, key))
            return view

        return decorate

    def exempt(self, view: F) -> F:
        """No limit for this view, not even the defaults."""
        self._exempt.add(_name(view))
        return view

    def _limiter(self, state: _AppState, spec: LimitSpec, scope: str, i: int) -> Limiter:
        if isinstance(spec, Limiter):
            return spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"a limit is a rate string or a Limiter, got {spec!r}")
        made = state.made.get((scope, i, spec))
        if made is None:
            # Each view (and each of its limits) counts in its own namespace, named after it
            # and the rate, so views with one rate do not share a budget, and replicas agree.
            name = "flask-" + hashlib.blake2b(f"{scope}|{i}|{spec}".encode(), digest_size=8).hexdigest()
            if state.storage:
                made = Limiter(spec, redis=state.storage, name=name)
            else:
                made = Limiter(spec, redis=False)
            state.made[(scope, i, spec)] = made
        return made

    def _rule_for(self, state: _AppState, endpoint: str, view: Callable[..., Any]) -> Rule | None:
        if endpoint in state.rules:
            return state.rules[endpoint]
        name = _name(view)
        rule: Rule | None = None
        if name not in self._exempt and endpoint != "static":
            own = self._own.get(name)
            if own:
                limits: list[Limiter | Scoped] = []
                for i, (specs, key) in enumerate(own):
                    for j, spec in enumerate(specs):
                        lim = self._limiter(state, spec, name, 100 * i + j)
                        chosen = key or self._key
                        limits.append(Scoped(lim, chosen) if chosen is not None else lim)
                rule = Rule("*", limits)
            elif state.default:
                made = [self._limiter(state, s, name, j) for j, s in enumerate(state.default)]
                rule = Rule("*", made, key=self._key)
        state.rules[endpoint] = rule
        return rule

    def _check(self) -> flask.Response | None:
        state: _AppState = flask.current_app.extensions["hotlimit"]
        request = flask.request
        if not state.enabled or request.endpoint is None or request.method == "OPTIONS":
            return None
        view = flask.current_app.view_functions.get(request.endpoint)
        rule = None if view is None else self._rule_for(state, request.endpoint, view)
        if rule is None:
            return None
        environ = request.environ
        verdict = state.gate.decide(environ, rule, state.gate.client_ip.from_wsgi(environ))
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
