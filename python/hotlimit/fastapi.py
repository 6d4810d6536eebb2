"""FastAPI: a rate limit as a dependency, per route or per router.

>>> from fastapi import APIRouter, Depends, FastAPI
>>> from hotlimit import Limiter
>>> from hotlimit.fastapi import RateLimit
>>> app = FastAPI()
>>> @app.get("/search", dependencies=[Depends(RateLimit(Limiter("10/second")))])
... async def search() -> dict[str, str]:
...     return {}
>>> router = APIRouter(dependencies=[Depends(RateLimit(Limiter("1000/hour")))])

An allowed request's response carries the limit's fields (``RateLimit``, ``RateLimit-Policy``)
when the route returns data (FastAPI drops a dependency's headers when a route returns its own
``Response`` object: use the ASGI middleware for those routes); a denied one is an
``HTTPException`` 429 with ``Retry-After`` and the same fields, and the stable body of
:func:`hotlimit.asgi.default_body` as its ``detail``. On a WebSocket route (a router's
dependency covers them too) a denied handshake is refused with close code 1008. The budget
belongs to the Limiter: the same Limiter in two dependencies is one budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import HTTPException, Response, WebSocketException
from starlette.requests import HTTPConnection

from hotlimit.asgi import Gate, KeyFunc, Limit, Rule, default_body
from hotlimit.headers import Style
from hotlimit.keys import ClientIP

__all__ = ["RateLimit"]


class RateLimit:
    """A dependency checking ``limits`` (a Limiter, a Scoped, or a list of them, all-or-nothing)
    for each request, counted under ``key(scope, client_ip)`` (default: the client address,
    read by ``client_ip``, see :class:`hotlimit.keys.ClientIP`)."""

    def __init__(
        self,
        limits: Limit | Sequence[Limit],
        *,
        key: KeyFunc | None = None,
        client_ip: ClientIP | None = None,
        headers: Style | None = "ietf",
        body: Callable[[Any], dict[str, Any]] = default_body,
    ) -> None:
        self.rule = Rule("*", limits, key=key)
        self._gate = Gate(None, [self.rule], client_ip=client_ip, headers=headers, body=body)

    async def __call__(self, connection: HTTPConnection, response: Response) -> None:
        scope = connection.scope
        ip = self._gate.client_ip.from_asgi(scope.get("client"), scope.get("headers", ()))
        verdict = await self._gate.adecide(scope, self.rule, ip)
        if not verdict.passes:
            if scope["type"] == "websocket":
                raise WebSocketException(code=1008, reason="rate limited")
            raise HTTPException(
                status_code=429, detail=json.loads(verdict.body), headers=dict(verdict.headers)
            )
        for name, value in verdict.headers:
            response.headers[name] = value
