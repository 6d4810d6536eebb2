from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests import servers

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# -- real servers (see tests/servers.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Server]:
    with servers.server(servers.redis_binary()) as s:
        yield s


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[servers.Server]:
    with servers.server(servers.valkey_binary()) as s:
        yield s


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[servers.Cluster]:
    with servers.cluster(servers.redis_binary()) as c:
        yield c


_names = itertools.count()

BACKENDS = ["memory", "redis", "valkey", "cluster"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str | None:
    """The URL each behaviour test runs against (None: memory mode)."""
    if request.param == "memory":
        return None
    fixture = {"redis": "redis_server", "valkey": "valkey_server", "cluster": "redis_cluster"}[request.param]
    return str(request.getfixturevalue(fixture).url)


@pytest.fixture
def make_limiter(backend: str | None) -> Iterator[Callable[..., object]]:
    """Builds limiters on the backend under test, each test with its own key prefix."""
    from hotlimit import Limiter

    made: list[Limiter] = []
    prefix = f"t{next(_names)}:"

    def make(rate: str, **kw: object) -> Limiter:
        if backend is not None:
            kw.setdefault("redis", backend)
            kw.setdefault("prefix", prefix)
            kw.setdefault("redis_timeout", 2.0)
        else:
            kw["redis"] = False
        limiter = Limiter(rate, **kw)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()
