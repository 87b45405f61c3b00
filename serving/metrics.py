"""Prometheus metrics of one server: request latency by mode and source, per-tier hits and misses,
model inference time and batch sizes, Redis errors and fallbacks.

Hot-path counters and histograms are plain integers (:class:`Counts`, :class:`Buckets`; an update
costs well under a microsecond); a custom collector turns them into Prometheus counters and
histograms when ``/metrics`` is scraped. Each app has its own
registry, so several apps can live in one process (tests). Workers of one server share their
counts through snapshot files (:class:`WorkerSnapshots`), merged by the worker a scrape reaches.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from serving.drift import metric_families, monitoring_report
from serving.errors import CorruptPrediction, StoreError

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
    redis_write_errors: int = 0
    corrupt_values: int = 0

    def as_dict(self) -> dict[str, int]:
        """All counters by name."""
        return asdict(self)

    # The tier walk's observer (serving.tiers.TierObserver): the server's counts and the tuner's
    # replay counts are the same object, so both count the same way.

    def looked_up(self, tier: str, hits: int, misses: int) -> None:
        """A tier answered ``hits`` keys and missed ``misses``."""
        if tier == "l1":
            self.l1_hits += hits
            self.l1_misses += misses
        elif tier == "redis":
            self.redis_hits += hits
            self.redis_misses += misses
        else:
            self.model_rows += hits

    def fell_through(self, tier: str, error: StoreError) -> None:
        """Redis failed (or held a corrupt value) and the model answered instead."""
        self.redis_fallbacks += 1
        if isinstance(error, CorruptPrediction):
            self.corrupt_values += 1

    def admission_decided(self, admitted: int, refused: int) -> None:
        """Computed values let into the caches, and those the admission rule kept out."""
        self.admitted += admitted
        self.not_admitted += refused

    def write_failed(self, tier: str, error: StoreError) -> None:
        """A cache write failed (e.g. Redis full); the values were still served."""
        self.redis_write_errors += 1


class _CountsCollector(Collector):
    def __init__(self, mode: str, counts: Counts, gauges: Callable[[], dict[str, float]], metrics: Metrics) -> None:
        self._mode = mode
        self._counts = counts
        self._gauges = gauges
        self._metrics = metrics

    def _histograms(self) -> Iterator[HistogramMetricFamily]:
        m, mode = self._metrics, self._mode
        latency = HistogramMetricFamily("hybridserve_request_seconds",
                                        "Server-side request latency by mode and slowest source used", labels=["mode", "source"])
        for source, buckets in m.latency.items():
            latency.add_metric([mode, source], buckets.cumulative(), buckets.sum)
        yield latency
        for name, doc, buckets in (("hybridserve_inference_seconds", "Model call time", m.inference),
                                   ("hybridserve_batch_rows", "Rows per model call", m.batch_rows)):
            family = HistogramMetricFamily(name, doc, labels=["mode"])
            family.add_metric([mode], buckets.cumulative(), buckets.sum)
            yield family

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield from self._histograms()
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
            ("hybridserve_redis_write_errors", "Cache writes Redis refused or missed (values still served)", c.redis_write_errors),
            ("hybridserve_corrupt_values", "Stored values that were not a finite float32 (never served)", c.corrupt_values),
            ("hybridserve_request_errors", "Requests answered with an error status", c.errors),
        ):
            counter = CounterMetricFamily(name, doc, labels=["mode"])
            counter.add_metric([self._mode], value)
            yield counter
        outside = CounterMetricFamily("hybridserve_feature_out_of_range", "Raw-feature values outside the training range "
                                      "(served, but the inputs drift from what the model was trained on)", labels=["mode", "feature"])
        for feature, count in sorted(self._metrics.out_of_range.items()):
            outside.add_metric([self._mode, feature], count)
        yield outside
        for name, value in self._gauges().items():
            gauge = GaugeMetricFamily(f"hybridserve_{name}", name.replace("_", " "), labels=["mode"])
            gauge.add_metric([self._mode], value)
            yield gauge
        yield from metric_families(self._mode, monitoring_report([self._metrics.drift(), *self._metrics.drift_of_others]))


class Buckets:
    """A histogram kept as plain counts: one bisect and two additions per observation.

    prometheus_client's Histogram takes a lock and bumps one locked value per bucket; on a request
    that costs tens of microseconds in all, that showed in the profile. The server is one event
    loop, so nothing here needs a lock; :class:`_CountsCollector` exposes these at scrape time.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound, count of values <= bound)."""
        out, running = [], 0
        for bound, count in zip([*(str(float(b)) for b in self.bounds), "+Inf"], self.counts):
            running += count
            out.append((bound, float(running)))
        return out


class MetricsPart(Protocol):
    """Metrics kept by another module (per-version counts) that travel with these: exposed by its
    own collector, part of each worker's snapshot and of the merge."""

    def snapshot(self) -> dict[str, Any]: ...
    def absorb(self, snapshot: dict[str, Any]) -> None: ...
    def empty(self) -> MetricsPart: ...
    def collector(self, mode: str) -> Collector: ...


