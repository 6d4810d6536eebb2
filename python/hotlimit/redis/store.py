"""Talking to Redis: one script call per batch, batches formed by coalescing.

A *lane* serialises the script calls for one destination (the server, or one cluster slot).
A caller that finds its lane idle sends its request at once, so a lone caller pays exactly one
round trip. Callers that arrive while a call is in flight queue up; when the flight lands, the
first of them sends everything that queued as one script call. Under concurrency the number of
round trips per decision therefore falls towards 1 / (callers per flight).

Standalone servers are reached through one dedicated connection per lane, taken from the
client's pool once and kept: a lane never has two calls in flight, and skipping the pool's
checkout on every call saves about half of redis-py's per-command overhead. Cluster clients
are used through their own routing (MOVED / ASK handled by redis-py).
"""

from __future__ import annotations

import asyncio
import contextlib

# Imported here, in the thread that imports hotlimit, because something on the store's path
# imports them lazily the first time: redis-py's ConnectionPool() imports secrets, and a
# str host's getaddrinfo() the idna codec. The keeper thread makes the first connections;
# a fork() (a pre-fork server's workers) while it was inside one of those imports left the
# module's import lock held in the child, whose first hit() then hung for good (11 runs in
# 80 of "make a limiter, fork 4 workers, hit").
import encodings.idna  # noqa: F401
import re
import secrets  # noqa: F401
import threading
import time
import weakref
from _thread import allocate_lock as _lock
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, NoScriptError, RedisError, TryAgainError
from redis.retry import Retry

from hotlimit._check import seconds, wrong_type
from hotlimit._errors import InvalidArgumentError, StorageError
from hotlimit._native import ManualClock
from hotlimit.redis.script import SHA, SOURCE

if TYPE_CHECKING:
    from hotlimit.limiter import Limiter

__all__ = ["RedisStore"]

Args = list[str | int | bytes]
Reply = list[int]

#: Requests sent in one script call at most; the rest go in the next flight.
MAX_BATCH = 256
#: Flights a leading thread sends after its own before handing the lead on.
LEADER_EXTRA_FLIGHTS = 1

_SyncClient = redis.Redis | redis.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def resp(items: Sequence[str | int | bytes]) -> bytes:
    """Items as RESP bulk strings (the body of a command, without its array header)."""
    out = bytearray()
    for item in items:
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return bytes(out)


_SHA_HEAD = resp(["EVALSHA", SHA])
_SMALL = [resp([n]) for n in range(1024)]
_NO_TIME = resp(["", ""])


class _Request:
    __slots__ = ("args", "error", "event", "frag", "future", "keys", "kfrag", "lead", "nops", "reply")

    def __init__(
        self, keys: list[str], args: Args, nops: int, frag: bytes | None, kfrag: bytes | None
    ) -> None:
        self.keys = keys
        self.args = args
        # `args` and `keys` already in RESP form, when the caller had them at hand
        self.frag = frag
        self.kfrag = kfrag
        self.nops = nops
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        # A waiting thread blocks on this lock, acquired twice; whoever finishes its request
        # (or hands it the lead) releases it. Cheaper than an Event, which wraps a Condition.
        self.event: Any = None
        self.future: asyncio.Future[None] | None = None
        self.lead = False

    def outcome(self) -> Reply:
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def _fail(batch: Sequence[_Request], cause: BaseException) -> None:
    for r in batch:
        err = StorageError(f"redis call failed: {type(cause).__name__}: {cause}")
        err.__cause__ = cause
        r.error = err


def _deliver(batch: Sequence[_Request], reply: list[Any]) -> None:
    want = sum(4 * r.nops for r in batch)
    if not isinstance(reply, list) or len(reply) != want:
        _fail(batch, RedisError(f"unexpected script reply: {reply!r:.200}"))
        return
    i = 0
    for r in batch:
        n = 4 * r.nops
        r.reply = reply[i : i + n]
        i += n


Runner = Callable[[list[_Request], Args], list[Any]]
AsyncRunner = Callable[[list[_Request], Args], Awaitable[list[Any]]]


def _flat(batch: list[_Request], time_args: Args) -> tuple[list[str], Args]:
    keys: list[str] = []
    args = list(time_args)
    for r in batch:
        keys += r.keys
        args += r.args
    return keys, args


def _packed(batch: list[_Request], time_args: Args) -> bytes:
    """The whole EVALSHA command for a batch, encoded once, without redis-py's packer."""
    nkeys = 0
    nargs = len(time_args)
    parts = [b"", _SHA_HEAD, b""]
    for r in batch:
        nkeys += len(r.keys)
        parts.append(r.kfrag if r.kfrag is not None else resp(r.keys))
    parts.append(_NO_TIME if time_args[0] == "" else resp(time_args))
    for r in batch:
        nargs += len(r.args)
        parts.append(r.frag if r.frag is not None else resp(r.args))
    parts[0] = b"*%d\r\n" % (3 + nkeys + nargs)
    parts[2] = _SMALL[nkeys] if nkeys < 1024 else resp([nkeys])
    return b"".join(parts)


