"""Prometheus metrics of one server: request latency by mode and source, per-tier hits and misses,
model inference time and batch sizes, Redis errors and fallbacks.

Hot-path counters are plain integers on :class:`Counts` (an increment costs nanoseconds); a custom
collector turns them into Prometheus counters when ``/metrics`` is scraped. Each app has its own
registry, so several apps can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SOURCES = ("l1", "redis", "model")


@dataclass
class Counts:
    """Plain counters the service bumps on every request."""

    requests: int = 0
    errors: int = 0
    keys: int = 0
    l1_hits: int = 0
    l1_misses: int = 0
    redis_hits: int = 0
    redis_misses: int = 0
    model_rows: int = 0
    admitted: int = 0
    not_admitted: int = 0
    redis_fallbacks: int = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return asdict(self)


class _CountsCollector(Collector):
    def __init__(self, mode: str, counts: Counts, gauges: Callable[[], dict[str, float]]) -> None:
        self._mode = mode
        self._counts = counts
        self._gauges = gauges

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._counts
        tiers = CounterMetricFamily("hybridserve_cache_lookups", "Cache lookups by tier and result", labels=["mode", "tier", "result"])
        for tier, hits, misses in (("l1", c.l1_hits, c.l1_misses), ("redis", c.redis_hits, c.redis_misses)):
            tiers.add_metric([self._mode, tier, "hit"], hits)
            tiers.add_metric([self._mode, tier, "miss"], misses)
        yield tiers
        for name, doc, value in (
            ("hybridserve_keys", "Keys predicted", c.keys),
            ("hybridserve_model_rows", "Rows computed by the model", c.model_rows),
            ("hybridserve_admitted", "Computed predictions admitted into the cache", c.admitted),
            ("hybridserve_not_admitted", "Computed predictions the admission rule kept out", c.not_admitted),
            ("hybridserve_redis_fallbacks", "Requests answered without Redis because it failed", c.redis_fallbacks),
            ("hybridserve_request_errors", "Requests answered with an error status", c.errors),
        ):
            counter = CounterMetricFamily(name, doc, labels=["mode"])
            counter.add_metric([self._mode], value)
            yield counter
        for name, value in self._gauges().items():
            gauge = GaugeMetricFamily(f"hybridserve_{name}", name.replace("_", " "), labels=["mode"])
            gauge.add_metric([self._mode], value)
            yield gauge


class Metrics:
    """The metrics of one app."""

    def __init__(self, mode: str, gauges: Callable[[], dict[str, float]]) -> None:
        self.mode = mode
        self.counts = Counts()
        self.registry = CollectorRegistry()
        self._latency = Histogram(
            "hybridserve_request_seconds",
            "Server-side request latency by mode and slowest source used",
            ["mode", "source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Bound children: a labels() lookup per request would cost more than the observation.
        self._by_source = {s: self._latency.labels(mode, s) for s in SOURCES}
        self._inference = Histogram(
            "hybridserve_inference_seconds", "Model call time", ["mode"], buckets=LATENCY_BUCKETS, registry=self.registry
        ).labels(mode)
        self._batch = Histogram(
            "hybridserve_batch_rows", "Rows per model call", ["mode"], buckets=BATCH_BUCKETS, registry=self.registry
        ).labels(mode)
        self.registry.register(_CountsCollector(mode, self.counts, gauges))

    def observe_request(self, source: str, seconds: float) -> None:
        """One answered request, labelled by the slowest tier it needed."""
        self.counts.requests += 1
        self._by_source[source].observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        """One model call."""
        self._batch.observe(rows)
        self._inference.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
