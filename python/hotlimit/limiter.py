"""The Limiter: one rate, applied per key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from hotlimit import _check, _native
from hotlimit._errors import (
    ArgumentTypeError,
    CostTypeError,
    InvalidArgumentError,
    InvalidCostError,
    InvalidRateError,
    StorageError,
)
from hotlimit._native import Decision, ManualClock
from hotlimit.rate import MAX_PERIOD_NS, Rate, _positive_int
from hotlimit.redis.keys import check_name, escape

if TYPE_CHECKING:
    from hotlimit.redis.store import RedisStore

__all__ = ["ALGORITHMS", "Algorithm", "Key", "Limiter", "ahit_many", "check_one_backend", "hit_many"]

#: The algorithms' names, from the native registry (the default first).
ALGORITHMS: tuple[str, ...] = tuple(a.name for a in _native.ALGORITHMS)
#: The same names for type checkers; a test keeps the two equal.
Algorithm = Literal["token_bucket", "sliding_window", "fixed_window", "sliding_log"]
Key = str | bytes

_HOT = ("hit", "peek", "allow", "reset", "acquire")
_SPECS = {a.name: a for a in _native.ALGORITHMS}
_NS = 1_000_000_000
#: Keys a hybrid flush sends at most (the rest wait for the next flush): bounds how long one
#: flush holds the GIL draining the local table, however many keys are active.
FLUSH_KEYS = 16_384
#: How long the server keeps the id of a call of pending units: a call whose reply was lost
#: and that is sent again within this time is not applied twice.
ONCE_TTL_MS = 600_000
_log = logging.getLogger("hotlimit")
#: One op of the Redis script (lua/main.lua): mode, algorithm code, five doubles.
_OP = struct.Struct("<cc5d")

# Limiters built from the same URL (and timeout, and test clock) share one store, so their
# calls coalesce into the same script calls and hit_many can span them.
_stores: weakref.WeakValueDictionary[tuple[object, ...], RedisStore] = weakref.WeakValueDictionary()
_stores_lock = threading.Lock()


def _store_for(target: object, timeout: float, clock: ManualClock | None) -> RedisStore:
    # Every module the Redis path imports later from inside functions, imported now: a
    # module's first import in one thread while another forks leaves the child waiting on
    # that module's import lock forever.
    from hotlimit.redis.store import RedisStore

    ident = (target if isinstance(target, str) else id(target), timeout, id(clock))
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = RedisStore(target, timeout=timeout, clock=clock)
        return store


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

    Redis mode (``redis=URL`` or a redis-py client, or the ``REDIS_URL`` environment variable
    when ``redis`` is not given): every replica shares one exact limit. Each decision is one
    script call using the server's clock; concurrent calls coalesce into shared script calls.
    Keys are ``{prefix}{name}:{<client key>}`` with a TTL; ``name`` defaults to one derived
    from the algorithm and rate, so limiters with the same policy share state. A key denied
    until some time is answered locally until then (``deny_cache=False`` switches that off;
    a ``reset`` from another process is then seen only after the cached time). A Redis
    failure raises :class:`~hotlimit.StorageError`.
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
        redis: object = None,
        redis_timeout: float = 0.05,
        prefix: str = "hotlimit:",
        name: str | None = None,
        deny_cache: bool = True,
        hybrid: bool | None = None,
        sync_interval: float = 0.02,
        on_redis_error: Literal["fallback", "allow", "deny"] = "fallback",
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        # Every argument is checked here, before anything that depends on the mode: a bad one
        # raises the same error in memory, Redis and hybrid mode (the Redis options too, so
        # that a bad one fails alike with or without REDIS_URL).
        rate = Rate.coerce(rate)
        if burst is not None:
            burst = _positive_int("burst", burst)
            if rate.burst is not None and rate.burst != burst:
                raise InvalidRateError(f"burst={burst} conflicts with the rate's own burst ({rate})")
            rate = rate.with_burst(burst)
        _check.choice("algorithm", algorithm, ALGORITHMS)
        _check.integer("max_keys", max_keys, 1, 2**64 - 1, "2**64 - 1")
        _check.choice("on_full", on_full, ("deny", "allow"))
        _check.seconds("sweep_interval", sweep_interval, 0.001, 86_400, "[0.001, 86400]")
        if clock is not None and not isinstance(clock, ManualClock):
            raise _check.wrong_type("clock", "a hotlimit.ManualClock or None", clock)
        if shards is not None:
            if isinstance(shards, bool) or not isinstance(shards, int):
                raise _check.wrong_type("shards", "an int or None", shards)
            if not 1 <= shards <= 65_536 or shards & (shards - 1):
                raise InvalidArgumentError(
                    f"shards must be a power of two from 1 to 65536, got {_check.shown(shards)}"
                )
        _check.seconds("redis_timeout", redis_timeout, 0, 60, "(0, 60]", lo_open=True)
        check_name("prefix", prefix)
        if name is not None:
            check_name("name", name)
        _check.flag("deny_cache", deny_cache)
        _check.flag("hybrid", hybrid, none=True)
        _check.seconds("sync_interval", sync_interval, 0.001, 60, "[0.001, 60]")
        _check.choice("on_redis_error", on_redis_error, ("fallback", "allow", "deny"))
        if on_error is not None and not callable(on_error):
            raise _check.wrong_type("on_error", "callable or None", on_error)
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
        self._store: RedisStore | None = None
        if redis is None:
            redis = os.environ.get("REDIS_URL") or None
        self._hybrid = False
        if redis is not None and redis is not False:
            if hybrid is None:
                hybrid = os.environ.get("HOTLIMIT_MODE", "").strip().lower() == "hybrid"
            self._init_redis(redis, redis_timeout, prefix, name, deny_cache)
            self._init_failure(on_redis_error, on_error, bool(hybrid), sync_interval)
            return
        if hybrid:
            raise InvalidArgumentError("hybrid=True needs redis= (a URL or a client), or REDIS_URL")
        # The hot calls go straight to the native methods: no Python frame in between.
        cls = type(self)
        for hot in _HOT:
            if getattr(cls, hot) is getattr(Limiter, hot):
                self.__dict__[hot] = getattr(self._native, hot)
        self._bind_async(self._native)

    def _init_redis(self, target: object, timeout: float, prefix: str, name: str | None, deny: bool) -> None:
        rate = self.rate
        algorithm = self.algorithm
        spec = _SPECS[algorithm]
        code = spec.code
        period_ms = rate.period_ns // 1_000_000
        if name is None:
            name = f"{code}{rate.limit}/{period_ms}ms"
            if spec.burst and rate.burst not in (None, rate.limit):
                name += f"/b{rate.burst}"
        self.name = name
        self.prefix = prefix
        self._key_head = f"{prefix}{name}:{{"
        emission = -(-rate.period_ns // rate.limit)
        capacity = self.capacity * emission if spec.burst else 0
        # One op of the script (see lua/main.lua) is one argument: the mode, then what the script
        # needs of this limiter, then the cost. Those of cost 1 are made once.
        self._op_head = (code.encode(), rate.limit, period_ms, emission, capacity)
        from hotlimit.redis.store import resp

        self._resp = resp
        self._ops = {mode: self._op_bytes(mode, 1) for mode in "hpr"}
        self._frags = {mode: resp([op]) for mode, op in self._ops.items()}
        self._store = _store_for(target, timeout, self._clock)

        # Cached denials are answered natively; everything else comes back here. The front
        # refers back to this limiter (a cycle the garbage collector can see through it), so
        # `hit = Limiter(...).hit` keeps working, as in memory mode.
        def miss(mode: str) -> Any:
            def call(key: Key, cost: object) -> Decision:
                return self._redis_hit(key, cost, mode)

            return call

        self._front = _native.DenyFront(
            limit=rate.limit,
            capacity=self.capacity,
            miss_hit=miss("h"),
            miss_peek=miss("p"),
            enabled=deny,
            clock=self._clock,
        )
        cls = type(self)
        for hot in ("hit", "peek", "allow"):
            if getattr(cls, hot) is getattr(Limiter, hot):
                self.__dict__[hot] = getattr(self._front, hot)

    def _init_failure(
        self,
        on_redis_error: str,
        on_error: Callable[[BaseException], object] | None,
        hybrid: bool,
        sync_interval: float,
    ) -> None:
        self._on_redis_error = on_redis_error
        self._constant = _Constant(self, allowed=on_redis_error == "allow")  # "allow" / "deny"
        self._on_error = on_error
        self._sync_interval = float(sync_interval)
        # The first sync one interval after the start, as every later one (at 0, the keeper
        # synced at its next tick, whatever the interval: a test of the fold raced it).
        self._next_flush = time.monotonic() + self._sync_interval
        self._pending: dict[Key, int] = {}
        #: Script calls of pending units whose reply did not arrive (a timeout, a dropped
        #: connection): sent again as they were, id included, before anything else, so the
        #: server applies each once (see _send_pending_locked).
        self._unsettled: list[_Chunk] = []
        #: Per cluster slot, ids of calls whose reply arrived: deleted by the next call there.
        self._settled: dict[int, list[str]] = {}
        self._lost_reported = 0
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time: never send a delta twice
        self._fallback_lock = threading.Lock()
        self._released = False  # closed, and not used since (see _unbind_until_used)
        self._reopen_lock = threading.Lock()
        self._fallback: _native.NativeLimiter | None = None
        self._local: _native.NativeLimiter | None = None
        self._local_n = 0
        #: Local limiters replaced when the replica count changed, whose unsent consumption
        #: the next flushes drain (see _rebuild_local).
        self._retired_locals: list[_native.NativeLimiter] = []
        assert self._store is not None
        if hybrid:
            if not _SPECS[self.algorithm].shareable:
                raise InvalidArgumentError(
                    f"hybrid mode cannot share {self.algorithm} between replicas: use "
                    f"sliding_window, or redis mode for {self.algorithm}"
                )
            if not self._store.can_sync():
                raise InvalidArgumentError(
                    "hybrid mode needs a URL or a sync redis client for its background flusher"
                )
            self._hybrid = True
            try:
                # Its own prefix too: the first hybrid limiter of a store is not registered
                # yet, and its first share was the whole limit until the keeper's heartbeat.
                self._store.heartbeat(also=self.prefix)
            except StorageError as e:
                self._store.trip(e)
            self._rebuild_local(self._store.replicas.get(self.prefix, 1))
        self._store.register(self)
        if self._store.breaker.is_open and not self._hybrid:
            self._on_breaker_open()

    def _scaled(self, n: int, track: bool) -> _native.NativeLimiter:
        """A local limiter for this replica's share (1/n) of the rate."""
        rate = self.rate
        limit = max(1, rate.limit // n)
        burst = None
        if _SPECS[self.algorithm].burst:
            # A share of the burst refills at a share of the rate: with integer shares the
            # refill can take longer than the whole bucket's did, past the 100-day bound that
            # the native core refuses (which, in an outage, would trip the breaker for every
            # limiter of the store). Kept within it.
            emission = -(-rate.period_ns // limit)
            burst = max(1, min(self.capacity // n, MAX_PERIOD_NS // emission))
        return _native.NativeLimiter(
            algorithm=self.algorithm,
            limit=limit,
            period_ns=rate.period_ns,
            burst=burst,
            max_keys=self.max_keys,
            clock=self._clock,
            track=track,
            max_cost=self.capacity,  # a cost the whole limit allows is denied, not an error
        )

    def _bind(self, target: object) -> None:
        """Points the instance's decision methods straight at ``target`` (no Python frame in
        between); ``reset`` and ``acquire`` stay the class's, which know about Redis. Not while
        the limiter is closed: its next use goes through the class's methods, which register
        it again (a breaker closing, or a hybrid share changing, while a closed limiter's
        backlog drained bound it, and it was then released with its methods still bound)."""
        if self._released:
            return
        cls = type(self)
        for hot in ("hit", "peek", "allow"):
            if getattr(cls, hot) is getattr(Limiter, hot):
                self.__dict__[hot] = getattr(target, hot)
        if isinstance(target, _native.NativeLimiter | _Constant):
            self._bind_async(target)
        else:  # the deny cache in front of Redis: a miss awaits the server (the class's methods)
            for hot in ("ahit", "apeek", "aallow"):
                self.__dict__.pop(hot, None)

    def _bind_async(self, target: Any) -> None:
        """Async twins for a target that decides in process without waiting (memory mode,
        hybrid, an outage): one small coroutine each, around the native call, instead of the
        class's methods that look up the mode first (605 ns against 127 for ``hit``)."""
        cls = type(self)
        hit, peek, allow = target.hit, target.peek, target.allow

        async def ahit(key: Key, cost: int = 1) -> Decision:
            return hit(key, cost)  # type: ignore[no-any-return]

        async def apeek(key: Key, cost: int = 1) -> Decision:
            return peek(key, cost)  # type: ignore[no-any-return]

        async def aallow(key: Key, cost: int = 1) -> bool:
            return allow(key, cost)  # type: ignore[no-any-return]

        for name, fn in (("ahit", ahit), ("apeek", apeek), ("aallow", aallow)):
            if getattr(cls, name) is getattr(Limiter, name):
                self.__dict__[name] = fn

    def _rebuild_local(self, n: int) -> None:
        """Hybrid: a local limiter for 1/n of the rate; its unsent consumption moves over."""
        old = self._local
        self._local = self._scaled(n, track=True)
        self._local_n = n
        self._bind(self._local)
        if old is not None:
            # Its unsent consumption (up to max_keys keys) is drained by the next flushes in
            # bounded steps, as the current one's is; all at once here held the GIL for as
            # long as a million keys took.
            self._retired_locals.append(old)

    def _collect(self, native: _native.NativeLimiter | None, limit: int | None = None) -> int:
        """Moves (at most ``limit`` keys of) a tracking native limiter's consumption into
        ``_pending``, where it waits to be sent; returns how many keys it moved."""
        if native is None:
            return 0
        drained = native.drain(limit)
        if drained:
            with self._pending_lock:
                for key, units in drained:
                    self._pending[key] = self._pending.get(key, 0) + units
        return len(drained)

    def _report(self, error: BaseException) -> None:
        if self._on_error is not None:
            # A failing callback must not break decisions.
            with contextlib.suppress(Exception):
                self._on_error(error)

    def _on_breaker_open(self) -> None:
        if self._hybrid:
            return  # decisions are local already; flushes wait for the breaker to close
        if self._on_redis_error == "fallback":
            # One fallback table per limiter, made once and kept across outages: the thread
            # that trips the breaker and the callers that meet it open race to get here, and a
            # second, fresh table would forget what the first admitted (a key in an outage got
            # more than its share, and the first table's units never reached Redis).
            with self._fallback_lock:
                if self._fallback is None:
                    n = self._store.replicas.get(self.prefix, 1) if self._store is not None else 1
                    self._fallback = self._scaled(n, track=True)
                self._bind(self._fallback)
        else:
            self._bind(self._constant)

    def _on_breaker_close(self) -> None:
        if not self._hybrid:
            self._bind(self._front)

    def _outage(self, key: Key, cost: int, mode: str) -> Decision:
        """The decision while Redis is unreachable."""
        if self._on_redis_error == "fallback":
            fb = self._fallback
            if fb is None:
                self._on_breaker_open()
                fb = self._fallback
            assert fb is not None
            return fb.hit(key, cost) if mode == "h" else fb.peek(key, cost)
        return self._constant.hit(key, cost)

    def _send_pending(self) -> list[tuple[Key, int, int]]:
        with self._flush_lock:
            return self._send_pending_locked()

    def _send_pending_locked(self) -> list[tuple[Key, int, int]]:
        """Adds each pending key's units to Redis whatever the limit says; returns
        ``(key, units, units left)`` for each. Raises StorageError.

        Each script call's units count once. A call carries an id, which the script sets
        (for ONCE_TTL_MS) as it applies the units; a call whose reply is lost stays in
        ``_unsettled`` and is sent again first, unchanged, so if the server had applied it,
        the id is found and nothing is added twice. Only when the resend comes more than
        ONCE_TTL_MS later can it count twice (too many, never too few). Ids of calls whose
        reply arrived are deleted by the next call to the same slot."""
        assert self._store is not None
        sent: list[tuple[Key, int, int]] = []
        if self._unsettled:
            sent += self._send_chunks(list(self._unsettled))
        with self._pending_lock:
            items = list(self._pending.items())
        if not items:
            return sent
        groups: dict[int, list[int]] = {}
        keys = [self.redis_key(k) for k, _ in items]
        for i, rk in enumerate(keys):
            groups.setdefault(self._store.slot([rk]), []).append(i)
        chunks = [
            _Chunk(slot, [keys[i] for i in part], [items[i] for i in part])
            for slot, idx in groups.items()
            for part in (idx[start : start + 256] for start in range(0, len(idx), 256))
        ]
        self._unsettled += chunks
        return sent + self._send_chunks(chunks)

    def _send_chunks(self, chunks: list[_Chunk]) -> list[tuple[Key, int, int]]:
        """The chunks' script calls, pipelined (one round trip per server, not per call: on a
        cluster, keys spread over thousands of slots took a call each, 6 s for 20,000 keys).
        Each chunk whose reply arrived is settled; the others stay in ``_unsettled`` and
        StorageError is raised after the settled ones are accounted for."""
        assert self._store is not None
        calls = []
        taken: list[int] = []
        for chunk in chunks:
            # Ids of this slot's settled calls, deleted by this call; each id goes in one call.
            waiting = self._settled.get(chunk.slot, [])
            done = waiting[:64]
            del waiting[: len(done)]
            taken.append(len(done))
            keys = [chunk.id_key, *done, *chunk.keys]
            args: list[str | int | bytes] = [f"o{1 + len(done)}", ONCE_TTL_MS, f"c{len(chunk.items)}"]
            args += [self._op_bytes("h", units) for _, units in chunk.items]
            calls.append((keys, args, 1 + len(done) + len(chunk.items)))
        replies = self._store.call_many(calls)
        out: list[tuple[Key, int, int]] = []
        failed: BaseException | None = None
        settled: set[int] = set()
        for chunk, (keys, _, _), n_done, r in zip(chunks, calls, taken, replies, strict=True):
            if isinstance(r, BaseException):
                failed = failed or r
                # Its deletions were maybe not made: they go in a later call (deleting is
                # idempotent).
                self._settled.setdefault(chunk.slot, []).extend(keys[1 : 1 + n_done])
                continue
            settled.add(id(chunk))
            self._settled.setdefault(chunk.slot, []).append(chunk.id_key)
            at = 4 * (1 + n_done)
            with self._pending_lock:
                for j, (key, units) in enumerate(chunk.items):
                    rest = self._pending.get(key, 0) - units
                    if rest > 0:
                        self._pending[key] = rest
                    else:
                        self._pending.pop(key, None)
                    out.append((key, units, r[at + 4 * j + 1]))
        self._unsettled = [c for c in self._unsettled if id(c) not in settled]
        if failed is not None:
            raise failed if isinstance(failed, StorageError) else StorageError(str(failed))
        return out

    def _has_backlog(self) -> bool:
        """Outage consumption not yet in Redis (tracked natively, or drained and pending)."""
        fb = self._fallback
        return (
            bool(self._pending)
            or bool(self._unsettled)
            or (fb is not None and fb.stats().get("unsent_keys", 0) > 0)
        )

    def _flush(self, limit: int | None = FLUSH_KEYS) -> None:
        """Hybrid: sends the consumption since the last flush (at most ``limit`` keys of it:
        the rest goes at the next flush); folds back each key's share of what is left
        globally. Called by the keeper thread (and by close, for everything)."""
        budget = limit
        while self._retired_locals and (budget is None or budget > 0):
            old = self._retired_locals[0]
            moved = self._collect(old, budget)
            if budget is None or moved < budget:
                self._retired_locals.pop(0)  # nothing left in it
            if budget is not None:
                budget -= moved
        if budget is None or budget > 0:
            self._collect(self._local, budget)
        sent = self._send_pending()
        assert self._store is not None
        n = self._store.replicas.get(self.prefix, 1)
        if n != self._local_n:
            self._rebuild_local(n)
        local = self._local
        assert local is not None
        # Each replica's share of what is left globally, applied only where it is lower than
        # the local view: a share computed from a global count that misses the other
        # replicas' unsent consumption must never grant more (that is over-admission).
        for key, _, left in sent:
            share = left // n
            d = local.peek(key)
            if share < (d.remaining + 1 if d.allowed else 0):
                local.set_available(key, share)

    def _reconcile(self, limit: int | None = None) -> None:
        """After an outage: what the fallback admitted goes to Redis (at most ``limit`` keys of
        it per call; the keeper calls again while there is more)."""
        if self._hybrid:
            self._flush(limit)
            return
        self._collect(self._fallback, limit)
        # Reported before the send: once the backlog reads empty the loss is already told (a
        # test waiting for the empty backlog found no warning yet, 1 run in 3 under load).
        fb = self._fallback
        if fb is not None:
            lost = fb.stats().get("lost_units", 0)
            if lost > self._lost_reported:
                self._lost_reported = lost
                _log.warning(
                    "hotlimit: %s: %d units admitted during the outage were not kept for "
                    "Redis (more keys than max_keys=%d were hit; those keys' units are lost)",
                    self.name,
                    lost,
                    self.max_keys,
                )
        self._send_pending()

    def _after_fork_in_child(self) -> None:
        # The parent sends its own unsent consumption; the child must not send it again.
        for native in (self._local, self._fallback, *self._retired_locals):
            if native is not None:
                native.drain()
        self._retired_locals = []
        self._unsettled = []  # the parent sends them
        self._settled = {}
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._reopen_lock = threading.Lock()
        self._pending = {}

    # -- the Redis path ---------------------------------------------------------------------

    def _cost(self, cost: object) -> int:
        # The native core's checks and messages (rust/py.rs, NativeLimiter::cost), word for word.
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise CostTypeError(f"cost must be an int, not {_check.type_name(cost)}: {_check.shown(cost)}")
        # The value itself, as the native core reads it: an int subclass's own __str__ or
        # comparisons must not change what is sent to the store.
        cost = int.__index__(cost)
        if cost < 1:
            raise InvalidCostError(f"cost must be at least 1, got {_check.shown(cost)}")
        if cost > self.capacity:
            raise InvalidCostError(
                f"cost {_check.shown(cost)} is above this limiter's capacity of {self.capacity}: "
                "it could never be allowed"
            )
        return cost

    def redis_key(self, key: Key) -> str:
        """The Redis key holding ``key``'s state (Redis and hybrid mode)."""
        escaped = escape(key)
        if self._store is None:
            raise InvalidArgumentError(
                f"redis_key({_check.shown(key)}): this limiter keeps its state in memory, not in Redis"
            )
        return self._key_head + escaped + "}"

    def _decision(self, r: Sequence[int], at: int = 0) -> Decision:
        return Decision(
            allowed=bool(r[at]),
            limit=self.rate.limit,
            remaining=r[at + 1],
            reset_after=r[at + 2] / _NS,
            retry_after=r[at + 3] / _NS,
        )

    def _current(self) -> Any:
        """Whatever decides right now in the shared modes."""
        if self._released:
            self._reopen()
        if self._hybrid:
            return self._local
        if self._store is not None and self._store.breaker.is_open:
            if self._on_redis_error == "fallback":
                if self._fallback is None:
                    self._on_breaker_open()
                return self._fallback
            return self._constant
        return self._front

    def _remember(self, key: Key, cost: int, r: Sequence[int], at: int = 0) -> None:
        if not r[at] and r[at + 3] > 0:
            self._front.record(key, cost, r[at + 1], r[at + 2], r[at + 3])

    def _op(self, mode: str, key: Key, cost: int) -> tuple[list[str], list[str | int | bytes], bytes, bytes]:
        if cost == 1:
            op, frag = self._ops[mode], self._frags[mode]
        else:
            op = self._op_bytes(mode, cost)
            frag = self._resp([op])
        rk = self.redis_key(key)
        kb = rk.encode()
        return [rk], [op], frag, b"$%d\r\n%s\r\n" % (len(kb), kb)

    def _op_bytes(self, mode: str, cost: int) -> bytes:
        """One op of the script: mode, algorithm code, limit, period (ms), emission interval
        (ns), capacity (ns), cost, packed as lua/main.lua unpacks them."""
        return _OP.pack(mode.encode(), *self._op_head, cost)

    def _redis_hit(self, key: Key, cost: object, mode: str) -> Decision:
        # The native front has already looked in the deny cache (see _init_redis).
        n = self._cost(cost)
        store = self._store
        assert store is not None
        if store.breaker.is_open:
            return self._outage(key, n, mode)
        keys, args, frag, kfrag = self._op(mode, key, n)
        try:
            r = store.call(keys, args, 1, frag, kfrag)
        except StorageError as e:
            store.trip(e)
            return self._outage(key, n, mode)
        self._remember(key, n, r)
        return self._decision(r)

    async def _aredis_hit(self, key: Key, cost: object, mode: str) -> Decision:
        n = self._cost(cost)
        if self._released:
            self._reopen()
        if self._hybrid:
            local = self._local
            assert local is not None
            return local.hit(key, n) if mode == "h" else local.peek(key, n)
        cached = self._front.check(key, n)
        if cached is not None:
            return cached
        store = self._store
        assert store is not None
        breaker = store.breaker
        probing = False
        if breaker.is_open:
            # With no sync client there is no keeper thread: probe in band.
            now = time.monotonic()
            if store.can_sync() or now < breaker.next_probe:
                return self._outage(key, n, mode)
            breaker.next_probe = now + 0.1
            probing = True
        keys, args, frag, kfrag = self._op(mode, key, n)
        try:
            r = await store.acall(keys, args, 1, frag, kfrag)
        except StorageError as e:
            if probing and breaker.is_open:
                breaker.probe_failed(e, now)  # backs off if the error is a misconfiguration
            else:
                store.trip(e)
            return self._outage(key, n, mode)
        if probing:
            # Only this call, the in-band probe, may close the breaker: a call that was in
            # flight when another caller opened it (a live cluster node answering while another
            # is dead) says nothing of the store's health, and closing on it sent decisions
            # back to the store with nothing reconciled (30 of 20 admitted, a cluster test).
            breaker.close()
            breaker.healthy()
        self._remember(key, n, r)
        return self._decision(r)

    def _forget(self, key: Key) -> None:
        self._front.forget(key)

    # -- synchronous API (these bodies run only in subclasses that override nothing) --------

    def hit(self, key: Key, cost: int = 1) -> Decision:
        """Consumes ``cost`` units for ``key`` if available. Never raises for a denial."""
        if self._store is not None:
            d: Decision = self._current().hit(key, cost)
            return d
        return self._native.hit(key, cost)

    def peek(self, key: Key, cost: int = 1) -> Decision:
        """What ``hit`` would answer now, consuming nothing."""
        if self._store is not None:
            d: Decision = self._current().peek(key, cost)
            return d
        return self._native.peek(key, cost)

    def allow(self, key: Key, cost: int = 1) -> bool:
        """``hit(key, cost).allowed``, without building a Decision (the fastest call)."""
        if self._store is not None:
            ok: bool = self._current().allow(key, cost)
            return ok
        return self._native.allow(key, cost)

    def reset(self, key: Key) -> bool:
        """Forgets ``key``; True if it was tracked."""
        if self._store is not None:
            if self._released:
                self._reopen()
            self._forget(key)
            local = [n.reset(key) for n in (self._local, self._fallback) if n is not None]
            if self._store.breaker.is_open:
                return any(local)
            keys, args, frag, kfrag = self._op("r", key, 1)
            try:
                return bool(self._store.call(keys, args, 1, frag, kfrag)[0])
            except StorageError as e:
                self._store.trip(e)
                return any(local)
        return self._native.reset(key)

    def acquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> Decision:
        """Waits until ``cost`` units are available and consumes them.

        With ``timeout`` (seconds), returns the denial as soon as the wait would exceed it.
        Other threads run while this one waits.
        """
        if self._store is not None:
            return self._redis_acquire(key, cost, timeout)
        return self._native.acquire(key, cost, timeout)

    def _redis_acquire(self, key: Key, cost: int, timeout: float | None) -> Decision:
        deadline = self._deadline(key, cost, timeout)
        while True:
            d = self.hit(key, cost)
            if d.allowed:
                return d
            wait = max(d.retry_after, 1e-6)
            if deadline is not None and self._native.now() + wait > deadline:
                return d
            if self._clock is not None:
                self._clock.advance(wait)
            else:
                threading.Event().wait(wait)

    def _deadline(self, key: Key, cost: int, timeout: float | None) -> float | None:
        """Checks acquire's arguments, in the native acquire's order (cost, key, timeout), and
        returns the deadline on the limiter's clock."""
        self._cost(cost)
        _check.key_bytes(key)
        t = _check.timeout(timeout)
        return None if t is None else self._native.now() + t

    def hit_many(self, requests: Iterable[tuple[Key, int] | Key]) -> list[Decision]:
        """Several keys of this limiter, all-or-nothing: see :func:`hotlimit.hit_many`."""
        return hit_many([(self, *_pair(r)) for r in _requests(requests, "keys or (key, cost) pairs")])

    async def ahit_many(self, requests: Iterable[tuple[Key, int] | Key]) -> list[Decision]:
        return await ahit_many([(self, *_pair(r)) for r in _requests(requests, "keys or (key, cost) pairs")])

    # -- asyncio twins ----------------------------------------------------------------------

    async def ahit(self, key: Key, cost: int = 1) -> Decision:
        """Async ``hit``."""
        if self._store is not None:
            return await self._aredis_hit(key, cost, "h")
        return self.hit(key, cost)

    async def apeek(self, key: Key, cost: int = 1) -> Decision:
        """Async ``peek``."""
        if self._store is not None:
            return await self._aredis_hit(key, cost, "p")
        return self.peek(key, cost)

    async def aallow(self, key: Key, cost: int = 1) -> bool:
        """Async ``allow``."""
        if self._store is not None:
            return (await self._aredis_hit(key, cost, "h")).allowed
        return self.allow(key, cost)

    async def areset(self, key: Key) -> bool:
        """Async ``reset``."""
        if self._store is not None:
            if self._released:
                self._reopen()
            self._forget(key)
            local = [n.reset(key) for n in (self._local, self._fallback) if n is not None]
            if self._store.breaker.is_open:
                return any(local)
            keys, args, frag, kfrag = self._op("r", key, 1)
            try:
                return bool((await self._store.acall(keys, args, 1, frag, kfrag))[0])
            except StorageError as e:
                self._store.trip(e)
                return any(local)
        return self.reset(key)

    async def aacquire(self, key: Key, cost: int = 1, timeout: float | None = None) -> Decision:
        """Async ``acquire``: waits with ``asyncio.sleep``, so the event loop keeps running."""
        deadline = self._deadline(key, cost, timeout)
        while True:
            d = await self.ahit(key, cost)
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

    # -- decorator --------------------------------------------------------------------------

    def limit(
        self,
        key: Key | Callable[..., Key] | None = None,
        *,
        cost: int = 1,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Guards a function (plain or ``async def``) with this limiter.

        ``key`` is a constant, a function of the call's arguments (``key=lambda user, **_:
        user.id``), or None (one limit for the function). Over the limit, the call raises
        :class:`~hotlimit.RateLimitExceeded` carrying the Decision, or with ``wait=True`` waits
        until allowed (at most ``timeout`` seconds, then raises).

        >>> limiter = Limiter("1/minute")
        >>> @limiter.limit()
        ... def send_report() -> str:
        ...     return "sent"
        >>> send_report()
        'sent'
        """
        import functools
        import inspect

        from hotlimit._errors import RateLimitExceeded

        # Checked now, not at the first call, in the order hit and acquire check them.
        self._cost(cost)
        if key is not None and not callable(key):
            _check.key_bytes(key)
        _check.flag("wait", wait)
        _check.timeout(timeout)

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise _check.wrong_type("the decorated object", "a function", fn)
            if key is None:  # a partial or a callable object has no __qualname__ of its own
                name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
                fixed: Key | Callable[..., Key] = f"fn:{getattr(fn, '__module__', None)}.{name}"
            else:
                fixed = key

            def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
                k = fixed(*args, **kwargs) if callable(fixed) else fixed
                return k

            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_of(args, kwargs)
                    d = await (self.aacquire(k, cost, timeout) if wait else self.ahit(k, cost))
                    if not d.allowed:
                        raise RateLimitExceeded(d, k)
                    return await fn(*args, **kwargs)

                return async_wrapper

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_of(args, kwargs)
                d = self.acquire(k, cost, timeout) if wait else self.hit(k, cost)
                if not d.allowed:
                    raise RateLimitExceeded(d, k)
                return fn(*args, **kwargs)

            return wrapper

        return decorate

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

    def _table(self) -> _native.NativeLimiter:
        """The native table that decides in process: hybrid mode's local one (its replica's
        share), else the limiter's own."""
        local = self._local if self._hybrid else None
        return local if local is not None else self._native

    def __len__(self) -> int:
        """Keys currently tracked (in this process; memory and hybrid mode)."""
        return len(self._table())

    def __bool__(self) -> bool:
        # A limiter is always truthy, tracked keys or not: `limiter or default` must not
        # silently pick the default for an empty limiter.
        return True

    def sweep(self) -> int:
        """Drops idle keys now (the background thread does it every ``sweep_interval``)."""
        return self._table().sweep()

    def stats(self) -> dict[str, int]:
        """``keys``, ``max_keys`` and ``full_events`` (requests that met a full table); in
        hybrid mode, of the local table that decides."""
        return self._table().stats()

    @property
    def mode(self) -> str:
        """``"memory"``, ``"redis"`` or ``"hybrid"``."""
        return "memory" if self._store is None else "hybrid" if self._hybrid else "redis"

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and decisions are local (or constant)."""
        return self._store is not None and self._store.breaker.is_open

    @property
    def misconfigured(self) -> BaseException | None:
        """While decisions are local because of an error that only a change of configuration
        mends (a server certificate the client rejects, a wrong or missing password, a command
        or key the ACL user may not use, a database index the server does not have): that
        error (a ``StorageError``, its cause chained). Else None. Logged at ERROR on the
        ``hotlimit`` logger once per distinct error; probes back off meanwhile (up to
        ``hotlimit.redis.keeper.MISCONFIGURED_PROBE_CAP`` seconds apart) and the breaker
        closes by itself once the configuration is fixed."""
        store = self._store
        if store is None:
            return None
        breaker = store.breaker
        return breaker.misconfigured if breaker.is_open else None

    def close(self) -> None:
        """Sends hybrid mode's unsent consumption, then lets go of the Redis store; the store's
        connections close with the last limiter using it (limiters on one URL share them).
        Nothing to release in memory mode."""
        if self._store is not None:
            if self._hybrid:
                # One attempt even with the breaker open: Redis may be back before the probe.
                try:
                    self._flush(None)
                except StorageError as e:
                    self._store.trip(e)
            elif not self._store.breaker.is_open and self._has_backlog():
                # An outage's consumption still on its way to Redis: the rest of it, now.
                try:
                    self._reconcile(None)
                except StorageError as e:
                    self._store.trip(e)
            self._release()

    async def aclose(self) -> None:
        if self._store is not None:
            if self._hybrid:
                await asyncio.get_running_loop().run_in_executor(None, self._flush_quietly)
            if self._has_backlog():
                self._store.release_after_backlog(self)  # see _release
                await self._store.close_this_loop()
            else:
                await self._store.arelease(self)
            self._unbind_until_used()

    def _release(self) -> None:
        store = self._store
        assert store is not None
        if self._has_backlog():
            # Closed during an outage: what it admitted meanwhile still goes to Redis, sent by
            # the keeper once the server is back; then it is let go (before, those units were
            # lost unless the limiter was used again).
            store.release_after_backlog(self)
        else:
            store.release(self)
        self._unbind_until_used()

    def _unbind_until_used(self) -> None:
        """A closed limiter may be used again (``async with limiter`` in one event loop after
        another does that). Its decision methods go back to the class's, whose first call
        registers it with the store again (see _reopen): left bound, a limiter closed during
        an outage stayed bound to its fallback for good, since the keeper leaves a closed
        store alone and a released limiter hears nothing of the breaker."""
        self._released = True
        for hot in ("hit", "peek", "allow", "ahit", "apeek", "aallow"):
            self.__dict__.pop(hot, None)

    def _reopen(self) -> None:
        """The first use after close(): back with the store, bound as the mode says now."""
        store = self._store
        assert store is not None
        with self._reopen_lock:
            if not self._released:
                return
            self._released = False
            store.register(self)
            if self._hybrid:
                assert self._local is not None
                self._bind(self._local)
            elif store.breaker.is_open:
                self._on_breaker_open()
            else:
                self._bind(self._front)

    def _flush_quietly(self) -> None:
        try:
            self._flush(None)
        except StorageError as e:
            if self._store is not None:
                self._store.trip(e)

    def __enter__(self) -> Limiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Limiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        extra = "" if self._store is None else ", redis=..."
        return f"Limiter({str(self.rate)!r}, algorithm={self.algorithm!r}{extra})"


class _Chunk:
    """One script call's worth of pending units (see Limiter._send_pending_locked)."""

    __slots__ = ("id_key", "items", "keys", "slot")

    def __init__(self, slot: int, keys: list[str], items: list[tuple[Key, int]]) -> None:
        self.slot = slot
        self.keys = keys
        self.items = items
        # After the first key's hash tag, so that in a cluster it lives in the same slot.
        self.id_key = f"{keys[0]}:once:{uuid.uuid4().hex}"


class _Constant:
    """``on_redis_error="allow"`` / ``"deny"``: the same answer for everyone during an outage."""

    def __init__(self, limiter: Limiter, allowed: bool) -> None:
        self._limiter = limiter
        self._allowed = allowed

    def hit(self, key: Key, cost: object = 1) -> Decision:
        self._limiter._cost(cost)
        _check.key_bytes(key)
        from hotlimit.redis.keeper import PROBE_INTERVAL

        return Decision(
            allowed=self._allowed,
            limit=self._limiter.rate.limit,
            remaining=0,
            reset_after=0.0,
            retry_after=0.0 if self._allowed else PROBE_INTERVAL,
        )

    peek = hit

    def allow(self, key: Key, cost: object = 1) -> bool:
        return self.hit(key, cost).allowed

    def refund(self, key: Key, cost: int) -> None:
        """Nothing was consumed (hit_many rolls back through this)."""


def _requests(requests: object, what: str) -> Iterable[Any]:
    """hit_many's argument: any iterable but a single str or bytes (a key, not keys)."""
    if isinstance(requests, str | bytes):
        raise _check.wrong_type("requests", f"an iterable of {what}, not one key", requests)
    try:
        return iter(requests)  # type: ignore[call-overload, no-any-return]
    except TypeError:
        raise _check.wrong_type("requests", f"an iterable of {what}", requests) from None


def _pair(r: tuple[Key, int] | Key) -> tuple[Key, int]:
    if isinstance(r, str | bytes):
        return r, 1
    if not isinstance(r, tuple) or len(r) != 2:
        raise ArgumentTypeError(f"requests must hold keys or (key, cost) pairs, got {_check.shown(r)}")
    return r[0], r[1]


_Item = tuple[Limiter, Key, int]


def _merged(requests: Iterable[Any]) -> tuple[list[_Item], list[int]]:
    """Validates the requests and merges repeats of one (limiter, key) into one cost; returns
    the merged items and, for each request, the index of its merged item."""
    items: list[_Item] = []
    where: list[int] = []
    seen: dict[tuple[int, object], int] = {}
    for r in _requests(requests, "(limiter, key) or (limiter, key, cost) tuples"):
        if not isinstance(r, tuple) or len(r) not in (2, 3) or not isinstance(r[0], Limiter):
            raise ArgumentTypeError(
                f"requests must hold (limiter, key) or (limiter, key, cost) tuples, got {_check.shown(r)}"
            )
        limiter, key = r[0], r[1]
        cost = limiter._cost(r[2] if len(r) == 3 else 1)
        _check.key_bytes(key)  # the error hit would raise, in every mode
        # A str and its UTF-8 bytes are one key (as for hit): they merge too.
        ident = (id(limiter), key.encode("utf-8") if isinstance(key, str) else bytes(key))
        if ident in seen:
            i = seen[ident]
            lim, k, c = items[i]
            items[i] = (lim, k, lim._cost(c + cost))
        else:
            seen[ident] = len(items)
            items.append((limiter, key, cost))
        where.append(seen[ident])
    check_one_backend([lim for lim, _, _ in items])
    return items, where


def check_one_backend(limiters: Sequence[Limiter]) -> None:
    """Raises InvalidArgumentError unless ``limiters`` can be decided together, atomically, by
    :func:`hit_many`: all in memory, all exact on one Redis store, or all hybrid on one store.
    (A hybrid limiter decides in process and an exact one on the server: no one call is
    atomic over both, and deciding both locally would skip the exact one's shared state.)"""
    places = {(id(lim._store), lim._hybrid) for lim in limiters}
    if len(places) > 1:

        def where(lim: Limiter) -> str:
            if lim._store is None:
                return "memory"
            return f"{'hybrid' if lim._hybrid else 'redis'} store {hex(id(lim._store))}"

        described = ", ".join(f"{lim.rate} ({where(lim)})" for lim in limiters)
        raise InvalidArgumentError(
            "limits checked together (hit_many, or one rule) need every limiter decided in one "
            "place: all in memory, all on one Redis store, or all hybrid on one store; "
            f"got {described}"
        )


def _not_consumed(d: Decision, cost: int, limiter: Limiter) -> Decision:
    """A part of a failed hit_many: never allowed (nothing was consumed); ``retry_after`` 0
    means this part alone would have fit. ``d`` said what its hit would have left; nothing
    was taken, so ``remaining`` is that plus the cost (what can still be consumed now), and a
    token bucket's ``reset_after`` is that less the cost's emission intervals. (A window's
    reset is its end, which the one hit would not have moved, but for a key it would have
    created.)"""
    if not d.allowed:
        return d
    reset_after = d.reset_after
    if _SPECS[limiter.algorithm].burst:  # a bucket: the cost's intervals come off the reset
        emission = -(-limiter.rate.period_ns // limiter.rate.limit)
        reset_after = max(0.0, (round(reset_after * _NS) - cost * emission) / _NS)
    return Decision(
        allowed=False,
        limit=d.limit,
        remaining=d.remaining + cost,
        reset_after=reset_after,
        retry_after=0.0,
    )


_memory_many_lock = threading.Lock()


def _local_native(limiter: Limiter) -> Any:
    """What decides for ``limiter`` in process (memory, hybrid, or the outage policy: the
    fallback limiter or the constant allow / deny answer); it has hit, peek and refund."""
    if limiter._store is None:
        return limiter._native
    current = limiter._current()
    if isinstance(current, _native.NativeLimiter | _Constant):
        return current
    # The breaker closed between the caller's check and here: the outage answer still holds
    # for this call.
    if limiter._fallback is not None:
        return limiter._fallback
    return limiter._native if limiter._on_redis_error == "fallback" else limiter._constant


def _memory_many(items: list[_Item]) -> list[Decision]:
    # All-or-nothing in process: peek everything, and hit only if all fit. The lock makes
    # hit_many calls atomic with respect to each other; a plain hit racing in between can take
    # the last unit, which the confirming hits below detect and roll back.
    with _memory_many_lock:
        peeks = [_local_native(lim).peek(k, c) for lim, k, c in items]
        if not all(peeks):
            return [_not_consumed(d, c, lim) for d, (lim, _, c) in zip(peeks, items, strict=True)]
        done: list[Decision] = []
        for lim, k, c in items:
            d = _local_native(lim).hit(k, c)
            if not d.allowed:
                for (l2, k2, c2), _ in zip(items, done, strict=False):
                    _local_native(l2).refund(k2, c2)
                return [
                    d if i == len(done) else _not_consumed(p, c, lim)
                    for i, (p, (lim, _, c)) in enumerate(zip(peeks, items, strict=True))
                ]
            done.append(d)
        return done


def hit_many(requests: Iterable[tuple[Limiter, Key] | tuple[Limiter, Key, int]]) -> list[Decision]:
    """Checks several limits at once and consumes from all of them only if all allow.

    ``requests`` holds ``(limiter, key)`` or ``(limiter, key, cost)``; repeats of one limiter
    and key add up. Returns one Decision per request, in order; the units were consumed if and
    only if every Decision is allowed. In Redis mode this is one script call (on a cluster,
    the keys must share a slot: limits on one client key always do).
    """
    items, where = _merged(requests)
    if not items:
        return []
    if _decides_locally(items):
        out = _memory_many(items)
    else:
        store, keys, args = _shared_call(items)
        try:
            out = _many_decisions(items, store.call(keys, args, len(items)))
        except StorageError as e:
            store.trip(e)
            out = _memory_many(items)
    return [out[i] for i in where]


def _shared_call(items: list[_Item]) -> tuple[RedisStore, list[str], list[str | int | bytes]]:
    """The store, keys and arguments of one all-or-nothing script call over ``items``."""
    keys = [lim.redis_key(k) for lim, k, _ in items]
    args: list[str | int | bytes] = [f"a{len(items)}"]
    args += [lim._op_bytes("h", c) for lim, _, c in items]
    store = items[0][0]._store
    assert store is not None
    return store, keys, args


def _decides_locally(items: list[_Item]) -> bool:
    for lim, _, _ in items:
        if lim._store is not None and lim._released:
            lim._reopen()  # used again after close()
    return any(lim._store is None or lim._hybrid or lim._store.breaker.is_open for lim, _, _ in items)


async def ahit_many(requests: Iterable[tuple[Limiter, Key] | tuple[Limiter, Key, int]]) -> list[Decision]:
    """Async :func:`hit_many`."""
    items, where = _merged(requests)
    if not items:
        return []
    if _decides_locally(items):
        out = _memory_many(items)
    else:
        store, keys, args = _shared_call(items)
        try:
            out = _many_decisions(items, await store.acall(keys, args, len(items)))
        except StorageError as e:
            store.trip(e)
            out = _memory_many(items)
    return [out[i] for i in where]


def _many_decisions(items: list[_Item], r: Sequence[int]) -> list[Decision]:
    ok = all(r[4 * i] for i in range(len(items)))
    out = []
    for i, (lim, _, _) in enumerate(items):
        d = lim._decision(r, 4 * i)
        out.append(d if ok else _not_consumed(d, items[i][2], lim))
    return out


def _after_fork_in_child() -> None:
    """A module lock held by another thread of the parent at fork() stays held in the child,
    where that thread does not exist: replace them, never take them (a child forked while
    another thread was in hit_many, or building a Redis limiter, waited forever)."""
    global _stores_lock, _memory_many_lock
    _stores_lock = threading.Lock()
    _memory_many_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