class Metrics:
    """The metrics of one app."""

    def __init__(self, mode: str, gauges: Callable[[], dict[str, float]],
                 drift: Callable[[], dict[str, Any] | None] = lambda: None) -> None:
        self.mode = mode
        self.gauges = gauges
        self.drift = drift  # this worker's drift window (serving.drift.DriftMonitor.snapshot)
        self.drift_of_others: list[dict[str, Any] | None] = []  # the other workers' (a merged render)
        self.counts = Counts()
        self.registry = CollectorRegistry()
        self.latency = {s: Buckets(LATENCY_BUCKETS) for s in SOURCES}
        self.inference = Buckets(LATENCY_BUCKETS)
        self.batch_rows = Buckets(BATCH_BUCKETS)
        self.out_of_range: dict[str, int] = {}
        self.parts: dict[str, MetricsPart] = {}
        self.registry.register(_CountsCollector(mode, self.counts, gauges, self))

    def attach(self, name: str, part: MetricsPart) -> None:
        """Expose ``part`` with these metrics, in snapshots and merges under ``name``."""
        self.parts[name] = part
        self.registry.register(part.collector(self.mode))

    def observe_request(self, source: str, seconds: float) -> None:
        """One answered request, labelled by the slowest tier it needed."""
        self.counts.requests += 1
        self.latency[source].observe(seconds)

    def observe_out_of_range(self, features: list[str]) -> None:
        """Raw-feature values outside their training range, one feature name per value."""
        for feature in features:
            self.out_of_range[feature] = self.out_of_range.get(feature, 0) + 1

    def observe_batch(self, rows: int, seconds: float) -> None:
        """One model call."""
        self.batch_rows.observe(rows)
        self.inference.observe(seconds)

    def _histograms(self) -> dict[str, Buckets]:
        return {**{f"latency:{s}": b for s, b in self.latency.items()}, "inference": self.inference, "batch_rows": self.batch_rows}

    def snapshot(self) -> dict[str, Any]:
        """Counters, histogram counts and gauges, JSON-ready: what another worker merges."""
        return {"counts": self.counts.as_dict(), "gauges": self.gauges(), "drift": self.drift(),
                "histograms": {name: [b.counts, b.sum] for name, b in self._histograms().items()},
                "parts": {name: part.snapshot() for name, part in self.parts.items()}}

    def _absorb(self, snapshot: dict[str, Any]) -> None:
        for name, value in snapshot["counts"].items():
            setattr(self.counts, name, getattr(self.counts, name) + value)
        for name, (counts, total) in snapshot["histograms"].items():
            buckets = self._histograms()[name]
            buckets.counts = [a + b for a, b in zip(buckets.counts, counts)]
            buckets.sum += total
        for name, part in snapshot.get("parts", {}).items():
            if name in self.parts:
                self.parts[name].absorb(part)

    def render(self, others: Sequence[dict[str, Any]] = ()) -> bytes:
        """The Prometheus text exposition; with ``others`` (snapshots of the other workers of this
        server), of all of them together: counters and histograms summed, gauges summed too (L1
        entries over all workers; the breaker gauge counts workers whose breaker is open)."""
        if not others:
            return generate_latest(self.registry)
        mine = self.snapshot()
        gauges: Counter[str] = Counter()
        for snapshot in (mine, *others):
            gauges.update(snapshot["gauges"])
        # Drift windows are merged from their bin counts (serving.drift.monitoring_report), not summed as gauges.
        merged = Metrics(self.mode, lambda: dict(gauges), lambda: mine["drift"])
        merged.drift_of_others = [snapshot.get("drift") for snapshot in others]
        for name, part in self.parts.items():
            merged.attach(name, part.empty())
        for snapshot in (mine, *others):
            merged._absorb(snapshot)
        return generate_latest(merged.registry)


class WorkerSnapshots:
    """Each worker's metrics in a file of the shared ``worker_dir``, merged by whichever worker a
    scrape reaches (prometheus_client's multiprocess mode does the same with mmapped files per
    metric; our counters are plain integers, so a JSON snapshot every ``every_s`` costs the hot
    path nothing). A scrape sees the other workers' counts as of their last snapshot (at most
    ``every_s`` old) and its own live; a worker that died keeps its last counts, as counters should.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"metrics-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    def write(self, metrics: Metrics) -> None:
        """Replace this worker's snapshot (atomically: a reader never sees half a file)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(metrics.snapshot()))
        os.replace(tmp, self.path)

    def others(self) -> list[dict[str, Any]]:
        """The other workers' last snapshots."""
        found = []
        for path in self.directory.glob("metrics-*.json"):
            if path != self.path:
                try:
                    found.append(orjson.loads(path.read_bytes()))
                except (OSError, orjson.JSONDecodeError):
                    continue  # a worker's file replaced between listing and reading
        return found

    def start(self, metrics: Metrics, every_s: float) -> None:
        """Write a snapshot every ``every_s`` seconds until :meth:`stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run(metrics, every_s))

    async def _run(self, metrics: Metrics, every_s: float) -> None:
        while True:
            self.write(metrics)
            await asyncio.sleep(every_s)

    async def stop(self) -> None:
        """Stop writing (the last snapshot stays: its counts still count)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
