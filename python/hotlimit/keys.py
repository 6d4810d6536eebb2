"""Client keys for web requests: who is this request from?

The default is the socket peer's address, which a client cannot forge. ``X-Forwarded-For`` and
``Forwarded`` are read only when the peer is one of the configured trusted proxies, and then
right to left: each hop appended by a trusted proxy is skipped, and the first address that is
not a trusted proxy is the client. Anything a client wrote further left is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hotlimit._errors import InvalidArgumentError

__all__ = ["ClientIP", "api_key", "grouped", "hash_secret_key", "user"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR = re.compile(r'for\s*=\s*"?\[?([^\]";,]+)\]?(?::\d+)?"?', re.IGNORECASE)

# One secret per process unless configured: hashes are stable within a process, useless to
# anyone who reads them in a log.
_SECRET = os.urandom(32)


def hash_secret_key(raw: str | bytes, secret: bytes | None = None) -> str:
    """A keyed hash of an API key or token, for use as a limiter key. The raw value is never
    kept; pass the same ``secret`` on every replica so they agree."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return "k:" + hmac.new(secret or _SECRET, data, hashlib.blake2b).hexdigest()[:32]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4 with a port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ClientIP:
    """Finds the client address of a request; call it with the peer address and the headers.

    >>> key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    >>> key("10.1.2.3", [("x-forwarded-for", "6.6.6.6, 203.0.113.9")])
    '203.0.113.9'
    >>> key("198.51.100.7", [("x-forwarded-for", "1.2.3.4")])  # untrusted peer: header ignored
    '198.51.100.7'

    ``ipv6_prefix`` groups IPv6 clients by network (a /64 is usually one subscriber).
    """

    def __init__(self, trusted_proxies: Iterable[str] = (), ipv6_prefix: int | None = 64) -> None:
        nets: list[IPNetwork] = []
        for cidr in trusted_proxies:
            try:
                nets.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise InvalidArgumentError(
                    f"trusted proxy must be an IP address or CIDR, got {cidr!r}"
                ) from None
        if ipv6_prefix is not None and (isinstance(ipv6_prefix, bool) or not 1 <= ipv6_prefix <= 128):
            raise InvalidArgumentError(f"ipv6_prefix must be 1..128 or None, got {ipv6_prefix!r}")
        self._trusted = tuple(nets)
        self._v6 = ipv6_prefix

    def _is_trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self._trusted)

    def _key(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            if self._v6 is not None and self._v6 < 128:
                return str(ipaddress.ip_network(f"{ip}/{self._v6}", strict=False))
        return str(ip)

    def __call__(self, peer: str | None, headers: Sequence[tuple[str, str]]) -> str:
        if peer and not self._trusted and ":" not in peer:
            return peer  # an IPv4 socket peer, written by the server: nothing to parse
        ip = _parse_ip(peer) if peer else None
        if ip is None:
            return peer or "unknown"
        if not self._trusted or not self._is_trusted(ip):
            return self._key(ip)
        hops: list[str] = []
        for name, value in headers:
            lname = name.lower()
            if lname == "x-forwarded-for":
                hops.extend(part for part in value.split(","))
            elif lname == "forwarded":
                hops.extend(m.group(1) for m in _FOR.finditer(value))
        client = ip
        for hop in reversed(hops):
            addr = _parse_ip(hop)
            if addr is None:
                break  # garbage in the chain: stop at the last address we could trust
            client = addr
            if not self._is_trusted(addr):
                break
        return self._key(client)


# -- key functions for rules: each takes (scope or environ, client_ip) and returns a key --------


def _header(request: Any, name: str) -> str | None:
    if "headers" in request:  # ASGI scope
        wanted = name.lower().encode("latin-1")
        for k, v in request["headers"]:
            if k.lower() == wanted:
                return str(v.decode("latin-1"))
        return None
    value = request.get("HTTP_" + name.upper().replace("-", "_"))  # WSGI environ
    return None if value is None else str(value)


def api_key(header: str = "authorization", secret: bytes | None = None) -> Callable[[Any, str], str]:
    """Keys requests by a hash of an API key or token header (the raw value is never kept);
    requests without one fall back to the client IP."""

    def key(request: Any, ip: str) -> str:
        raw = _header(request, header)
        return hash_secret_key(raw, secret) if raw else f"ip:{ip}"

    return key


def user(attribute: str = "identity") -> Callable[[Any, str], str]:
    """Keys requests by the authenticated user (Starlette's ``scope["user"]``, or
    ``REMOTE_USER`` under WSGI); anonymous requests fall back to the client IP."""

    def key(request: Any, ip: str) -> str:
        u = request.get("user")
        if u is not None and getattr(u, "is_authenticated", False):
            return f"user:{getattr(u, attribute, None) or getattr(u, 'display_name', '')}"
        remote = request.get("REMOTE_USER")
        return f"user:{remote}" if remote else f"ip:{ip}"

    return key


def grouped(group: str, inner: Callable[[Any, str], str] | None = None) -> Callable[[Any, str], str]:
    """One budget for a group of routes: rules that share ``group`` (and limiter) share counts."""

    def key(request: Any, ip: str) -> str:
        return f"{group}:{inner(request, ip) if inner is not None else ip}"

    return key
