"""`hotlimit bench` against a user's own server (``--redis URL`` or ``REDIS_URL``): the password
stays off every command line, the memory rows run in memory mode, and the server is left as
it was found (the run's keys, all under one prefix, are removed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hotlimit import _bench, _bench_web
from hotlimit.limiter import Limiter
from tests import servers

PASSWORD = "pw-7f3a9c1e-bench-secret"
#: The one root of every key the bench writes (``_bench.KEY_PREFIX``).
PREFIX = "hotlimit-bench:"


@pytest.fixture
def user_server() -> Iterator[tuple[servers.Server, str]]:
    """A fresh server with a password, set after the start so that the server's own command
    line does not carry it; and the URL a user would give, password included."""
    with servers.server(servers.redis_binary()) as s:
        client = redis.Redis(port=s.port, socket_timeout=5)
        client.config_set("requirepass", PASSWORD)
        client.close()
        yield s, f"redis://:{PASSWORD}@127.0.0.1:{s.port}/0"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


def _bench_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=f"{PREFIX}*", count=1000))


def test_worker_command_lines_never_carry_the_password(
    user_server: tuple[servers.Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process the bench starts for the shared modes (throughput workers in each mode,
    the hybrid accuracy workers, the uvicorn servers and wrk) is recorded with its
    /proc/PID/cmdline as the kernel shows it to every user; the URL reaches them in their
    environment (the server refuses them without the password, so the runs prove it did)."""
    _, url = user_server
    cmdlines: list[bytes] = []

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # returns after the child's exec
            cmdlines.append(Path(f"/proc/{self.pid}/cmdline").read_bytes())

    monkeypatch.setattr(subprocess, "Popen", Recording)
    for mode in ("memory", "hybrid", "redis"):
        assert _bench.throughput(url, mode, 1, 1, 0.05) > 0
    assert _bench.hybrid_accuracy(url, 1) > 0
    expected = 3 + 4
    if shutil.which("wrk"):
        assert _bench_web.behind_uvicorn(url, 1.0, 1) is not None
        expected += 3 + 3  # uvicorn bare, memory and hybrid; one wrk each
    assert len(cmdlines) == expected, [c[:80] for c in cmdlines]
    leaked = [c.replace(b"\0", b" ")[-120:] for c in cmdlines if PASSWORD.encode() in c]
    assert not leaked, f"the password is on a command line: {leaked}"


def test_memory_rows_run_in_memory_mode_with_redis_url_set(
    user_server: tuple[servers.Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDIS_URL names a live server: every limiter the memory rows build (the in-process
    ones are recorded) is in memory mode, and the memory part sends that server no script
    and writes it no key (the subprocess rows included: memory per key, the memory-mode
    throughput worker)."""
    _, url = user_server
    monkeypatch.setenv("REDIS_URL", url)
    client = _client(url)
    client.set("someone-elses", "1")
    client.config_resetstat()
    made: list[Limiter] = []

    class Recorded(Limiter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_bench, "Limiter", Recorded)
    monkeypatch.setattr(_bench_web, "Limiter", Recorded)
    for case in _bench.cases(n_keys=1000):
        for key in case.keys[:50]:
            case.fn(key)
    assert _bench.memory_per_key("hotlimit", 1000) is not None
    assert _bench.throughput(None, "memory", 1, 1, 0.05) > 0
    _bench_web.asgi_overhead(None, quick=True)
    _bench_web.async_vs_sync(None, quick=True)
    assert len(made) >= 4 * 5 + 2, "4 algorithms x 4 workloads, allow() rows, the web rows"
    assert {lim.mode for lim in made} == {"memory"}
    assert client.dbsize() == 1
    scripts = [
        k for k in client.info("commandstats") if k.split("|")[0] in ("cmdstat_eval", "cmdstat_evalsha")
    ]
    assert not scripts, f"the memory part ran scripts on REDIS_URL's server: {scripts}"
    client.close()


def test_bench_on_a_users_server_leaves_it_as_it_was(user_server: tuple[servers.Server, str]) -> None:
    """``hotlimit bench --quick --redis URL`` end to end: the server's other keys are
    untouched (one a peer library's default namespace would hold too), and none of the run's
    keys is left: DBSIZE is what it was before."""
    _, url = user_server
    client = _client(url)
    client.set("app:session:1", "keep me")
    client.set("LIMITS:LIMITER/app/1/1/second", "7")  # limits' default namespace: a user's
    client.zadd("throttled:v1:token_bucket:app", {"x": 1})  # throttled-py's default namespace
    before = client.dbsize()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "HOTLIMIT_MODE")}
    out = subprocess.run(
        [sys.executable, "-m", "hotlimit", "bench", "--quick", "--redis", url],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "redis, one caller" in out.stdout, "the Redis rows ran"
    assert client.dbsize() == before, sorted(client.scan_iter(count=1000))
    assert _bench_keys(client) == []
    assert "removed the benchmark's" in out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    assert client.get("app:session:1") == b"keep me"
    assert client.get("LIMITS:LIMITER/app/1/1/second") == b"7"
    assert client.zcard("throttled:v1:token_bucket:app") == 1
    client.close()


def test_an_interrupted_run_still_removes_its_keys(
    user_server: tuple[servers.Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt after the Redis rows: the keys written so far are removed anyway, and
    the interrupt is what the caller sees."""
    _, url = user_server
    client = _client(url)
    client.set("mine", "1")

    def interrupted(*args: object, **kwargs: object) -> float:
        assert _bench_keys(client), "the Redis rows wrote their keys"
        raise KeyboardInterrupt

    monkeypatch.setattr(_bench, "throughput", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _bench.run_shared(url, True, lambda _m: None, remove=True)
    assert _bench_keys(client) == []
    assert client.dbsize() == 1
    client.close()


def test_the_prefix_is_the_one_the_tests_check() -> None:
    assert _bench.KEY_PREFIX == PREFIX


def test_key_removal_covers_every_cluster_primary(redis_cluster: servers.Cluster) -> None:
    """Keys under the prefix in every slot range, and others beside them: on a cluster each
    primary is scanned, and only the prefix's keys go."""
    cluster = redis.RedisCluster.from_url(redis_cluster.url, socket_timeout=10)
    try:
        ours = [f"{PREFIX}t:{{{i}}}" for i in range(300)]
        theirs = [f"app:{{{i}}}" for i in range(0, 300, 30)]
        for key in ours + theirs:
            cluster.set(key, "1")
        owners = {cluster.get_node_from_key(k).name for k in ours}
        assert len(owners) == len(redis_cluster.nodes), "keys on every primary"
        assert _bench.remove_keys(redis_cluster.url) == len(ours)
        assert not any(cluster.exists(k) for k in ours)
        assert all(cluster.exists(k) for k in theirs)
        for key in theirs:
            cluster.delete(key)
    finally:
        cluster.close()
