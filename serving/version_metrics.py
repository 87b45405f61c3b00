"""Metrics per model version, and the shadow comparison: what a traffic split is judged by.

Every served version has its own :class:`serving.metrics.Counts` (requests, keys, per-tier hits and
misses, model rows) and request latency by source; the walk of a version's state reports to both
the server's global counts and the version's (:class:`BothObservers`), so the global metrics stay
what they were. A shadow version counts under ``role="shadow"`` and never in the global counts (its
work answers nobody). The shadow's difference from the answered value goes into a histogram per
(primary version, shadow version) of the absolute difference.

A request answered by two versions (a multi-key request split between them) counts one request for
each, with the request's latency and the slowest source that version's keys needed.

Prometheus names (label ``mode`` as everywhere, plus those given): ``hybridserve_version_requests``
and ``hybridserve_version_keys`` (``version``, ``role``), ``hybridserve_version_cache_lookups``
(``version``, ``role``, ``tier``, ``result``), ``hybridserve_version_model_rows`` (``version``,
``role``), ``hybridserve_version_request_seconds`` (histogram: ``version``, ``source``),
``hybridserve_shadow_abs_difference`` (histogram: ``primary``, ``shadow``),
``hybridserve_shadow_dropped`` and ``hybridserve_shadow_errors``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from serving.errors import StoreError
from serving.metrics import LATENCY_BUCKETS, SOURCES, Buckets, Counts

# Absolute differences between a shadow's prediction and the answered one, in the target's units
# (vehicles per hour for the demo models): 0 is "the same float"; the top buckets catch a model
# that is plainly different.
DIFFERENCE_BUCKETS = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
PRIMARY, SHADOW = "primary", "shadow"


class BothObservers:
    """A tier walk's observer that reports to two (the global counts and one version's)."""

    def __init__(self, first: Counts, second: Counts) -> None:
        self._first = first
        self._second = second

    def looked_up(self, tier: str, hits: int, misses: int) -> None:
        self._first.looked_up(tier, hits, misses)
        self._second.looked_up(tier, hits, misses)

    def fell_through(self, tier: str, error: StoreError) -> None:
        self._first.fell_through(tier, error)
        self._second.fell_through(tier, error)

    def admission_decided(self, admitted: int, refused: int) -> None:
        self._first.admission_decided(admitted, refused)
        self._second.admission_decided(admitted, refused)

    def write_failed(self, tier: str, error: StoreError) -> None:
        self._first.write_failed(tier, error)
        self._second.write_failed(tier, error)


class VersionStats:
    """One version's counters (in one role) and its request latency by source."""

    def __init__(self) -> None:
        self.counts = Counts()
        self.latency = {s: Buckets(LATENCY_BUCKETS) for s in SOURCES}

    def observe_request(self, source: str, seconds: float, keys: int) -> None:
        """One request (or its part) this version answered."""
        self.counts.requests += 1
        self.counts.keys += keys
        self.latency[source].observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        """Counters and hit ratios, JSON-ready."""
        c = self.counts
        served = c.l1_hits + c.redis_hits + c.model_rows
        ratio = lambda hits: hits / served if served else 0.0  # noqa: E731
        return {"counts": c.as_dict(), "hit_ratio": {"l1": ratio(c.l1_hits), "redis": ratio(c.redis_hits),
                                                     "total": ratio(c.l1_hits + c.redis_hits)},
                "requests_by_source": {s: sum(b.counts) for s, b in self.latency.items()},
                "seconds": sum(b.sum for b in self.latency.values())}


class ShadowDifference:
    """The absolute differences between one shadow's and one primary's predictions."""

    def __init__(self) -> None:
        self.buckets = Buckets(DIFFERENCE_BUCKETS)
        self.max = 0.0

    def observe(self, difference: float) -> None:
        """One key compared."""
        self.buckets.observe(difference)
        self.max = max(self.max, difference)

    def as_dict(self) -> dict[str, Any]:
        """Count, mean, max and the share of keys on which the two agreed exactly."""
        count = sum(self.buckets.counts)
        return {"compared": count, "mean_abs": self.buckets.sum / count if count else 0.0, "max_abs": self.max,
                "identical": self.buckets.counts[0] / count if count else 0.0,
                "buckets": dict(self.buckets.cumulative())}


