"""Client keys for web requests: who is this request from?

The default is the socket peer's address, which a client cannot forge. A forwarding header is
read only when the peer is one of the configured trusted proxies, and only the one header the
operator names (``X-Forwarded-For`` by default, or ``Forwarded``, or a single-address header
such as ``X-Real-IP``): a proxy appends to one header, so a client's own copy of any other
header would pass through it untouched. That header is read right to left: each hop appended by
a trusted proxy is skipped, and the first address that is not a trusted proxy is the client.
Anything a client wrote further left is ignored.

A proxy on a Unix socket has no peer address; name it ``"unix"`` in ``trusted_proxies`` to read
its header. A request with no peer address and no trusted Unix proxy is keyed ``"unknown"``
(one shared bucket), and hotlimit logs that at WARNING once per :class:`ClientIP`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hotlimit._errors import InvalidArgumentError

__all__ = ["ClientIP", "api_key", "grouped", "hash_secret_key", "user"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_log = logging.getLogger("hotlimit")

# One secret per process unless configured: hashes are stable within a process, useless to
# anyone who reads them in a log.
_SECRET = os.urandom(32)


def hash_secret_key(raw: str | bytes, secret: bytes | None = None) -> str:
    """A keyed hash of an API key or token, for use as a limiter key. The raw value is never
    kept; pass the same ``secret`` on every replica so they agree."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return "k:" + hmac.new(secret or _SECRET, data, hashlib.blake2b).hexdigest()[:32]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a peer or a hop gives it: with or without a port, brackets or quotes; an
    IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) is the IPv4 address it maps, so
    trust and keys see one form; a zone id (``%eth0``) names an interface, not a client."""
    text = text.strip().strip('"')
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4 with a port
        text = text.split(":", 1)[0]
    text = text.partition("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _rfc7239_split(value: str, sep: str) -> list[str]:
    """Splits a Forwarded value on ``sep`` outside quoted strings (RFC 7239 section 4: a
    quoted ``host="a,for=6.6.6.6"`` is one parameter value, not a hop)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in value:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts


def _for_of(element: str) -> str:
    """The ``for=`` value of one Forwarded element ("" if it has none)."""
    for pair in _rfc7239_split(element, ";"):
        name, eq, value = pair.partition("=")
        if eq and name.strip().lower() == "for":
            return value.strip()
    return ""


