"""TLS and misconfiguration (issue 17, items 8 and 9), against real servers started here:
redis-server with certificates made by the openssl command, or with a password and ACL users.

A configuration error (a server certificate the client rejects, a wrong password, an ACL
denial, a database index the server does not have) used to be silent and expensive: decisions
stayed local for good, `on_error` was called once, nothing was logged, and the keeper made a
new connection (a TLS handshake) ten times a second. And with `rediss://`, the process could
die at exit (SIGSEGV or SIGABRT): the keeper, a daemon thread, was still inside OpenSSL while
the interpreter was torn down."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hotlimit import Limiter, StorageError
from tests import servers


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> servers.Tls:
    return servers.make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls: servers.Tls) -> Iterator[servers.Server]:
    s = servers.Server(servers.redis_binary(), tls=tls)
    try:
        yield s.start()
    finally:
        s.close()


def _wait(cond: Callable[[], object], timeout: float) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - t0


def _misconfig_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "hotlimit" and r.levelno == logging.ERROR and "misconfigured" in r.getMessage()
    ]


def test_a_rejected_server_certificate_is_reported_and_its_probes_back_off(
    tls_server: servers.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The client does not trust the server's CA (no ssl_ca_certs): before, the limiter decided
    locally for good without a word in the log, and re-handshook every 100 ms (41 TLS
    handshakes the server refused in 4 s, at 0.35-0.45 CPU-seconds a second). Now: one ERROR
    record, `misconfigured` says why, and the probes back off (100 ms doubling)."""
    caplog.set_level(logging.ERROR, logger="hotlimit")
    assert tls_server.directory is not None
    log = tls_server.directory / "server.log"

    def refused() -> int:  # the server logs each handshake it could not complete
        return log.read_text(errors="replace").count("Error accepting a client connection")

    errors: list[BaseException] = []
    lim = Limiter(
        "5/minute",
        redis=f"rediss://localhost:{tls_server.port}/0",
        prefix="tlsbad:",
        redis_timeout=2.0,
        on_error=errors.append,
    )
    try:
        at_start = refused()
        assert lim.hit("k").allowed, "decided locally"
        time.sleep(2.0)
        early = refused() - at_start
        time.sleep(2.0)
        late = refused() - at_start - early
        # With backoff: the first hit and probes at 0.1, 0.3, 0.7, 1.5 s, then one at 3.1 s
        # (before: about 20 in each 2 s).
        assert early + late <= 10, f"{early} + {late} handshakes in 4 s: no backoff"
        assert late <= 3 and late < early, f"{early}, then {late}: the probes did not back off"
        assert lim.degraded and lim.mode == "redis"
        why = lim.misconfigured
        assert isinstance(why, StorageError), why
        assert "CERTIFICATE_VERIFY_FAILED" in str(why), why
        records = _misconfig_records(caplog)
        assert len(records) == 1, [r.getMessage() for r in records]  # once, not once per probe
        assert "CERTIFICATE_VERIFY_FAILED" in records[0].getMessage()
        assert len(errors) == 1
    finally:
        lim.close()


@pytest.fixture
def locked_server() -> Iterator[servers.Server]:
    """A server whose default user's password is "right"."""
    s = servers.Server(servers.redis_binary(), password="right")
    try:
        yield s.start()
    finally:
        s.close()


