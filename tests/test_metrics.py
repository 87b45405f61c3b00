"""serving/metrics.py: plain-count histograms and counters rendered as Prometheus text."""

from __future__ import annotations

from serving.metrics import Buckets, Metrics


def test_buckets_are_cumulative() -> None:
    buckets = Buckets((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0):
        buckets.observe(value)
    assert buckets.cumulative() == [("1.0", 2.0), ("2.0", 3.0), ("+Inf", 4.0)]
    assert buckets.sum == 6.0


def test_render() -> None:
    metrics = Metrics("hybrid", lambda: {"l1_entries": 7.0})
    metrics.counts.l1_hits = 3
    metrics.observe_request("redis", 0.002)
    metrics.observe_batch(4, 0.001)
    text = metrics.render().decode()
    assert 'hybridserve_cache_lookups_total{mode="hybrid",result="hit",tier="l1"} 3.0' in text
    assert 'hybridserve_request_seconds_count{mode="hybrid",source="redis"} 1.0' in text
    assert 'hybridserve_request_seconds_bucket{le="0.0025",mode="hybrid",source="redis"} 1.0' in text
    assert 'hybridserve_batch_rows_sum{mode="hybrid"} 4.0' in text
    assert 'hybridserve_l1_entries{mode="hybrid"} 7.0' in text
