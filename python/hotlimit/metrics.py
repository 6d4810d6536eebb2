"""Counters and decision latency for the middleware, with an optional Prometheus export.

Nothing here sees a raw client key: only route patterns, limiter names, outcomes and times.

>>> m = Metrics()
>>> m.record("/api/*", allowed=True, seconds=0.0001)
>>> m.snapshot()["routes"]["/api/*"]["allowed"]
1
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hotlimit.limiter import Limiter

__all__ = ["Metrics"]

#: Upper bounds (seconds) of the latency histogram's buckets.
BUCKETS = (1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2, 5e-2, 0.25, float("inf"))


class _Route:
    __slots__ = ("allowed", "buckets", "denied", "max", "sum")

    def __init__(self) -> None:
        self.allowed = 0
        self.denied = 0
        self.sum = 0.0
        self.max = 0.0
        self.buckets = [0] * len(BUCKETS)


class Metrics:
    """Allowed / denied counts and decision latency per route, and each watched limiter's mode
    and circuit state. Pass it to a middleware (``metrics=``); read ``snapshot()``, or export
    with :meth:`register_prometheus`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}
        self._limiters: weakref.WeakValueDictionary[str, Limiter] = weakref.WeakValueDictionary()

    def watch(self, limiter: Limiter, name: str | None = None) -> None:
        """Reports this limiter's mode and circuit state under ``name``."""
        self._limiters[name or getattr(limiter, "name", None) or repr(limiter)] = limiter

    def record(self, route: str, allowed: bool, seconds: float) -> None:
        with self._lock:
            r = self._routes.get(route)
            if r is None:
                r = self._routes[route] = _Route()
            if allowed:
                r.allowed += 1
            else:
                r.denied += 1
            r.sum += seconds
            r.max = max(r.max, seconds)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    r.buckets[i] += 1
                    break

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = {
                name: {
                    "allowed": r.allowed,
                    "denied": r.denied,
                    "latency_sum_s": r.sum,
                    "latency_max_s": r.max,
                    "latency_buckets": dict(zip(BUCKETS, r.buckets, strict=True)),
                }
                for name, r in self._routes.items()
            }
        limiters = {
            name: {"mode": lim.mode, "degraded": lim.degraded} for name, lim in list(self._limiters.items())
        }
        return {"routes": routes, "limiters": limiters}

    def register_prometheus(self, registry: Any = None) -> None:
        """Exports through prometheus_client (``pip install prometheus_client``):
        ``hotlimit_decisions_total{route,outcome}``, ``hotlimit_decision_seconds{route}``
        (a histogram) and ``hotlimit_degraded{limiter}``."""
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        metrics = self

        class _Collector:
            def collect(self) -> Any:
                snap = metrics.snapshot()
                decisions = CounterMetricFamily(
                    "hotlimit_decisions", "Rate-limit decisions", labels=["route", "outcome"]
                )
                latency = HistogramMetricFamily(
                    "hotlimit_decision_seconds", "Time to decide, per request", labels=["route"]
                )
                for route, r in snap["routes"].items():
                    decisions.add_metric([route, "allowed"], r["allowed"])
                    decisions.add_metric([route, "denied"], r["denied"])
                    cumulative, buckets = 0, []
                    for bound, n in r["latency_buckets"].items():
                        cumulative += n
                        buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
                    latency.add_metric([route], buckets, r["latency_sum_s"])
                degraded = GaugeMetricFamily(
                    "hotlimit_degraded",
                    "1 while Redis is unreachable and decisions are local",
                    labels=["limiter"],
                )
                for name, state in snap["limiters"].items():
                    degraded.add_metric([name], 1.0 if state["degraded"] else 0.0)
                yield decisions
                yield latency
                yield degraded

        (registry or REGISTRY).register(_Collector())
