"""A forked worker gets a working sweeper of its own and never deadlocks on inherited locks."""

from __future__ import annotations

import os
import sys
import time
import warnings

import pytest

from hotlimit import Limiter, ManualClock


def _hung(pid: int, seconds: float) -> bool:
    """Waits up to ``seconds`` for a forked child, which must exit 0; True (and the child
    killed) if it is still running then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return False
        time.sleep(0.002)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_forked_child_limits_and_sweeps() -> None:
    clock = ManualClock()
    parent = Limiter("3/minute", clock=clock, sweep_interval=0.01)
    for i in range(2000):  # keep the sweeper busy while we fork
        parent.hit(f"k{i}")
    assert parent.hit("shared", 3).allowed
    for _ in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                # State was copied at fork: the key is drained here too.
                ok = not parent.hit("shared").allowed
                child = Limiter("3/minute", clock=clock, sweep_interval=0.01)
                child.hit("c")
                clock.advance(3600)
                deadline = time.monotonic() + 60
                while (len(child) or len(parent)) and time.monotonic() < deadline:
                    time.sleep(0.002)
                code = 0 if ok and len(child) == 0 and len(parent) == 0 else 2
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert not parent.hit("shared").allowed, "the parent's state is its own"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_fork_while_another_thread_sweeps() -> None:
    """An explicit sweep() releases the GIL while it holds a shard's lock; a fork from
    another thread meanwhile gave a child whose first hit waited on that lock forever (18 of 20
    children hung with one shard and 1M keys). The child must work whatever the parent was
    doing: here each fork is made just as the other thread enters a sweep of 300k idle keys."""
    import threading

    clock = ManualClock()
    limiter = Limiter("5/minute", clock=clock, shards=1, max_keys=2_000_000, sweep_interval=3600)
    sweeping, forked = threading.Event(), threading.Event()

    def sweeper() -> None:
        for round_ in range(6):
            for i in range(300_000):
                limiter.hit(f"k{round_}-{i}")
            clock.advance(3600)  # every key idle: the sweep has a whole shard to empty
            forked.clear()
            sweeping.set()
            limiter.sweep()  # releases the GIL: the main thread forks now
            forked.wait(60)

    worker = threading.Thread(target=sweeper)
    worker.start()
    hung = 0
    try:
        for _ in range(6):
            assert sweeping.wait(120)
            sweeping.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = 0 if limiter.hit("child").allowed and limiter.sweep() >= 0 else 2
                finally:
                    os._exit(code)
            forked.set()
            hung += _hung(pid, 60)
    finally:
        forked.set()
        worker.join(120)
    assert hung == 0, f"{hung} of 6 children hung"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_fork_while_threads_wait_for_the_sweeper_gate() -> None:
    """Threads waiting for the sweeper's gate (explicit sweeps racing the background sweeper)
    when another thread forks: the child used to unlock the inherited gate through the lock's
    slow path, which could wait forever on the parking lot's queue lock held by a parent
    thread caught mid-park (seen intermittently on CPython 3.12). Forks are made repeatedly
    while two threads sweep in a loop with the GIL released and the sweeper runs every tick."""
    import threading

    clock = ManualClock()
    limiters = [Limiter("5/minute", clock=clock, shards=4, sweep_interval=0.01) for _ in range(3)]
    stop = threading.Event()

    def sweep_forever(limiter: Limiter) -> None:
        n = 0
        while not stop.is_set():
            for i in range(2000):
                limiter.hit(f"k{n}-{i}")
            n += 1
            clock.advance(3600)
            limiter.sweep()

    threads = [threading.Thread(target=sweep_forever, args=(lim,)) for lim in limiters[:2]]
    for t in threads:
        t.start()
    hung = 0
    try:
        for _ in range(int(os.environ.get("HL_FORKS", "60"))):
            time.sleep(0.003)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    lim = limiters[2]
                    ok = lim.hit("child").allowed and lim.sweep() >= 0
                    ok = ok and limiters[0].sweep() >= 0 and limiters[1].hit("c").allowed
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
            hung += _hung(pid, 20)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert hung == 0, f"{hung} of 60 children hung"


_FORK_WHILE_BUILDING = """
import os, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from hotlimit import Limiter, hit_many
stop = threading.Event()
a, b = Limiter("1000/s"), Limiter("1000/minute")
def build():
    while not stop.is_set():
        Limiter("10/s")