class ClientIP:
    """Finds the client address of a request; call it with the peer address and the headers.

    >>> key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    >>> key("10.1.2.3", [("x-forwarded-for", "6.6.6.6, 203.0.113.9")])
    '203.0.113.9'
    >>> key("198.51.100.7", [("x-forwarded-for", "1.2.3.4")])  # untrusted peer: header ignored
    '198.51.100.7'
    >>> key("10.1.2.3", [("forwarded", "for=6.6.6.6")])  # not the header named: ignored
    '10.1.2.3'

    ``header``: the one forwarding header the trusted proxies write (``"x-forwarded-for"``,
    ``"forwarded"``, or any header holding addresses, e.g. ``"x-real-ip"``); every other is
    ignored. ``trusted_proxies``: CIDRs or addresses, and ``"unix"`` for a proxy on a Unix socket
    (a request without a peer address). ``ipv6_prefix`` groups IPv6 clients by network (a /64
    is usually one subscriber).
    """

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        ipv6_prefix: int | None = 64,
        header: str = "x-forwarded-for",
    ) -> None:
        if isinstance(trusted_proxies, str):
            raise InvalidArgumentError(
                f"trusted_proxies must be a list of CIDRs, got the string {trusted_proxies!r}"
            )
        nets: list[IPNetwork] = []
        unix = False
        for cidr in trusted_proxies:
            if cidr == "unix":
                unix = True
                continue
            try:
                nets.append(ipaddress.ip_network(cidr, strict=False))
            except (ValueError, TypeError):
                raise InvalidArgumentError(
                    f"trusted proxy must be an IP address, a CIDR or 'unix', got {cidr!r}"
                ) from None
        if ipv6_prefix is not None and (
            isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128
        ):
            raise InvalidArgumentError(f"ipv6_prefix must be 1..128 or None, got {ipv6_prefix!r}")
        if not isinstance(header, str) or not _TOKEN.fullmatch(header):
            raise InvalidArgumentError(f"header must be one HTTP header name, got {header!r}")
        self._trusted = tuple(nets)
        self._unix = unix
        self._v6 = ipv6_prefix
        self._header = header.lower()
        self._header_raw = self._header.encode("latin-1")
        self._environ_key = "HTTP_" + self._header.upper().replace("-", "_")
        self._rfc7239 = self._header == "forwarded"
        self._warned = False

    def _is_trusted(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self._trusted)

    def _key(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if isinstance(ip, ipaddress.IPv6Address) and self._v6 is not None and self._v6 < 128:
            return str(ipaddress.ip_network(f"{ip}/{self._v6}", strict=False))
        return str(ip)

    def _hops(self, headers: Sequence[tuple[str, str]]) -> list[str]:
        """The named header's addresses, left to right (repeated fields are one list)."""
        hops: list[str] = []
        for name, value in headers:
            if name.lower() != self._header:
                continue
            if self._rfc7239:
                # One element per hop; an element without for= still is a hop (unknown).
                hops.extend(_for_of(element) for element in _rfc7239_split(value, ","))
            else:
                hops.extend(value.split(","))
        return hops

    def _unknown(self) -> str:
        if not self._warned:
            self._warned = True
            _log.warning(
                "hotlimit: a request came with no client address (no peer address, as behind a "
                "proxy on a Unix socket, and no %s header from a trusted proxy): every such "
                "request shares the key 'unknown'. Behind a Unix-socket proxy, pass "
                "ClientIP(trusted_proxies=['unix'], header=...) naming the header it writes.",
                self._header,
            )
        return "unknown"

    def from_asgi(self, client: Sequence[Any] | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client of an ASGI request (``scope["client"]``, ``scope["headers"]``): only
        the named header is decoded, and only when a proxy is trusted."""
        peer = client[0] if client else None
        if peer and not self._trusted and ":" not in peer:
            return str(peer)  # an IPv4 socket peer: the common case, nothing to parse
        found = []
        if self._trusted or self._unix:
            wanted = self._header_raw
            found = [(self._header, v.decode("latin-1")) for k, v in headers if k.lower() == wanted]
        return self(peer, found)

    def from_wsgi(self, environ: Mapping[str, Any]) -> str:
        """The client of a WSGI request (``REMOTE_ADDR`` and the named header)."""
        peer = environ.get("REMOTE_ADDR") or None
        if peer and not self._trusted and ":" not in peer:
            return str(peer)
        value = environ.get(self._environ_key)
        return self(peer, [] if value is None else [(self._header, str(value))])

    def __call__(self, peer: str | None, headers: Sequence[tuple[str, str]]) -> str:
        if peer and not self._trusted and ":" not in peer:
            return peer  # an IPv4 socket peer, written by the server: nothing to parse
        ip = _parse_ip(peer) if peer else None
        if ip is None:
            if peer:
                return peer  # not an address (a server-specific peer name): its own bucket
            if not self._unix:
                return self._unknown()
        elif not self._trusted or not self._is_trusted(ip):
            return self._key(ip)
        client = ip
        for hop in reversed(self._hops(headers)):
            addr = _parse_ip(hop)
            if addr is None:
                break  # garbage in the chain: stop at the last address we could trust
            client = addr
            if not self._is_trusted(addr):
                break
        if client is None:
            return self._unknown()
        return self._key(client)


# -- key functions for rules: each takes (scope or environ, client_ip) and returns a key --------


def _header(request: Any, name: str) -> str | None:
    meta = getattr(request, "META", None)  # a Django HttpRequest: its META is an environ
    if meta is not None:
        request = meta
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
        meta = getattr(request, "META", None)  # a Django HttpRequest
        u = request.get("user") if meta is None else getattr(request, "user", None)
        if u is not None and getattr(u, "is_authenticated", False):
            name = (
                getattr(u, attribute, None)
                or getattr(u, "display_name", "")
                or getattr(u, "get_username", str)()
            )
            return f"user:{name}"
        remote = (request if meta is None else meta).get("REMOTE_USER")
        return f"user:{remote}" if remote else f"ip:{ip}"

    return key


def grouped(group: str, inner: Callable[[Any, str], str] | None = None) -> Callable[[Any, str], str]:
    """One budget for a group of routes: rules that share ``group`` (and limiter) share counts."""

    def key(request: Any, ip: str) -> str:
        return f"{group}:{inner(request, ip) if inner is not None else ip}"

    return key