class VersionMetrics:
    """Every version's stats and every shadow comparison of one server process.

    Attached to :class:`serving.metrics.Metrics` (``metrics.attach``), so it is part of each
    worker's snapshot and of the merged ``/metrics`` of all workers.
    """

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], VersionStats] = {}
        self.shadows: dict[tuple[str, str], ShadowDifference] = {}
        self.shadow_dropped = 0
        self.shadow_errors = 0

    def of(self, version: str, role: str = PRIMARY) -> VersionStats:
        """The stats of ``version`` in ``role`` (made on first use; they outlive reloads)."""
        stats = self.versions.get((version, role))
        if stats is None:
            stats = self.versions[(version, role)] = VersionStats()
        return stats

    def difference(self, primary: str, shadow: str) -> ShadowDifference:
        """The comparison of ``shadow`` against ``primary`` (made on first use)."""
        found = self.shadows.get((primary, shadow))
        if found is None:
            found = self.shadows[(primary, shadow)] = ShadowDifference()
        return found

    def as_dict(self) -> dict[str, Any]:
        """For the stats JSON: ``versions`` (answering ones) and ``shadow``."""
        return {
            "versions": {v: s.as_dict() for (v, role), s in sorted(self.versions.items()) if role == PRIMARY},
            "shadow": {
                "versions": {v: s.as_dict() for (v, role), s in sorted(self.versions.items()) if role == SHADOW},
                "differences": [{"primary": p, "shadow": s, **d.as_dict()} for (p, s), d in sorted(self.shadows.items())],
                "dropped": self.shadow_dropped,
                "errors": self.shadow_errors,
            },
        }

    # ----- workers: snapshot and merge (serving.metrics.Metrics.attach) --------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready counts, for another worker to merge."""
        return {
            "versions": [[v, role, s.counts.as_dict(), {src: [b.counts, b.sum] for src, b in s.latency.items()}]
                         for (v, role), s in self.versions.items()],
            "shadows": [[p, s, d.buckets.counts, d.buckets.sum, d.max] for (p, s), d in self.shadows.items()],
            "dropped": self.shadow_dropped, "errors": self.shadow_errors,
        }

    def absorb(self, snapshot: dict[str, Any]) -> None:
        """Add another worker's snapshot to these counts."""
        for version, role, counts, latency in snapshot["versions"]:
            stats = self.of(version, role)
            for name, value in counts.items():
                setattr(stats.counts, name, getattr(stats.counts, name) + value)
            for source, (buckets, total) in latency.items():
                _add(stats.latency[source], buckets, total)
        for primary, shadow, buckets, total, largest in snapshot["shadows"]:
            found = self.difference(primary, shadow)
            _add(found.buckets, buckets, total)
            found.max = max(found.max, largest)
        self.shadow_dropped += snapshot["dropped"]
        self.shadow_errors += snapshot["errors"]

    def empty(self) -> VersionMetrics:
        """A new, empty one (what a merge starts from)."""
        return VersionMetrics()

    def collector(self, mode: str) -> Collector:
        """The Prometheus collector of these metrics."""
        return _VersionCollector(mode, self)


def _add(buckets: Buckets, counts: list[int], total: float) -> None:
    buckets.counts = [a + b for a, b in zip(buckets.counts, counts)]
    buckets.sum += total


class _VersionCollector(Collector):
    def __init__(self, mode: str, metrics: VersionMetrics) -> None:
        self._mode = mode
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        mode, m = self._mode, self._metrics
        requests = CounterMetricFamily("hybridserve_version_requests", "Requests answered, per model version", labels=["mode", "version", "role"])
        keys = CounterMetricFamily("hybridserve_version_keys", "Keys answered, per model version", labels=["mode", "version", "role"])
        rows = CounterMetricFamily("hybridserve_version_model_rows", "Rows computed by the model, per version", labels=["mode", "version", "role"])
        lookups = CounterMetricFamily("hybridserve_version_cache_lookups", "Cache lookups per version, tier and result",
                                      labels=["mode", "version", "role", "tier", "result"])
        latency = HistogramMetricFamily("hybridserve_version_request_seconds", "Server-side request latency per answering "
                                        "version and slowest source used", labels=["mode", "version", "source"])
        for (version, role), stats in sorted(m.versions.items()):
            c = stats.counts
            requests.add_metric([mode, version, role], c.requests)
            keys.add_metric([mode, version, role], c.keys)
            rows.add_metric([mode, version, role], c.model_rows)
            for tier, hits, misses in (("l1", c.l1_hits, c.l1_misses), ("redis", c.redis_hits, c.redis_misses)):
                lookups.add_metric([mode, version, role, tier, "hit"], hits)
                lookups.add_metric([mode, version, role, tier, "miss"], misses)
            if role == PRIMARY:
                for source, buckets in stats.latency.items():
                    latency.add_metric([mode, version, source], buckets.cumulative(), buckets.sum)
        yield from (requests, keys, rows, lookups, latency)
        difference = HistogramMetricFamily("hybridserve_shadow_abs_difference", "Absolute difference between the shadow "
                                           "version's prediction and the answered one, per key", labels=["mode", "primary", "shadow"])
        for (primary, shadow), found in sorted(m.shadows.items()):
            difference.add_metric([mode, primary, shadow], found.buckets.cumulative(), found.buckets.sum)
        yield difference
        for name, doc, value in (("hybridserve_shadow_dropped", "Shadow requests dropped because the shadow queue was full", m.shadow_dropped),
                                 ("hybridserve_shadow_errors", "Shadow requests that failed (never seen by a client)", m.shadow_errors)):
            counter = CounterMetricFamily(name, doc, labels=["mode"])
            counter.add_metric([mode], value)
            yield counter