def many():
    while not stop.is_set():
        hit_many([(a, "k"), (b, "k")])
for target in (build, many):
    threading.Thread(target=target, daemon=True).start()
sys.setswitchinterval(1e-5)
for i in range(150):
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(5)  # a hung child dies of SIGALRM
        ok = all(d.allowed for d in hit_many([(a, "child"), (b, "child")]))
        Limiter("1/s").hit("c")
        os._exit(0 if ok else 2)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("child", i, "exit", os.waitstatus_to_exitcode(status), flush=True)
        sys.exit(1)
stop.set()
print("done", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_fork_while_other_threads_build_limiters_and_hit_many() -> None:
    """Found trying to break the fork handling: (1) a thread building a Limiter while another
    forked spun for the sweeper's registry with the GIL held, and the forking thread, which
    holds the registry from its first at-fork handler to its last, never got the GIL back for
    the Python handlers in between: the parent hung (3 of 3 runs); (2) a thread inside
    hit_many held a module lock that the child inherited held: 5 of 20 children hung. The
    parent must finish its forks and every child must work."""
    import subprocess

    try:
        out = subprocess.run(
            [sys.executable, "-c", _FORK_WHILE_BUILDING], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the parent hung in fork()")
    assert out.returncode == 0 and out.stdout.strip().endswith("done"), out.stdout + out.stderr


_IMPORTS_CHILD = """
import sys, threading, time

seen = []

def hook(event, args):
    if event == "import" and threading.current_thread() is not threading.main_thread():
        seen.append(args[0])

sys.addaudithook(hook)
from hotlimit import Limiter

lim = Limiter("1000/day", redis=sys.argv[1], prefix="imports:", hybrid=sys.argv[2] == "hybrid")
time.sleep(1.5)  # the keeper's first ticks: heartbeats, its connections
print(sorted(set(seen)))
lim.close()
"""


@pytest.mark.parametrize("backend", ["redis_server", "redis_cluster"])
@pytest.mark.parametrize("mode", ["redis", "hybrid"])
def test_background_threads_import_nothing(backend: str, mode: str, request: pytest.FixtureRequest) -> None:
    """A pre-fork server makes its limiter, then forks workers at once. The keeper thread made
    the first connections, and importing what redis-py and the socket module import lazily
    (secrets, the idna codec): a fork while it held one of those modules' import locks left
    the lock held in the worker, whose first hit() hung for good (11 runs in 80, under load).
    Whatever hotlimit's background threads need is imported by then; an audit hook records
    every import made by a thread other than the main one."""
    import subprocess

    url = request.getfixturevalue(backend).url
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS_CHILD, url, mode], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"imported by a background thread: {out.stdout.strip()}"


_EXIT_CHILD = """
import os, sys, threading, time
from hotlimit import Limiter

lim = Limiter("1000/day", redis=sys.argv[1], prefix="forkexit:")
lim.hit("k")  # the parent's client, its pool and a lane's connection
pool = lim._store._sync.connection_pool
inside, leave = threading.Event(), threading.Event()

def holder():
    with pool._lock:  # another thread inside the pool at fork(), made certain
        inside.set()
        leave.wait()

threading.Thread(target=holder, daemon=True).start()
inside.wait()
pid = os.fork()
leave.set()
if pid == 0:
    lim.hit("k")  # the child's own client
    sys.exit(0)  # its exit hooks run
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9)
    print("child hung at exit")
lim.close()
"""


def test_a_forked_child_exits_without_touching_the_parents_client(redis_server: object) -> None:
    """The finalizer that closes a store's client when the store is dropped was inherited by
    forked children, and ran at the child's exit on the parent's client: closing its pool
    took the pool's lock, held in the child forever if a parent thread held it at fork()
    (4 runs in 50 of a worker's normal exit hung). A child forgets the parent's finalizers."""
    import subprocess

    url = redis_server.url  # type: ignore[attr-defined]
    out = subprocess.run([sys.executable, "-c", _EXIT_CHILD, url], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "child 0", out.stdout + out.stderr[-2000:]