def test_a_wrong_password_is_reported_and_recovers_without_restart_once_fixed(
    locked_server: servers.Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WRONGPASS: the probes back off (counted as the connections the server accepted), and
    once the server's password is changed to the one the limiter has, the breaker closes by
    itself within the backoff's cap (0.8 s here) and decisions go to Redis again."""
    from hotlimit.redis import keeper

    monkeypatch.setattr(keeper, "MISCONFIGURED_PROBE_CAP", 0.8, raising=False)
    caplog.set_level(logging.ERROR, logger="hotlimit")
    admin = locked_server.client(socket_timeout=5)
    url = f"redis://:wrong@127.0.0.1:{locked_server.port}/0"
    lim = Limiter("5/minute", redis=url, prefix="pw:", redis_timeout=2.0)
    try:

        def connections() -> int:
            return int(admin.info("stats")["total_connections_received"])

        at_start = connections()
        assert lim.hit("k").allowed
        time.sleep(1.5)
        early = connections() - at_start
        time.sleep(1.5)
        late = connections() - at_start - early
        # Probes at 0.1, 0.3, 0.7 s, then every 0.8 s (and the first hit): before, about 15
        # in each 1.5 s.
        assert early + late <= 12, f"{early} + {late} connections in 3 s: no backoff"
        assert late <= 4, f"{early}, then {late} connections: the probes did not back off"
        assert lim.degraded
        assert "WRONGPASS" in str(lim.misconfigured) or "invalid" in str(lim.misconfigured)
        records = _misconfig_records(caplog)
        assert len(records) == 1, [r.getMessage() for r in records]
        assert ":wrong@" not in records[0].getMessage(), "the password is masked"

        admin.config_set("requirepass", "wrong")  # the fix, on the server: no restart here
        took = _wait(lambda: not lim.degraded, 5.0)
        assert took < 0.8 + 0.5, f"recovered {took:.2f} s after the fix (cap 0.8 s)"
        assert lim.misconfigured is None
        lim.hit("k2")
        assert admin.exists("pw:" + lim.name + ":{k2}"), "the decision was made in Redis"
    finally:
        lim.close()
        admin.close()


def test_a_transient_error_after_a_misconfiguration_probes_fast_again(
    locked_server: servers.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection refused (a server restarting) is not a misconfiguration: after one, probes
    come every 100 ms again, so recovery after the restart takes about a probe, not the
    backoff reached meanwhile."""
    from hotlimit.redis import keeper

    monkeypatch.setattr(keeper, "MISCONFIGURED_PROBE_CAP", 5.0, raising=False)
    url = f"redis://:wrong@127.0.0.1:{locked_server.port}/0"
    lim = Limiter("5/minute", redis=url, prefix="pw2:", redis_timeout=2.0)
    try:
        assert lim.hit("k").allowed
        time.sleep(1.6)  # probes at 0.1, 0.3, 0.7, 1.5 s: the next one 1.6 s later
        assert lim.misconfigured is not None
        locked_server.kill()
        _wait(lambda: lim.misconfigured is None, 5.0)  # the next probe: connection refused
        assert lim.degraded
        locked_server.password = "wrong"  # back, with the limiter's password this time
        locked_server.revive()
        took = _wait(lambda: not lim.degraded, 5.0)
        assert took < 1.0, f"recovered {took:.2f} s after the restart"
    finally:
        lim.close()


@pytest.mark.parametrize("case", ["noauth", "noperm", "db index"])
def test_other_misconfigurations_are_recognised(
    locked_server: servers.Server, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """No password where one is needed (NOAUTH), an ACL user that may not run hotlimit's
    commands (NOPERM), a database the server does not have: each is reported as such."""
    caplog.set_level(logging.ERROR, logger="hotlimit")
    admin = locked_server.client(socket_timeout=5)
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], commands=["-@all"], keys=["*"])
    port = locked_server.port
    url = {
        "noauth": f"redis://127.0.0.1:{port}/0",
        "noperm": f"redis://limited:pw@127.0.0.1:{port}/0",
        "db index": f"redis://:right@127.0.0.1:{port}/99",
    }[case]
    lim = Limiter("5/minute", redis=url, prefix="cfg:", redis_timeout=2.0)
    try:
        assert lim.hit("k").allowed
        assert lim.degraded
        assert lim.misconfigured is not None
        assert len(_misconfig_records(caplog)) == 1
    finally:
        lim.close()
        admin.close()


# -- clean exit with rediss:// (item 9) ----------------------------------------------------------

_EXIT_CHILD = """
import atexit, sys, threading, time

def report():
    # Registered before hotlimit is imported, so it runs after hotlimit's exit hooks.
    alive = any(t.name == "hotlimit-keeper" and t.is_alive() for t in threading.enumerate())
    sys.stdout.write("keeper running at exit\\n" if alive else "keeper stopped\\n")
    sys.stdout.flush()

atexit.register(report)
from hotlimit import Limiter
lim = Limiter("3/minute", redis=sys.argv[1])
lim.hit("k")
time.sleep(float(sys.argv[2]))
"""


def test_a_process_using_rediss_exits_cleanly(tls_server: servers.Server, tmp_path: Path) -> None:
    """The issue's script: a limiter on rediss://, one hit, 5 ms, exit. Before, 12 of 90 runs
    died with SIGSEGV or SIGABRT (the keeper, a daemon thread, inside OpenSSL while the
    interpreter was torn down), and the keeper was always still running when the interpreter
    began its teardown. Now an atexit hook stops it and joins it first: every run exits with
    0 and reports the keeper stopped. Up to 100 runs, 2 at a time, for at most 50 s."""
    script = tmp_path / "child.py"
    script.write_text(_EXIT_CHILD)
    deadline = time.monotonic() + 50.0

    def run(i: int) -> tuple[int, str] | None:
        if time.monotonic() > deadline:
            return None
        pause = str(0.001 * (i % 10))  # the exit meets the keeper at different points
        p = subprocess.run(
            [sys.executable, str(script), tls_server.url, pause],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return p.returncode, p.stdout.strip() + p.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        results = [r for r in pool.map(run, range(100)) if r is not None]
    assert len(results) >= 20, f"only {len(results)} runs in 50 s"
    crashed = [r for r in results if r[0] != 0]
    assert not crashed, f"{len(crashed)} of {len(results)} runs failed: {crashed[:3]}"
    running = [out for _, out in results if out != "keeper stopped"]
    assert not running, f"{len(running)} of {len(results)} runs: {running[:3]}"


_DAEMON_CHILD = """
import atexit, sys, threading, time
import redis.connection as rc

# Redis commands sent or awaited, counted where redis-py does its socket work.
active, started = [0], [0]
send, read = rc.AbstractConnection.send_packed_command, rc.AbstractConnection.read_response

def counted(f, starts):
    def wrapper(*a, **k):
        active[0] += 1
        started[0] += starts
        try:
            return f(*a, **k)
        finally:
            active[0] -= 1
    return wrapper

rc.AbstractConnection.send_packed_command = counted(send, 1)
rc.AbstractConnection.read_response = counted(read, 0)

def last():
    # Registered before hotlimit is imported, so it runs after hotlimit's exit hooks: what
    # the daemon threads still do on the wire now, they would do while OpenSSL is torn down.
    busy, before = active[0], started[0]
    time.sleep(0.05)
    sys.stdout.write(f"{busy} in progress, {started[0] - before} started\\n")
    sys.stdout.flush()

atexit.register(last)
from hotlimit import Limiter

lim = Limiter("1000000/day", redis=sys.argv[1], prefix="daemons:")

def work(n):
    calls = (lim.hit, lim.allow, lim.peek)
    i = 0
    while True:
        calls[i % 3](f"k{n}-{i % 50}")
        i += 1

for n in range(3):
    threading.Thread(target=work, args=(n,), daemon=True).start()
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("server", ["redis_server", "tls_server"])
def test_exit_while_daemon_threads_call_redis(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A user's daemon threads calling hit() / allow() / peek() when the program exits.

    1. One of them waiting on Redis wants the GIL back while the interpreter finalises, and
       CPython before 3.14 ends it with pthread_exit, an unwind through the native front that
       called the store path: SIGABRT in every run. Such a thread now parks, as in 3.14.
    2. They went on calling Redis through the exit hooks and into finalisation; with TLS, one
       opening a connection while the exit handlers tore OpenSSL down killed the process
       (SIGSEGV in 3 of 100 runs). Now the calls in progress land before hotlimit's exit hooks
       go on and no new one starts: checked in every run, after every exit hook."""
    url = request.getfixturevalue(server).url
    script = tmp_path / "child.py"
    script.write_text(_DAEMON_CHILD)

    def run(i: int) -> tuple[int, str]:
        pause = str(0.02 + 0.01 * (i % 4))  # at start-up (connections opening) or after
        p = subprocess.run(
            [sys.executable, str(script), url, pause], capture_output=True, text=True, timeout=60
        )
        return p.returncode, p.stdout.strip() + p.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(12)))
    failed = [r for r in results if r != (0, "0 in progress, 0 started")]
    assert not failed, f"{len(failed)} of {len(results)} runs: {failed[:3]}"
