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


def test_render_merges_other_workers_snapshots() -> None:
    mine, other = Metrics("hybrid", lambda: {"l1_entries": 2.0}), Metrics("hybrid", lambda: {"l1_entries": 5.0})
    mine.counts.keys, other.counts.keys = 3, 4
    mine.observe_request("l1", 0.0003)
    other.observe_request("l1", 0.0003)
    other.observe_request("model", 0.02)
    text = mine.render([other.snapshot()]).decode()
    assert 'hybridserve_keys_total{mode="hybrid"} 7.0' in text
    assert 'hybridserve_request_seconds_count{mode="hybrid",source="l1"} 2.0' in text
    assert 'hybridserve_request_seconds_count{mode="hybrid",source="model"} 1.0' in text
    assert 'hybridserve_l1_entries{mode="hybrid"} 7.0' in text
    assert mine.counts.keys == 3, "merging never changes this worker's own counts"
