"""The background side of the shared modes: circuit breaker, probes, heartbeats, hybrid flushes.

One daemon thread per process (the *keeper*) serves every store and limiter:

* **Circuit breaker.** The first Redis error or timeout a call meets opens its store's breaker
  (``Breaker.trip``): every limiter on that store switches its hot methods to a local native
  limiter (``on_redis_error="fallback"``, scaled to ``limit / replicas``) or to a constant
  allow / deny, so no caller waits on the network while Redis is away. Every
  ``PROBE_INTERVAL`` the keeper probes the server; when it answers, the breaker closes at once
  (new decisions go to Redis again), and the consumption counted locally during the outage
  follows to Redis in bounded batches, a few thousand keys a tick (reconciliation, so an outage
  is not a free pass, however many keys it touched, without a long wait or a long hold of the
  GIL).
* **Heartbeats.** Each process announces itself once a second in ``{prefix}replicas`` (a
  sorted set scored by server time); the live count is how a fallback or hybrid limiter knows
  its share of a limit.
* **Hybrid flushes.** Every ``sync_interval`` a hybrid limiter's consumption deltas go to Redis
  in one script call per slot, and the global remaining comes back into the local table.

* **Misconfiguration.** An error no retry can mend (a server certificate the client rejects,
  a wrong or missing password, a command or key the ACL user may not use, a database index the
  server does not have) is logged at ERROR on the ``hotlimit`` logger, once per distinct error,
  and kept in ``Breaker.misconfigured`` (``Limiter.misconfigured``) while it holds the breaker
  open; the probes then back off, ``PROBE_INTERVAL`` doubling to ``MISCONFIGURED_PROBE_CAP``
  (each one was a TLS handshake or a connection that the server logged, ten a second, for
  good). Any other error (connection refused, a timeout) keeps the fast probes.

The thread holds no locks across network calls that a request path needs; a hit never waits
for it. After ``fork()`` the child starts its own thread and opens its own connections. At
interpreter exit the thread is stopped and joined (``EXIT_JOIN_TIMEOUT``) before the
interpreter is torn down: a daemon thread still inside OpenSSL then (a ``rediss://`` handshake
or read) crashed the process with SIGSEGV or SIGABRT.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hotlimit.redis.store import RedisStore

__all__ = ["MISCONFIGURED_PROBE_CAP", "PROBE_INTERVAL", "Breaker", "is_misconfiguration", "keeper"]

_log = logging.getLogger("hotlimit")

#: How often an open breaker probes Redis.
PROBE_INTERVAL = 0.1
#: While the breaker is open for a configuration error, the wait between probes doubles from
#: PROBE_INTERVAL up to this many seconds.
MISCONFIGURED_PROBE_CAP = 30.0
#: How long interpreter exit waits for the keeper thread to finish its tick.
EXIT_JOIN_TIMEOUT = 2.0
#: The hybrid limiters' last flush at exit takes at most about this long, all stores together.
EXIT_FLUSH_LIMIT = 2.0
#: Keys of outage consumption a limiter sends to Redis per keeper tick, after an outage.
#: The keeper's Python for a batch is what other threads wait behind: a thread sleeping 1 ms
#: at a time saw gaps up to 17-21 ms at 4,096 keys (p99 8 ms), 5-12 ms at 1,024 (p99 4 ms),
#: while the backlog took 3.3-3.5 s instead of 2.6 s for 200,000 keys.
RECONCILE_BATCH = 1024
#: How often a process renews its heartbeat, and how long one counts.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL_MS = 3_000
TICK = 0.005

HEARTBEAT_LUA = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""

#: This process's name in ``{prefix}replicas``; a forked child takes a new one (see
#: ``after_fork_in_child``), so pre-fork workers count as the processes they are.
MEMBER = uuid.uuid4().hex


#: TLS alerts and handshake failures that say the two ends' configurations disagree.
_SSL_CONFIG_REASONS = frozenset(
    {
        "CERTIFICATE_VERIFY_FAILED",
        "WRONG_VERSION_NUMBER",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "TLSV1_ALERT_DECRYPT_ERROR",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "NO_PROTOCOLS_AVAILABLE",
        "UNSUPPORTED_PROTOCOL",
    }
)
#: Server replies (as redis-py words them, "ERR " dropped) no retry can mend.
_CONFIG_REPLIES = (
    "wrongpass",
    "noauth",
    "noperm",
    "invalid password",
    "invalid username-password",
    "client sent auth, but no password is set",
    "unknown command",
    "db index is out of range",
    "invalid db index",
)


def is_misconfiguration(error: BaseException) -> bool:
    """Whether ``error`` (or an error in its chain of causes) is one that only a change of
    configuration mends: a certificate rejected by either end, authentication, an ACL denial,
    an unknown (renamed or disabled) command, a database index out of range."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes is short; a cycle must not loop forever
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError | AuthenticationError | NoPermissionError):
            return True
        if isinstance(seen, ssl.SSLError) and seen.reason in _SSL_CONFIG_REASONS:
            return True
        if isinstance(seen, ResponseError) and str(seen).lower().startswith(_CONFIG_REPLIES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _root(error: BaseException) -> BaseException:
    """The first cause in the chain (the error redis-py or ssl raised), for messages."""
    seen = error
    for _ in range(8):
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            break
        seen = nxt
    return seen


class Breaker:
    """Open while the store's Redis is failing. Trips once per outage; closes after a
    successful probe and reconciliation."""

    def __init__(self, store: RedisStore) -> None:
        self._store = weakref.ref(store)
        self._lock = threading.Lock()
        self.is_open = False
        self.opened_at = 0.0
        self.closed_at = 0.0
        self.next_probe = 0.0
        self.trips = 0
        self.last_error: BaseException | None = None
        #: The configuration error holding the breaker open (see is_misconfiguration), or None.
        self.misconfigured: BaseException | None = None
        #: Configuration errors met since Redis last answered a real call: the probe waits
        #: PROBE_INTERVAL * 2**streak, up to MISCONFIGURED_PROBE_CAP.
        self.streak = 0
        self._logged: set[str] = set()  # configuration errors logged at ERROR, once each

    def _failed(self, error: BaseException) -> float:
        """Notes a failure (under the lock); returns how long until the next probe."""
        if not is_misconfiguration(error):
            self.misconfigured = None
            self.streak = 0
            return PROBE_INTERVAL
        self.misconfigured = error
        wait = min(PROBE_INTERVAL * 2.0 ** min(self.streak, 60), MISCONFIGURED_PROBE_CAP)
        self.streak += 1
        return max(wait, PROBE_INTERVAL)

    def _log_misconfigured(self, error: BaseException) -> None:
        """Once per distinct configuration error: at ERROR on the ``hotlimit`` logger."""
        if self.misconfigured is not error:
            return
        root = _root(error)
        what = f"{type(root).__name__}: {root}"
        with self._lock:
            if what in self._logged or len(self._logged) >= 64:
                return
            self._logged.add(what)
        store = self._store()
        _log.error(
            "hotlimit: redis%s is misconfigured (%s); decisions are local until the configuration "
            "is fixed; probing again after %.1f s, backing off to every %.0f s",
            f" at {store.describe()}" if store is not None else "",
            what,
            max(0.0, self.next_probe - time.monotonic()),
            MISCONFIGURED_PROBE_CAP,
        )

    def trip(self, error: BaseException) -> bool:
        """Opens the breaker; True if this call opened it (the caller reports the error)."""
        with self._lock:
            self.last_error = error
            if self.is_open:
                return False
            self.is_open = True
            self.opened_at = time.monotonic()
            self.next_probe = self.opened_at + self._failed(error)
            self.trips += 1
        self._log_misconfigured(error)
        store = self._store()
        if store is not None:
            for limiter in list(store.limiters):
                limiter._on_breaker_open()
            keeper.watch(store)
        return True

    def probe_failed(self, error: BaseException, now: float) -> None:
        """A probe of the open breaker failed: the next one waits PROBE_INTERVAL, or longer
        each time for a configuration error."""
        with self._lock:
            self.last_error = error
            self.next_probe = now + self._failed(error)
        self._log_misconfigured(error)

    def healthy(self) -> None:
        """Redis ran a real command (not a probe's PING): the backoff starts over, and a
        configuration error met again is logged again."""
        if self.streak or self._logged:
            with self._lock:
                self.streak = 0
                self._logged.clear()

    def close(self) -> None:
        with self._lock:
            if not self.is_open:
                return
            self.is_open = False
            self.misconfigured = None
            self.closed_at = time.monotonic()
        store = self._store()
        if store is not None:
            for limiter in list(store.limiters):
                limiter._on_breaker_close()


class _Keeper:
    def __init__(self) -> None:
        self._stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        #: Set at interpreter exit: the loop ends, and no thread starts again.
        self._stopping = False

    def watch(self, store: RedisStore) -> None:
        with self._lock:
            self._stores.add(store)
            if self._stopping:
                return
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="hotlimit-keeper", daemon=True)
                self._thread.start()
        order_exit_hooks()

    def _run(self) -> None:
        from hotlimit.redis.store import EXIT_GATE

        EXIT_GATE.exempt.add(threading.get_ident())  # stopped and joined at exit, in order
        while not self._stopping:
            time.sleep(TICK)
            if not self._stopping:
                self._tick_all()

    def _tick_all(self) -> None:
        # In a function of its own: a loop variable in _run would keep the last store ticked
        # alive while the keeper sleeps, and when no store is left to tick, for good (with its
        # last error's traceback and whatever connections that held), until the process ends
        # or another store comes along and its collection lands in unrelated code.
        for store in list(self._stores):
            if self._stopping:
                return
            try:
                _tick(store, time.monotonic())
            except Exception as e:  # pragma: no cover - the keeper must never die
                store.report(e)

    def stop(self, timeout: float) -> bool:
        """Ends the thread's loop and waits up to ``timeout`` seconds for it (it finishes the
        store it is ticking: at most a probe or a call, each bounded by ``redis_timeout``).
        True if no thread runs any more."""
        with self._lock:
            self._stopping = True
            thread = self._thread if self._pid == os.getpid() else None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def after_fork_in_child(self) -> None:
        global MEMBER
        from hotlimit.redis.store import EXIT_GATE  # imported already: it imports this module

        MEMBER = uuid.uuid4().hex
        EXIT_GATE.after_fork_in_child()
        self._thread = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        for store in list(self._stores):
            store.after_fork_in_child()
        if self._stores:
            self.watch(next(iter(self._stores)))


