"""The Limiter: one rate, applied per key."""

from __future__ import annotations

import asyncio
import math
from typing import Literal

from hotlimit import _native
from hotlimit._errors import InvalidArgumentError, InvalidRateError
from hotlimit._native import Decision, ManualClock
from hotlimit.rate import Rate

__all__ = ["Algorithm", "Key", "Limiter"]

Algorithm = Literal["token_bucket", "sliding_window", "fixed_window", "sliding_log"]
Key = str | bytes

_HOT = ("hit", "peek", "allow", "reset", "acquire")


class Limiter:
    """Applies one rate to each key separately.

    >>> limiter = Limiter("2/second")
    >>> [bool(limiter.hit("user:42")) for _ in range(3)]
    [True, True, False]

    Algorithms:

    * ``token_bucket`` (default): GCRA; ``burst`` requests at once, then one every
      ``period / limit``.
    * ``sliding_window``: the previous window's count weighted by its overlap, plus the current's.
    * ``fixed_window``: a counter per clock-aligned window.
    * ``sliding_log``: the exact count in the last ``period`` (limits up to 10,000).

    Memory: keys whose state is back to a fresh key's are dropped by a native background
    thread every ``sweep_interval`` seconds. At most ``max_keys`` keys are tracked: a new key
    arriving when the table is full first reclaims idle keys of its shard; if there are none,
    it is denied (``on_full="deny"``, the default, with ``retry_after = sweep_interval``) or
    allowed without being tracked (``on_full="allow"``). A tracked key is never evicted.
    """

    def __init__(
        self,
        rate: Rate | str,
        *,
        algorithm: Algorithm = "token_bucket",
        burst: int | None = None,
        max_keys: int = 1_000_000,
        on_full: Literal["deny", "allow"] = "deny",
        sweep_interval: float = 1.0,
        clock: ManualClock | None = None,
        shards: int | None = None,
    ) -> None:
        rate = Rate.coerce(rate)
        if burst is not None:
            if rate.burst is not None and rate.burst != burst:
                raise InvalidRateError(f"burst={burst} conflicts with the rate's own burst ({rate})")
            rate = rate.with_burst(burst)
        for name, value in (("max_keys", max_keys), ("shards", shards)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
        if clock is not None and not isinstance(clock, ManualClock):
            raise InvalidArgumentError(f"clock must be a hotlimit.ManualClock or None, got {clock!r}")
        self.rate = rate
        self._clock = clock
        self._native = _native.NativeLimiter(
            algorithm=algorithm,
            limit=rate.limit,
            period_ns=rate.period_ns,
            burst=rate.burst,
            max_keys=max_keys,
            shards=shards,
            clock=clock,
            on_full=on_full,
            sweep_interval=sweep_interval,
        )
        # The hot calls go straight to the native methods: no Python frame in between.
        cls = type(self)
        for name in _HOT:
            if getattr(cls, name) is getattr(Limiter, name):
                self.__dict__[name] = getattr(self._native, name)

    # -- synchronous API (these bodies run only in subclasses that override nothing) --------

    def hit(self, key: Key, cost: int = 1) -> Decision:
        """Consumes ``cost`` units for ``key`` if available. Never raises for a denial."""
        return self._native.hit(key, cost)

    def peek(self, key: Key, cost: int = 1) -> Decision:
        """What ``hit`` would answer now, consuming nothing."""
        return self._native.peek(key, cost)

    def allow(self, key: Key, cost: int = 1) -> bool:
        """``hit(key, cost).allowed``, without building a Decision (the fastest call)."""
        return self._native.allow(key, cost)

    def reset(self, key: Key) -> bool:
        """Forgets ``key``; True if it was tracked."""
        return self._native.reset(key)

    def acquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> Decision:
        """Waits until ``cost`` units are available and consumes them.

        With ``timeout`` (seconds), returns the denial as soon as the wait would exceed it.
        Other threads run while this one waits.
        """
        return self._native.acquire(key, cost, timeout)

    # -- asyncio twins ----------------------------------------------------------------------

    async def ahit(self, key: Key, cost: int = 1) -> Decision:
        """Async ``hit``."""
        return self.hit(key, cost)

    async def apeek(self, key: Key, cost: int = 1) -> Decision:
        """Async ``peek``."""
        return self.peek(key, cost)

    async def aallow(self, key: Key, cost: int = 1) -> bool:
        """Async ``allow``."""
        return self.allow(key, cost)

    async def areset(self, key: Key) -> bool:
        """Async ``reset``."""
        return self.reset(key)

    async def aacquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> Decision:
        """Async ``acquire``: waits with ``asyncio.sleep``, so the event loop keeps running."""
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise InvalidArgumentError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else self._native.now() + timeout
        while True:
            d = self.hit(key, cost)
            if d.allowed:
                return d
            wait = max(d.retry_after, 1e-6)
            if deadline is not None and self._native.now() + wait > deadline:
                return d
            if self._clock is not None:
                self._clock.advance(wait)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(wait)

    # -- inspection -------------------------------------------------------------------------

    @property
    def algorithm(self) -> str:
        return self._native.algorithm

    @property
    def capacity(self) -> int:
        """The most one request may cost."""
        return self._native.capacity

    @property
    def max_keys(self) -> int:
        return self._native.max_keys

    def __len__(self) -> int:
        """Keys currently tracked."""
        return len(self._native)

    def sweep(self) -> int:
        """Drops idle keys now (the background thread does it every ``sweep_interval``)."""
        return self._native.sweep()

    def stats(self) -> dict[str, int]:
        """``keys``, ``max_keys`` and ``full_events`` (requests that met a full table)."""
        return self._native.stats()

    def close(self) -> None:
        """Releases resources (nothing to release in memory mode; the sweeper forgets the
        limiter once it is garbage-collected)."""

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> Limiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Limiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Limiter({str(self.rate)!r}, algorithm={self.algorithm!r})"