class _SyncLane:
    def __init__(
        self, run: Runner, time_args: Callable[[], Args], let_go: Callable[[], None] | None = None
    ) -> None:
        self._run = run
        self._time_args = time_args
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._busy = False
        #: Gives the lane's connection back; called once, when the lane is retired and idle.
        self._let_go = let_go
        self._retired = False

    def retire(self) -> None:
        """The store closed: the connection goes back to its pool once no flight uses it.
        Given back at once, it could be handed to another lane while this one's flight was
        still reading from it, and the two read each other's replies (a caller got another
        key's decision while a thread called close() in a loop)."""
        with self._lock:
            self._retired = True
            idle = not self._busy
        if idle:
            self._give_back()

    def _give_back(self) -> None:
        with self._lock:
            let_go, self._let_go = self._let_go, None
        if let_go is not None:
            let_go()

    def submit(self, req: _Request) -> Reply:
        with self._lock:
            self._queue.append(req)
            if self._busy:
                req.event = _lock()
                req.event.acquire()
            else:
                self._busy = True
                req.lead = True
        if req.event is not None:
            req.event.acquire()
            if not req.lead:
                return req.outcome()
        flights = 0
        try:
            while True:
                with self._lock:
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                self._flight(batch)
                flights += 1
                # Flying the next batch at once keeps a thread wake-up off the critical path
                # (the woken threads run while it is in the air); the count bounds how long
                # this caller's own answer waits.
                with self._lock:
                    if not self._queue or flights > LEADER_EXTRA_FLIGHTS:
                        break
        finally:
            idle_retired = False
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    assert nxt.event is not None
                    nxt.event.release()
                else:
                    self._busy = False
                    idle_retired = self._retired
            if idle_retired:
                self._give_back()
        return req.outcome()

    def _flight(self, batch: list[_Request]) -> None:
        try:
            _deliver(batch, self._run(batch, self._time_args()))
        except BaseException as e:
            _fail(batch, e)
            if not isinstance(e, Exception):
                raise
        finally:
            for r in batch:
                if r.event is not None and not r.lead:
                    r.event.release()


class _AsyncLane:
    def __init__(self, run: AsyncRunner, time_args: Callable[[], Args]) -> None:
        self._run = run
        self._time_args = time_args
        self._queue: list[_Request] = []
        self._busy = False

    async def submit(self, req: _Request) -> Reply:
        self._queue.append(req)
        if self._busy:
            req.future = asyncio.get_running_loop().create_future()
            try:
                await req.future
            except asyncio.CancelledError:
                if req in self._queue:
                    self._queue.remove(req)
                if req.lead:
                    self._pass_lead()
                raise
            if not req.lead:
                return req.outcome()
        else:
            self._busy = True
            req.lead = True
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        # The flight runs as its own task: a leader cancelled mid-flight (a server or a timeout
        # wrapper cancelling its request, as they do all the time) must not cancel the call its
        # batch shares, which would fail the others' requests and open the breaker for a store
        # that is healthy. The lead passes on when the flight is over, not when its leader
        # leaves: one connection carries one flight at a time.
        flight = asyncio.ensure_future(self._flight(batch))
        flight.add_done_callback(lambda _: self._pass_lead())
        await asyncio.shield(flight)
        return req.outcome()

    def _pass_lead(self) -> None:
        if self._queue:
            nxt = self._queue[0]
            nxt.lead = True
            assert nxt.future is not None
            if not nxt.future.done():
                nxt.future.set_result(None)
        else:
            self._busy = False

    async def _flight(self, batch: list[_Request]) -> None:
        try:
            _deliver(batch, await self._run(batch, self._time_args()))
        except BaseException as e:
            _fail(batch, e)
            if not isinstance(e, Exception):
                raise
        finally:
            for r in batch:
                if r.future is not None and not r.lead and not r.future.done():
                    r.future.set_result(None)


def _cluster_nodes(client: Any) -> list[Any]:
    """Every node object an asyncio cluster client holds. Its own ``aclose()`` closes only
    those of its node table; after a second start (a MOVED reply, a lost node) the slot table
    holds other objects for the same nodes, whose connections it never closes (redis-py
    keeps the old table's objects and takes the new ones into the slot table)."""
    manager = client.nodes_manager
    nodes = {
        id(node): node
        for table in (getattr(manager, "nodes_cache", {}), getattr(manager, "startup_nodes", {}))
        for node in table.values()
    }
    for owners in getattr(manager, "slots_cache", {}).values():
        for node in owners:
            nodes.setdefault(id(node), node)
    return list(nodes.values())


def _async_connections(client: Any) -> list[Any]:
    """Every connection an asyncio client (standalone or cluster) holds."""
    if isinstance(client, redis.asyncio.RedisCluster):
        return [conn for node in _cluster_nodes(client) for conn in getattr(node, "_connections", ())]
    pool = client.connection_pool
    return [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]