keeper = _Keeper()
os.register_at_fork(after_in_child=keeper.after_fork_in_child)


def _flush_at_exit() -> None:
    """Hybrid limiters send their last consumption when the interpreter exits, within
    EXIT_FLUSH_LIMIT seconds in all. A store whose flush fails is not tried again for its
    other limiters: at exit a failure does not open the breaker, and each of them waited
    the whole timeout (20 limiters on a hung server with a 1 s timeout: 20 s to exit)."""
    deadline = time.monotonic() + EXIT_FLUSH_LIMIT
    for store in list(keeper._stores):
        if store.breaker.is_open:
            continue
        for limiter in list(store.limiters):
            if not limiter._hybrid:
                continue
            if time.monotonic() > deadline:
                return
            try:
                limiter._flush(None)
            except Exception:  # best effort at exit; the rest of this store would fail too
                break


def _stop_at_exit() -> None:
    """The keeper is a daemon thread: Python does not wait for it, and tears the interpreter
    (and OpenSSL) down around it. Stopped and joined here, in an atexit hook, while the
    interpreter is whole; non-daemon threads have ended by then, so it served them to the
    end."""
    keeper.stop(EXIT_JOIN_TIMEOUT)


def _close_gate_at_exit() -> None:
    """First of hotlimit's exit hooks: other threads' Redis calls land, new ones stay out
    (see store._ExitGate)."""
    global _exit_started
    from hotlimit.redis.store import EXIT_GATE

    _exit_started = True
    EXIT_GATE.close()