def _close_sync_client(client: Any, in_use: bool = True) -> None:
    """Closes a sync client; for a cluster, also the connection of the node it started from,
    which its ``close()`` leaves open when that node object is not in its node table. With
    ``in_use=False`` (a close() while the store may be in use), connections in use are not cut:
    a lane's flight may be reading from one (the lane disconnects it when it gives it back)."""
    if isinstance(client, redis.Redis):
        client.connection_pool.disconnect(inuse_connections=in_use)
        return
    client.close()
    if isinstance(client, redis.RedisCluster):
        for node in list(getattr(client.nodes_manager, "startup_nodes", {}).values()):
            conn = getattr(node, "redis_connection", None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


async def _aclose_client(client: Any) -> None:
    """Closes an asyncio client in its own loop, with the cluster nodes its ``aclose()``
    misses (see _cluster_nodes)."""
    extra = _cluster_nodes(client) if isinstance(client, redis.asyncio.RedisCluster) else []
    await client.aclose()
    for node in extra:
        if any(conn.is_connected for conn in getattr(node, "_connections", ())):
            with contextlib.suppress(Exception):  # closing only; a dead peer may complain
                await node.disconnect()


def _abandon_if_ended(client: Any, loop: asyncio.AbstractEventLoop) -> None:
    """At a store's end: an asyncio client whose loop has ended is closed here (its loop
    cannot); one whose loop still runs closes its connections in that loop, as usual."""
    if loop.is_closed():
        _abandon_client(client)


def _abandon_client(client: Any) -> None:
    """Closes the sockets of a redis.asyncio client whose event loop has ended."""
    for conn in _async_connections(client):
        _abandon(conn)
    if isinstance(client, redis.asyncio.RedisCluster):
        client._initialize = True  # as its aclose() leaves it: nothing left open to warn of


def _abandon(conn: Any) -> None:
    """Closes the socket of a redis.asyncio connection whose event loop has ended."""
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return
    transport = writer.transport
    sock = getattr(transport, "_sock", None)
    # abort() marks the transport closing (so the StreamWriter does not warn), then fails to
    # schedule its callback on the closed loop; the socket itself is closed here instead.
    with contextlib.suppress(RuntimeError):
        transport.abort()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
        transport._sock = None  # closed: the transport's own finaliser has nothing left to do
    conn._writer = conn._reader = None


#: How often a lane on a Sentinel-managed connection asks Sentinel who the primary is. After a
#: failover the old primary keeps accepting writes until Sentinel demotes it (up to about 10
#: s later), and the units written there are lost when it resyncs; asking bounds that window.
SENTINEL_CHECK_INTERVAL = 0.25


def _sentinel_master_pool(pool: Any) -> bool:
    """Whether connections of ``pool`` are Sentinel-managed, to a primary."""
    return bool(getattr(pool, "is_master", False)) and hasattr(pool, "get_master_address")


def _elsewhere(conn: Any, primary: Any) -> bool:
    """Whether ``conn`` is connected to another server than Sentinel's ``primary``: it must
    disconnect, and its next connect() asks Sentinel again."""
    connected = getattr(conn, "_sock", None) is not None or getattr(conn, "_writer", None) is not None
    return connected and (str(conn.host), int(conn.port)) != (str(primary[0]), int(primary[1]))


def _is_cluster_url(url: str, timeout: float) -> bool:
    probe = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        info: Any = probe.info("cluster")
        return bool(info.get("cluster_enabled"))
    except RedisError as e:
        raise StorageError(f"cannot reach redis at {_safe_url(url)}: {e}") from e
    finally:
        probe.close()


def _safe_url(url: str) -> str:
    """The URL without its secrets, for messages: the user-info part (``user:pass@``) and
    every query parameter whose name says password (``?password=``, ``ssl_password=``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        # Up to the last "@": a password may hold "?", "#" or "/" (unescaped), which would
        # otherwise be read as the start of the query.
        rest = "***@" + rest.rsplit("@", 1)[1]
    head, q, query = rest.partition("?")
    if q:
        query = "&".join(
            f"{name}=***" if "password" in name.lower() else f"{name}{eq}{value}"
            for name, eq, value in (part.partition("=") for part in query.split("&"))
        )
    return f"{scheme}://{head}{q}{query}"


def check_url(url: str) -> None:
    """Raises InvalidArgumentError, naming the URL with its secrets masked, unless redis-py can
    make a connection from it: a bad port or ``?db=x`` is a configuration error, to be said at
    construction, not a store failure to fall back from on every call."""
    from redis.connection import parse_url

    try:
        options: Any = parse_url(url)  # type: ignore[no-untyped-call]
        scheme, _, rest = url.partition("://")
        if scheme != "unix":
            path = rest.partition("?")[0].partition("/")[2]
            if path and not path.isdigit():
                raise ValueError(f"the database must be a number, got {path!r}")
        # A connection made from it (nothing is dialled): an option its scheme does not take
        # (?ssl_password= on redis://) raised TypeError at the first call, past every check.
        cls = options.pop("connection_class", redis.Connection)
        cls(**options)
    except (ValueError, TypeError, RedisError) as e:  # ?ssl_cert_reqs=bogus: a RedisError
        reason = str(e)
        # redis-py's reason may quote part of the URL: never a piece of its user-info.
        if "@" in url.partition("://")[2]:
            userinfo = url.partition("://")[2].rsplit("@", 1)[0]
            for piece in sorted(re.split(r"[:?#/]", userinfo), key=len, reverse=True):
                if len(piece) >= 2:
                    reason = reason.replace(piece, "***")
        raise InvalidArgumentError(f"bad redis URL {_safe_url(url)!r}: {reason}") from None


class _ExitGate:
    """Keeps Redis calls of other threads out of the interpreter's exit.

    Daemon threads run on while the interpreter finalises, and so does whatever they are in:
    one of them opening a TLS connection while the process's exit handlers tore OpenSSL down
    killed the process (SIGSEGV, 2-3 runs in 100 with three threads calling ``hit()``). At
    exit, :meth:`close` (the first of hotlimit's atexit hooks) waits for the calls in
    progress to land; calls that start afterwards fail at once with a StorageError, without
    opening the breaker, and are decided as in an outage. The main thread (other atexit
    hooks, the hybrid limiters' last flush) and the keeper pass as usual.
    """

    __slots__ = ("closing", "exempt", "inside", "lock", "longest")

    def __init__(self) -> None:
        self.closing = False
        self.inside = 0
        self.lock = _lock()
        self.exempt: set[int] = set()
        #: The longest redis_timeout of any store: bounds how long a call in progress may take.
        self.longest = 0.0

    def __enter__(self) -> None:
        with self.lock:
            self.inside += 1
        # Counted first, then checked: close() sets the flag before it reads the count, so a
        # call it does not wait for is a call that sees the flag.
        if self.closing and threading.get_ident() not in self.exempt:
            with self.lock:
                self.inside -= 1
            raise StorageError("the interpreter is exiting: no new Redis calls from other threads")

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.inside -= 1

    def close(self) -> None:
        self.exempt.add(threading.get_ident())
        self.closing = True
        # A call: a connect (a TLS handshake, the client's set-up commands), a send and a
        # reply, each within the timeout, and one retry of all three; and a second at least, as the Python
        # between those steps is slow on a starved machine (at 0.25 s, a connection still
        # being set up went on sending after the gate gave up, 3 runs in 12 of a loaded CI).
        deadline = time.monotonic() + min(EXIT_DRAIN_LIMIT, max(EXIT_DRAIN_MIN, 6 * self.longest))
        while self.inside > 0 and time.monotonic() < deadline:
            time.sleep(0.002)

    def after_fork_in_child(self) -> None:
        self.lock = _lock()  # a parent thread may have held it at fork()
        self.inside = 0  # the parent's calls in progress are not the child's


#: How long at exit for Redis calls in progress at most, and at least if some are (see
#: _ExitGate).
EXIT_DRAIN_LIMIT = 5.0
EXIT_DRAIN_MIN = 1.0
EXIT_GATE = _ExitGate()
#: What a forked child inherited from its parent's stores, kept alive, never used (see
#: RedisStore.after_fork_in_child).
_INHERITED: list[object] = []


class _LoopSide:
    """One event loop's asyncio client, its lanes (one per slot) and the dedicated
    connections they hold."""

    __slots__ = ("client", "conns", "finalizer", "init", "lanes", "loop", "ready")

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.client = client
        self.loop = loop
        self.lanes: dict[int, _AsyncLane] = {}
        self.conns: list[Any] = []
        self.finalizer: weakref.finalize[Any, Any] | None = None
        # A cluster client learns the topology once, before any call: left to the first
        # calls, tasks arriving together each started it, and a later start closed the
        # connections an earlier one's calls were using ("Connection closed by server").
        self.ready = not isinstance(client, redis.asyncio.RedisCluster)
        self.init: asyncio.Future[Any] | None = None

    async def get_ready(self) -> None:
        """Waits for the cluster client's one start (shared by every task that asks)."""
        init = self.init
        if init is None or (init.done() and (init.cancelled() or init.exception() is not None)):
            init = self.init = asyncio.ensure_future(self.client.initialize())
        try:
            await asyncio.shield(init)
        except Exception as e:  # redis-py's errors, and the socket's own
            raise StorageError(f"redis call failed: {type(e).__name__}: {e}") from e
        self.ready = True

    def drop(self) -> None:
        """Lets go of the client from outside its event loop (a sync ``close()``, or a new
        loop finding this one ended). Its connections belong to that loop. If the loop has
        ended (``asyncio.run()`` returned without ``aclose()``), they can no longer be closed
        through it, and left to the garbage collector each warns ("loop is closed",
        "unclosed Connection") inside whatever code runs then: their sockets are closed here.
        If the loop still runs in another thread, the client closes there."""
        self.lanes = {}
        self.conns = []
        if self.finalizer is not None:
            self.finalizer.detach()
            self.finalizer = None
        loop = self.loop
        if loop is not None and not loop.is_closed() and loop.is_running():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(_aclose_client(self.client), loop)
            return
        _abandon_client(self.client)


class RedisStore:
    """Runs hotlimit's script on one Redis deployment, sync and async.

    ``target`` is a URL (``redis://``, ``rediss://``, ``unix://``; user and password as redis-py
    takes them) or a client: ``redis.Redis`` / ``redis.RedisCluster`` for the sync calls,
    ``redis.asyncio.Redis`` / ``redis.asyncio.RedisCluster`` for the async ones. From a URL both
    are made on first use, with ``timeout`` seconds for connecting and for each reply, and no
    retries (a dead server should be noticed fast, not waited on three times).
    """

    def __init__(self, target: object, *, timeout: float = 0.05, clock: ManualClock | None = None) -> None:
        self._timeout = seconds("redis_timeout", timeout, 0, 60, "(0, 60]", lo_open=True)
        EXIT_GATE.longest = max(EXIT_GATE.longest, self._timeout)
        self._clock = clock
        self._url: str | None = None
        self._sync: _SyncClient | None = None
        self._async: _AsyncClient | None = None
        self._own_clients = False
        self._cluster: bool | None = None
        if isinstance(target, str):
            if not target.startswith(("redis://", "rediss://", "unix://", "valkey://", "valkeys://")):
                raise InvalidArgumentError(
                    f"redis URL must start with redis://, rediss:// or unix://, got {_safe_url(target)!r}"
                )
            self._url = target.replace("valkey", "redis", 1) if target.startswith("valkey") else target
            check_url(self._url)
            self._own_clients = True
        elif isinstance(target, redis.Redis | redis.RedisCluster):
            self._sync = target
            self._cluster = isinstance(target, redis.RedisCluster)
        elif isinstance(target, redis.asyncio.Redis | redis.asyncio.RedisCluster):
            self._async = target
            self._cluster = isinstance(target, redis.asyncio.RedisCluster)
        else:
            raise wrong_type("redis", "a URL or a redis-py client", target)
        self._lock = threading.Lock()
        from hotlimit.redis.keeper import Breaker

        self.breaker = Breaker(self)
        self.closed = False
        self.generation = 0
        self.limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()
        #: Closed limiters whose outage consumption the keeper is still to send (see
        #: release_after_backlog): held strongly until it is sent.
        self.draining: set[Limiter] = set()
        #: Live processes per key prefix, from the heartbeats (1 until the first one).
        self.replicas: dict[str, int] = {}
        self.next_heartbeat = 0.0
        self._sentinel_next = 0.0  # see _follow_sentinel
        self._sync_lanes: dict[int, _SyncLane] = {}
        #: weakref.finalize hooks that close or give back what this store holds when it is
        #: dropped unclosed; a forked child detaches them (they hold the parent's objects).
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        #: The asyncio side, one per event loop that used this store (a client, its lanes and
        #: dedicated connections belong to one loop); a user's asyncio client under ``None``.
        self._loops: dict[asyncio.AbstractEventLoop | None, _LoopSide] = {}
        #: Sides a close() found in use by a loop still running in another thread: that loop
        #: closes its own (in aclose(), or takes it back on its next call); the store's end
        #: closes them if it never does.
        self._retired: dict[asyncio.AbstractEventLoop, _LoopSide] = {}

    # -- clients -----------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    def _sync_client(self) -> _SyncClient:
        if self._sync is None:
            if self._url is None:
                raise InvalidArgumentError(
                    "this limiter was given an asyncio redis client: use the async methods "
                    "(ahit, apeek, areset, ...) or pass a URL or a sync client"
                )
            with self._lock:
                if self._sync is None:
                    if self._cluster is None:
                        self._cluster = _is_cluster_url(self._url, self._timeout)
                    client: Any
                    if self._cluster:
                        client = redis.RedisCluster.from_url(self._url, **self._client_options())
                    else:
                        client = redis.Redis.from_url(self._url, **self._client_options())
                    # A store dropped without close() still closes its sockets.
                    self._finalizers.append(weakref.finalize(self, _close_sync_client, client))
                    self._sync = client
                    from hotlimit.redis.keeper import order_exit_hooks

                    # At exit, the keeper (which uses this client) stops before that
                    # finalizer's atexit hook closes its connections.
                    order_exit_hooks()
        return self._sync

    def _loop_side(self) -> _LoopSide:
        """This event loop's client, lanes and connections, made on its first call and kept:
        one limiter used from loops in several threads keeps one client per loop."""
        if not self._own_clients:
            side = self._loops.get(None)
            if side is None:
                if self._async is None:
                    raise InvalidArgumentError(
                        "this limiter was given a sync redis client: use the sync methods "
                        "(hit, peek, reset, ...) or pass a URL or a redis.asyncio client"
                    )
                side = self._loops[None] = _LoopSide(self._async, None)
            return side
        loop = asyncio.get_running_loop()
        side = self._loops.get(loop)
        if side is not None:
            return side
        # A loop's first call: under the lock, as loops in other threads may be arriving too
        # (two of them letting go of the same ended loop made one raise KeyError).
        with self._lock:
            return self._new_loop_side(loop)

    def _new_loop_side(self, loop: asyncio.AbstractEventLoop) -> _LoopSide:
        side = self._loops.get(loop)
        if side is not None:
            return side
        side = self._retired.pop(loop, None)
        if side is not None:
            self._loops[loop] = side
            return side
        # A new loop: first let go of the sides of loops that have ended.
        for table in (self._loops, self._retired):
            for old, ended in list(table.items()):
                if old is not None and old.is_closed():
                    del table[old]
                    ended.drop()
        assert self._url is not None
        if self._cluster is None:
            self._cluster = _is_cluster_url(self._url, self._timeout)
        client: Any
        if self._cluster:
            client = redis.asyncio.RedisCluster.from_url(self._url, **self._client_options())
        else:
            client = redis.asyncio.Redis.from_url(self._url, **self._client_options())
        side = self._loops[loop] = _LoopSide(client, loop)
        # A store dropped without aclose() after its loop ended: the store's end closes the
        # client's sockets (see _LoopSide.drop).
        side.finalizer = weakref.finalize(self, _abandon_if_ended, client, loop)
        return side

    # -- time ----------------------------------------------------------------------------------

    def _time_args(self) -> Args:
        if self._clock is None:
            return ["", ""]
        s, n = divmod(self._clock.now_ns(), 1_000_000_000)
        return [s, n]

    # -- routing -------------------------------------------------------------------------------

    def slot(self, keys: Sequence[str]) -> int:
        """The lane for a request; in a cluster, all its keys must share one slot."""
        if self._cluster is None:
            self._detect()
        if not self._cluster:
            return 0
        slots = {key_slot(k.encode("utf-8")) for k in keys}
        if len(slots) != 1:
            raise InvalidArgumentError(
                f"these keys live in different cluster slots, so one atomic call cannot cover "
                f"them: {list(keys)!r:.300}; limits on the same client key always share a slot"
            )
        return slots.pop()

    def _sync_lane(self, slot: int) -> _SyncLane:
        lane = self._sync_lanes.get(slot)
        if lane is None:
            client = self._sync_client()
            with self._lock:
                lane = self._sync_lanes.get(slot)
                if lane is None:
                    let_go = None
                    if isinstance(client, redis.RedisCluster):
                        run = self._cluster_runner(client)
                    else:
                        run, let_go = self._connection_runner(client)
                    lane = self._sync_lanes[slot] = _SyncLane(run, self._time_args, let_go)
        return lane

    def _cluster_runner(self, client: Any) -> Runner:
        def run(batch: list[_Request], time_args: Args) -> list[Any]:
            keys, args = _flat(batch, time_args)
            try:
                return client.evalsha(SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]
            except NoScriptError:
                client.script_load(SOURCE)
                return client.evalsha(SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]

        return run

    def _connection_runner(self, client: redis.Redis) -> tuple[Runner, Callable[[], None]]:
        pool: Any = client.connection_pool  # redis-py's connections are untyped
        holder: list[Any] = []
        sentinel = _sentinel_master_pool(pool)
        next_check = [0.0]

        def once(command: bytes) -> list[Any]:
            if sentinel and holder and time.monotonic() >= next_check[0]:
                next_check[0] = time.monotonic() + SENTINEL_CHECK_INTERVAL
                if _elsewhere(holder[0], pool.get_master_address()):
                    holder[0].disconnect()
            if not holder:
                # Taken at the first call, inside the lane, so that a server down then is a
                # StorageError like any other failed call (taken here, at the lane's making,
                # redis-py's ConnectionError reached the caller).
                conn = pool.get_connection()
                holder.append(conn)
                if not self._own_clients:
                    # A store dropped unclosed gives it back to the user's pool.
                    self._finalizers.append(weakref.finalize(self, pool.release, conn))
            conn = holder[0]
            try:
                if conn._sock is None:
                    # connect(), not the reconnect send_packed_command does by itself: that one
                    # dials the address the connection last had, while a Sentinel-managed
                    # connection's connect() asks Sentinel for the current master.
                    conn.connect()
                conn.send_packed_command([command], check_health=False)
                try:
                    return conn.read_response()  # type: ignore[no-any-return]
                except NoScriptError:
                    conn.send_command("SCRIPT", "LOAD", SOURCE)
                    conn.read_response()
                    conn.send_packed_command([command], check_health=False)
                    return conn.read_response()  # type: ignore[no-any-return]
            except BaseException as e:
                if not isinstance(e, RedisError) or isinstance(e, redis.ConnectionError | redis.TimeoutError):
                    # The reply may still be on its way: never read it as the next call's.
                    conn.disconnect()
                raise

        def run(batch: list[_Request], time_args: Args) -> list[Any]:
            command = _packed(batch, time_args)
            try:
                try:
                    return once(command)
                except redis.ConnectionError:
                    # A connection that went stale while idle (server restart, failover, idle
                    # timeout): one more try on a new connection. (A timeout is not a
                    # ConnectionError in redis-py, so a hung server is not waited on twice.)
                    return once(command)
            finally:
                if retired[0]:
                    let_go()  # a caller that reached this lane after it was retired

        retired = [False]

        def let_go() -> None:
            retired[0] = True
            if holder:
                conn = holder.pop()
                if self._own_clients:
                    conn.disconnect()  # its pool is closing
                pool.release(conn)

        return run, let_go

    def _async_lane(self, slot: int) -> _AsyncLane:
        side = self._loop_side()
        lane = side.lanes.get(slot)
        if lane is None:
            client = side.client
            if isinstance(client, redis.asyncio.RedisCluster):
                run = self._async_cluster_runner(client)
            else:
                run = self._async_connection_runner(client, side.conns)
            lane = side.lanes[slot] = _AsyncLane(run, self._time_args)
        return lane

    def _async_cluster_runner(self, client: Any) -> AsyncRunner:
        async def run(batch: list[_Request], time_args: Args) -> list[Any]:
            keys, args = _flat(batch, time_args)
            try:
                return await client.evalsha(SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]
            except NoScriptError:
                await client.script_load(SOURCE)
                return await client.evalsha(SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]

        return run

    def _async_connection_runner(self, client: redis.asyncio.Redis, conns: list[Any]) -> AsyncRunner:
        pool: Any = client.connection_pool
        holder: list[Any] = []
        sentinel = _sentinel_master_pool(pool)
        next_check = [0.0]

        async def run(batch: list[_Request], time_args: Args) -> list[Any]:
            command = _packed(batch, time_args)
            try:
                return await once(command)
            except redis.ConnectionError:
                return await once(command)  # a stale connection: see the sync runner

        async def once(command: bytes) -> list[Any]:
            if sentinel and holder and time.monotonic() >= next_check[0]:
                next_check[0] = time.monotonic() + SENTINEL_CHECK_INTERVAL
                if _elsewhere(holder[0], await pool.get_master_address()):
                    await holder[0].disconnect()
            if not holder:
                holder.append(await pool.get_connection())
                conns.append((pool, holder[0]))
            conn = holder[0]
            try:
                if not conn.is_connected:
                    await conn.connect()  # asks Sentinel, where it manages the connection
                await conn.send_packed_command([command], check_health=False)
                try:
                    return await conn.read_response()  # type: ignore[no-any-return]
                except NoScriptError:
                    await conn.send_command("SCRIPT", "LOAD", SOURCE)
                    await conn.read_response()
                    await conn.send_packed_command([command], check_health=False)
                    return await conn.read_response()  # type: ignore[no-any-return]
            except BaseException as e:
                if not isinstance(e, RedisError) or isinstance(e, redis.ConnectionError | redis.TimeoutError):
                    await conn.disconnect()
                raise

        return run

    # -- calls ---------------------------------------------------------------------------------

    def call(
        self, keys: list[str], args: Args, nops: int, frag: bytes | None = None, kfrag: bytes | None = None
    ) -> Reply:
        """Runs one group of ops (possibly batched with other callers'); four ints per op.
        ``frag`` and ``kfrag``, if given, are ``args`` and ``keys`` already encoded by
        :func:`resp`."""
        with EXIT_GATE:
            lane = self._sync_lanes.get(0) if self._cluster is False else None
            if lane is None:
                lane = self._sync_lane(self.slot(keys))
            return lane.submit(_Request(keys, args, nops, frag, kfrag))

    def call_many(self, calls: Sequence[tuple[list[str], Args, int]]) -> list[Reply | StorageError]:
        """Several script calls (``keys``, ``args``, op count) pipelined: one round trip per
        server rather than one per call (on a cluster each call's keys share a slot, and keys
        spread over many slots made as many calls: 6 s for 20,000 keys). Each call's reply, or
        the StorageError of that call alone."""
        with EXIT_GATE:
            return self._call_many(calls)

    def _call_many(self, calls: Sequence[tuple[list[str], Args, int]]) -> list[Reply | StorageError]:
        if not calls:
            return []
        client: Any = self._sync_client()
        time_args = self._time_args()
        full = [[*keys, *time_args, *args] for keys, args, _ in calls]
        counts = [len(keys) for keys, _, _ in calls]
        replies: list[Any] = [None] * len(calls)
        if not isinstance(client, redis.RedisCluster):
            try:
                self._follow_sentinel(client)
            except RedisError as e:
                raise StorageError(f"redis call failed: {type(e).__name__}: {e}") from e
            self._pipeline(client, range(len(calls)), full, counts, replies)
            return [
                StorageError(f"redis call failed: {type(r).__name__}: {r}")
                if isinstance(r, BaseException)
                else r
                for r in replies
            ]
        # Grouped by node here: redis-py's cluster pipeline asks the server for the keys of
        # each EVALSHA (COMMAND GETKEYS, a round trip per call).
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (keys, _, _) in enumerate(calls):
            node = client.nodes_manager.get_node_from_slot(key_slot(keys[0].encode("utf-8")))
            by_node.setdefault(node.name, (node, []))[1].append(i)
        for node, idx in by_node.values():
            self._pipeline(client.get_redis_connection(node), idx, full, counts, replies)
        for i, r in enumerate(replies):
            # (MovedError is an AskError; redis-py parses the server's MOVED / ASK / TRYAGAIN.)
            if isinstance(r, AskError | TryAgainError | ClusterDownError):
                # The slot moved since the client's view: through the client, which follows it.
                try:
                    try:
                        replies[i] = client.evalsha(SHA, counts[i], *full[i])
                    except NoScriptError:  # a node new to this client (the slot moved there)
                        client.script_load(SOURCE)
                        replies[i] = client.evalsha(SHA, counts[i], *full[i])
                except RedisError as e:
                    replies[i] = e
        return [
            StorageError(f"redis call failed: {type(r).__name__}: {r}") if isinstance(r, BaseException) else r
            for r in replies
        ]

    def _follow_sentinel(self, client: Any) -> None:
        """For a Sentinel-managed client, at most once a second: asks Sentinel for the primary
        and drops the pool's idle connections to any other server. The lanes check their own
        connection (see the runners); this is for what goes through the pool (hybrid syncs,
        reconciliation, heartbeats), which kept writing to a failed-over primary until
        Sentinel demoted it, about 10 s, and lost those units (73% of them in a test)."""
        pool: Any = getattr(client, "connection_pool", None)
        if pool is None or not _sentinel_master_pool(pool) or time.monotonic() < self._sentinel_next:
            return
        self._sentinel_next = time.monotonic() + SENTINEL_CHECK_INTERVAL
        primary = pool.get_master_address()
        for conn in list(getattr(pool, "_available_connections", ())):
            if _elsewhere(conn, primary):
                conn.disconnect()

    @staticmethod
    def _pipeline(
        conn: Any, idx: Sequence[int], full: list[list[Any]], counts: list[int], replies: list[Any]
    ) -> None:
        """EVALSHA of each call in ``idx`` in one pipeline on ``conn``; loads the script and
        sends again the calls that found it missing. Fills ``replies`` (errors included)."""
        todo = list(idx)
        for attempt in range(2):
            pipe = conn.pipeline(transaction=False)
            for i in todo:
                pipe.evalsha(SHA, counts[i], *full[i])
            try:
                results = pipe.execute(raise_on_error=False)
            except RedisError as e:
                for i in todo:
                    replies[i] = e
                return
            retry = []
            for i, r in zip(todo, results, strict=True):
                if isinstance(r, NoScriptError) and attempt == 0:
                    retry.append(i)  # not run: it goes again once the script is loaded
                else:
                    replies[i] = r
            if not retry:
                return
            try:
                conn.script_load(SOURCE)
            except RedisError as e:
                for i in retry:
                    replies[i] = e
                return
            todo = retry

    async def acall(
        self, keys: list[str], args: Args, nops: int, frag: bytes | None = None, kfrag: bytes | None = None
    ) -> Reply:
        with EXIT_GATE:
            if self._cluster is None:
                await asyncio.to_thread(self._detect)
            lane = self._async_lane(self.slot(keys))
            if not self._loop_side().ready:
                await self._loop_side().get_ready()
            return await lane.submit(_Request(keys, args, nops, frag, kfrag))

    def _detect(self) -> None:
        """Learns whether the URL names a cluster, before the first call is routed: routed
        before (every key to lane 0), concurrent first calls on a cluster were batched across
        slots, and the server refused them ("all keys must map to the same key slot"), which
        opened the breaker at start-up. Raises StorageError if the server cannot be reached."""
        with self._lock:
            if self._cluster is None:
                assert self._url is not None
                self._cluster = _is_cluster_url(self._url, self._timeout)

    @property
    def is_cluster(self) -> bool | None:
        return self._cluster

    # -- failure handling and the keeper (see keeper.py) --------------------------------------

    def register(self, limiter: Limiter) -> None:
        from hotlimit.redis.keeper import keeper

        self.closed = False
        self.draining.discard(limiter)  # closed with a backlog, and used again
        self.limiters.add(limiter)
        if self.can_sync():
            keeper.watch(self)

    def can_sync(self) -> bool:
        """Whether the keeper thread can talk to this store (it needs a sync client)."""
        return self._url is not None or self._sync is not None

    def trip(self, error: BaseException) -> None:
        """A call failed: opens the breaker and, the first time, tells the limiters."""
        if self.closed or EXIT_GATE.closing:
            return  # at exit, a call refused by the gate says nothing of the server
        if self.breaker.trip(error):
            for limiter in list(self.limiters):
                limiter._report(error)

    def describe(self) -> str:
        """The server, for messages: the URL with its secrets masked, or the client's class."""
        if self._url is not None:
            return _safe_url(self._url)
        client = self._sync if self._sync is not None else self._async
        return f"a {type(client).__module__}.{type(client).__name__} client"

    def report(self, error: BaseException) -> None:
        for limiter in list(self.limiters):
            limiter._report(error)

    def ping(self) -> None:
        """Raises unless the server answers; drops connections a dead server left behind."""
        with EXIT_GATE:
            self._ping()

    def _ping(self) -> None:
        client = self._sync_client()
        try:
            if isinstance(client, redis.RedisCluster):
                # redis-py sends a bare PING to one default node, which answers while another
                # primary is dead: the breaker closed, the next call to that primary's slots
                # failed, and it opened again. Every primary of the client's view must answer,
                # and say the cluster is whole (a primary marked failed may have left that
                # view, while its slots are still uncovered).
                infos: Any = client.cluster_info(target_nodes=redis.RedisCluster.PRIMARIES)
                broken = {node: info.get("cluster_state") for node, info in infos.items()}
                if any(state != "ok" for state in broken.values()):
                    raise RedisError(f"cluster is not whole: {broken}")
            else:
                client.ping()
        except RedisError as e:
            pool: Any = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.disconnect(inuse_connections=False)
            raise StorageError(f"redis did not answer a probe: {e}") from e

    def heartbeat(self, also: str | None = None) -> None:
        """Renews this process's heartbeat under each prefix in use (and ``also``: a limiter
        not registered yet); updates ``replicas``."""
        with EXIT_GATE:
            self._heartbeat(also)

    def _heartbeat(self, also: str | None = None) -> None:
        from hotlimit.redis.keeper import HEARTBEAT_LUA, HEARTBEAT_TTL_MS, MEMBER

        client: Any = self._sync_client()
        with contextlib.suppress(RedisError):
            self._follow_sentinel(client)
        prefixes = {lim.prefix for lim in list(self.limiters)}
        if also is not None:
            prefixes.add(also)
        for prefix in prefixes:
            try:
                # Plain EVAL, once a second: keeps EVALSHA counts to the decisions themselves.
                n = client.eval(HEARTBEAT_LUA, 1, f"{prefix}replicas", MEMBER, HEARTBEAT_TTL_MS)
            except RedisError as e:
                raise StorageError(f"heartbeat failed: {e}") from e
            self.replicas[prefix] = max(1, int(n))

    def after_fork_in_child(self) -> None:
        """The child must not use the parent's sockets: forget them (without closing: that
        would shut them down under the parent) and start over."""
        # A lock held by a parent thread at fork() stays held in the child: replace, never take.
        self._lock = threading.Lock()
        # The parent's clients, lanes and connections are kept, unused, for the child's life:
        # dropped here, redis-py's Redis.__del__ closed the parent's pool in the child, taking
        # the pool's lock, which a parent thread held at fork(): the child hung.
        _INHERITED.append((self._sync, self._sync_lanes, self._loops, self._retired))
        self._sync_lanes = {}
        # Their objects are the parent's: run at the child's exit, closing the parent's client
        # took its pool's lock, which a parent thread held at fork(), and the child's exit hung
        # (4 runs in 50 of a forked worker's normal exit).
        for fin in self._finalizers:
            fin.detach()
        self._finalizers = []
        for side in [*self._loops.values(), *self._retired.values()]:
            if side.finalizer is not None:
                side.finalizer.detach()  # the parent's client: the parent closes it
        self._loops = {}
        self._retired = {}
        if self._own_clients:
            self._sync = None
        self.next_heartbeat = 0.0
        for limiter in list(self.limiters):
            limiter._after_fork_in_child()

    def release_after_backlog(self, limiter: Limiter) -> None:
        """A limiter closed with outage consumption not yet in Redis: it stays registered
        (held here, so that dropping it loses nothing) until the keeper has sent it, then is
        released."""
        self.draining.add(limiter)

    def release(self, limiter: Limiter) -> None:
        """A limiter is done with the store; the last one out closes it."""
        self.draining.discard(limiter)
        self.limiters.discard(limiter)
        if not self.limiters:
            self.close()

    async def arelease(self, limiter: Limiter) -> None:
        """Async connections belong to the event loop that made them, which may be about to
        end: this loop's close now (another limiter's next async call makes new ones); the
        rest closes with the last limiter."""
        self.limiters.discard(limiter)
        await self._aclose_this_loop()
        if not self.limiters:
            self.close()

    async def close_this_loop(self) -> None:
        """Closes this event loop's connections (it may be about to end), nothing else."""
        await self._aclose_this_loop()

    async def _aclose_this_loop(self) -> None:
        key = asyncio.get_running_loop() if self._own_clients else None
        side = self._loops.pop(key, None)
        if side is None and key is not None:
            side = self._retired.pop(key, None)
        if side is None:
            return
        for pool, conn in side.conns:
            await pool.release(conn)
        side.conns.clear()
        side.lanes.clear()
        if side.finalizer is not None:
            side.finalizer.detach()
        if self._own_clients:
            await _aclose_client(side.client)

    def close(self) -> None:
        """Gives back the dedicated connections; closes the clients made from a URL."""
        self.closed = True  # the keeper leaves a closed store alone (and does not trip it)
        self.generation += 1  # work the keeper started before this must not trip the breaker
        with self._lock:
            lanes, self._sync_lanes = self._sync_lanes, {}
        for lane in lanes.values():
            lane.retire()  # each gives its connection back once its flight has landed
        if self._own_clients and self._sync is not None:
            _close_sync_client(self._sync, in_use=False)
            self._sync = None
        sides, self._loops = self._loops, {}
        if not self._own_clients:
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, side in sides.items():
            if loop is not None and loop is not here and loop.is_running():
                # In use by a loop running in another thread: closing its connections from
                # here could be cut short when that loop ends; it closes them itself.
                self._retired[loop] = side
            else:
                side.drop()

    async def aclose(self) -> None:
        await self._aclose_this_loop()
        self.close()