def order_exit_hooks() -> None:
    """Puts the keeper's stop first among the atexit hooks registered so far (they run last
    registered, first run): before the hybrid flush (which then runs alone), and before
    ``weakref.finalize``'s hook, registered with the first finalizer of the process, which
    closes the clients' connections, the keeper's included."""
    if _exit_started or keeper._stopping:
        # Exiting: the hooks are running, and one unregistered and added again now would
        # not run at all (the keeper's stop was lost that way when a thread made a client
        # while the gate waited).
        return
    atexit.unregister(_stop_at_exit)
    atexit.unregister(_close_gate_at_exit)
    atexit.register(_stop_at_exit)
    atexit.register(_close_gate_at_exit)


_exit_started = False
atexit.register(_flush_at_exit)
atexit.register(_stop_at_exit)
atexit.register(_close_gate_at_exit)


def _tick(store: RedisStore, now: float) -> None:
    if store.closed:
        return
    generation = store.generation
    breaker = store.breaker
    if breaker.is_open:
        if now < breaker.next_probe or not store.can_sync():
            return
        breaker.next_probe = now + PROBE_INTERVAL
        try:
            store.ping()
        except Exception as e:
            # Still down: the next probe comes PROBE_INTERVAL later, or later still while the
            # error is a configuration error.
            breaker.probe_failed(e, now)
            return
        # Up again: decisions go back to Redis now; what was admitted locally meanwhile
        # follows below, a batch a tick, so the backlog never delays the close.
        breaker.close()
    if not store.can_sync():
        return
    try:
        for limiter in list(store.limiters):
            if not limiter._hybrid and limiter._has_backlog():
                limiter._reconcile(RECONCILE_BATCH)
        if now >= store.next_heartbeat:
            store.next_heartbeat = now + HEARTBEAT_INTERVAL
            store.heartbeat()
            breaker.healthy()
        for limiter in list(store.limiters):
            if limiter._hybrid and now >= limiter._next_flush:
                limiter._next_flush = now + limiter._sync_interval
                limiter._flush()
        for limiter in list(store.draining):
            if not limiter._has_backlog():
                store.release(limiter)  # closed during an outage: its backlog is in Redis now
    except Exception as e:
        # A store closed (and perhaps reopened) meanwhile failed because of that, not Redis.
        if store.generation == generation:
            store.trip(e)


def run_guarded(fn: Callable[[], Any]) -> None:
    """For atexit: best effort, never raising at interpreter exit."""
    with contextlib.suppress(Exception):
        fn()
