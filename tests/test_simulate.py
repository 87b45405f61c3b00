"""Tests for tuning/simulate.py: libCacheSim curves against the reference table, server replays."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tuning.simulate import (
    DEFAULT_FRACTIONS,
    LIBCACHESIM_POLICIES,
    MIN_CACHE_SIZE,
    REDIS_POLICIES,
    MissRatioCurve,
    ServerPolicy,
    cache_sizes,
    canonical_policy,
    miss_ratio_curves,
    oracle_head_request_ratio,
    ServerReplay,
    simulate_server_policy,
    top_keys,
)
from tuning.traces import Trace, read_trace

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
TOLERANCE = 0.005

# shared/traces/README.md: miss ratios counting objects, libCacheSim 0.3.5.
REFERENCE: dict[str, dict[float, dict[str, float]]] = {
    "cache2k-web07": {
        0.01: {"LRU": 0.609, "LFU": 0.694, "S3-FIFO": 0.563, "W-TinyLFU": 0.608, "Belady": 0.466},
        0.10: {"LRU": 0.443, "LFU": 0.484, "S3-FIFO": 0.418, "W-TinyLFU": 0.441, "Belady": 0.319},
    },
    "cloudphysics-io": {
        0.01: {"LRU": 0.838, "LFU": 0.850, "S3-FIFO": 0.830, "W-TinyLFU": 0.847, "Belady": 0.793},
        0.10: {"LRU": 0.805, "LFU": 0.791, "S3-FIFO": 0.755, "W-TinyLFU": 0.776, "Belady": 0.629},
    },
}


def _load(name: str) -> Trace:
    path = TRACES / f"{name}.keys.txt"
    if not path.exists():
        pytest.skip(f"real trace {path} is absent (expected in ../shared/traces beside the project)")
    return read_trace(path)


@pytest.fixture(scope="module")
def web07() -> Trace:
    return _load("cache2k-web07")


def _zipf_trace(n_requests: int = 20_000, n_keys: int = 2_000, seed: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1)
    keys = rng.choice(n_keys, size=n_requests, p=weights / weights.sum())
    return Trace.from_keys([f"{key // 168}:{key % 168}" for key in keys.tolist()], times=np.arange(n_requests) * 0.01)


def _by_policy(curves: list[MissRatioCurve]) -> dict[str, list[float]]:
    return {curve.policy: [point.miss_ratio for point in curve.points] for curve in curves}


# --------------------------------------------------------------------------- libCacheSim curves


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_curves_match_reference_table(name: str) -> None:
    trace = _load(name)
    fractions = sorted(REFERENCE[name])
    policies = list(REFERENCE[name][fractions[0]])
    measured = _by_policy(miss_ratio_curves(trace, policies, fractions))
    for column, fraction in enumerate(fractions):
        for policy, expected in REFERENCE[name][fraction].items():
            assert measured[policy][column] == pytest.approx(expected, abs=TOLERANCE), (policy, fraction)


@pytest.mark.slow
def test_belady_is_never_worse(web07: Trace) -> None:
    curves = miss_ratio_curves(web07, LIBCACHESIM_POLICIES + REDIS_POLICIES, DEFAULT_FRACTIONS)
    belady = {point.cache_size: point.miss_ratio for point in _curve(curves, "Belady").points}
    compared = 0
    for curve in curves:
        for point in curve.points:
            if point.cache_size in belady:  # a clamped point is a larger cache than Belady's there
                assert belady[point.cache_size] <= point.miss_ratio + 1e-9, (curve.policy, point)
                compared += 1
    assert compared >= len(curves) * (len(DEFAULT_FRACTIONS) - 1)


def _curve(curves: list[MissRatioCurve], policy: str) -> MissRatioCurve:
    return next(curve for curve in curves if curve.policy == policy)


def test_small_sizes_are_clamped_and_recorded() -> None:
    trace = _zipf_trace(n_requests=2_000, n_keys=300)
    curves = {c.policy: c for c in miss_ratio_curves(trace, ["S3-FIFO", "W-TinyLFU", "TwoQ", "LRU"], [0.001, 0.5])}
    for policy, minimum in MIN_CACHE_SIZE.items():
        small, large = curves[policy].points
        assert (small.cache_size, small.clamped_from) == (minimum, 1)
        assert 0.0 < small.miss_ratio < 1.0  # simulated, not the all-miss of a broken configuration
        assert large.clamped_from is None
    assert curves["LRU"].points[0].cache_size == 1 and curves["LRU"].points[0].clamped_from is None


def test_curves_serialise_to_json() -> None:
    curves = miss_ratio_curves(_zipf_trace(n_requests=3_000), ["lru", "redis-allkeys-lfu"], [0.01, 0.1])
    data = json.loads(json.dumps([dataclasses.asdict(curve) for curve in curves]))
    assert [entry["policy"] for entry in data] == ["LRU", "redis-allkeys-lfu"]
    assert data[0]["points"][1]["cache_size"] == int(0.1 * data[0]["n_unique"])


def test_policy_names_and_sizes_are_validated() -> None:
    assert canonical_policy("s3fifo") == "S3-FIFO" and canonical_policy("w_tinylfu") == "W-TinyLFU"
    with pytest.raises(ValueError, match="unknown cache policy 'MRU'.*LRU"):
        canonical_policy("MRU")
    assert cache_sizes(20_484, [0.01, 0.1]) == [204, 2048]
    with pytest.raises(ValueError, match=r"within \(0, 1\]"):
        cache_sizes(100, [0.0])


# --------------------------------------------------------------------------- server policies


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_server_l1_matches_libcachesim_lru(web07: Trace, fraction: float) -> None:
    size = cache_sizes(web07.n_unique, [fraction])[0]
    lru = miss_ratio_curves(web07, ["LRU"], [fraction])[0].points[0].miss_ratio
    result = simulate_server_policy(web07, ServerPolicy.hybrid(l1_capacity=size), train_fraction=0.0)
    assert result.requests == web07.n_requests
    assert 1.0 - result.l1_hit_ratio == pytest.approx(lru, abs=TOLERANCE)


def _scan_heavy_trace(seed: int = 4) -> Trace:
    """Zipf traffic over 2,000 keys with a one-pass scan of 500 new keys after every 2,000 requests:
    the shape where LRU loses its hot keys and S3-FIFO does not."""
    zipf = _zipf_trace(16_000, 2_000, seed)
    keys = [zipf.keys[i] for i in zipf.ids.tolist()]
    mixed: list[str] = []
    for start in range(0, len(keys), 2_000):
        mixed += keys[start:start + 2_000] + [f"scan-{start}-{n}" for n in range(500)]
    return Trace.from_keys(mixed)


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_server_s3fifo_matches_libcachesim_s3fifo_and_beats_lru_on_scans(fraction: float) -> None:
    """The server's S3-FIFO L1 is the algorithm libCacheSim simulates (same defaults), so the
    tuner can recommend what it measured; and it is the scan-resistant choice."""
    trace = _scan_heavy_trace()
    size = cache_sizes(trace.n_unique, [fraction])[0]
    curves = _by_policy(miss_ratio_curves(trace, ["LRU", "S3-FIFO"], [fraction]))

    def server(policy: str) -> float:
        replay = ServerPolicy.hybrid(l1_capacity=max(size, MIN_CACHE_SIZE["S3-FIFO"]), l1_policy=policy)
        return 1.0 - simulate_server_policy(trace, replay, train_fraction=0.0).l1_hit_ratio

    # Within 2 pp, the goal: on this trace the server's S3-FIFO measured 0.1 pp (1%) and
    # 1.3 pp (10%) above libCacheSim's, on cache2k-web07 within 0.1 pp at both sizes.
    assert server("s3fifo") == pytest.approx(curves["S3-FIFO"][0], abs=0.02)
    assert server("s3fifo") < server("lru") - 0.02


def test_admission_after_two_admits_less(web07: Trace) -> None:
    def admissions(rule: str) -> int:
        policy = ServerPolicy.hybrid(l1_capacity=1_000, admission=rule)
        return simulate_server_policy(web07, policy, train_fraction=0.0).admissions

    assert admissions("after:2") < admissions("always")


def test_hybrid_tiers_add_up() -> None:
    policy = ServerPolicy.hybrid(head_size=50, l1_capacity=100, admission="after:2")
    result = simulate_server_policy(_zipf_trace(), policy)
    assert result.l1_hit_ratio + result.l2_hit_ratio + result.miss_ratio == pytest.approx(1.0)
    assert result.l1_hits + result.l2_hits + result.misses == result.requests == 10_000
    assert min(result.l1_hits, result.l2_hits, result.misses, result.rejected_admissions) > 0
    # With an unbounded Redis the head never misses: misses come from the other keys only.
    assert result.miss_ratio <= 1.0 - result.head_request_ratio
    json.dumps(dataclasses.asdict(result))


def test_static_serves_the_head_from_redis() -> None:
    trace = _zipf_trace()
    result = simulate_server_policy(trace, ServerPolicy.static(head_size=100))
    assert result.l1_hits == 0 and result.admissions == 0
    assert result.l2_hit_ratio == result.head_request_ratio > 0.3
    assert result.miss_ratio == pytest.approx(1.0 - result.head_request_ratio)


def test_static_head_shows_drift() -> None:
    # The first half favours keys 0..99, the second half keys 100..199: a head chosen early misses.
    rng = np.random.default_rng(1)
    early, late = rng.integers(0, 100, 5_000), rng.integers(100, 200, 5_000)
    trace = Trace.from_keys([str(key) for key in np.concatenate([early, late]).tolist()])
    result = simulate_server_policy(trace, ServerPolicy.static(head_size=100))
    assert result.head_request_ratio == 0.0 and result.miss_ratio == 1.0
    assert result.oracle_head_request_ratio == 1.0


def test_top_keys_and_oracle_head() -> None:
    trace = Trace.from_keys(list("abacabad"))
    assert [trace.keys[i] for i in top_keys(trace, 2).tolist()] == ["a", "b"]
    assert len(top_keys(trace, 10)) == 4
    assert oracle_head_request_ratio(trace, 1) == 0.5


def test_bounded_redis_evicts() -> None:
    trace = _zipf_trace()
    unbounded = simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=20))
    bounded = simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=20, l2_capacity=100))
    assert unbounded.l2_evictions == 0 and bounded.l2_evictions > 0
    assert bounded.miss_ratio > unbounded.miss_ratio


@pytest.mark.parametrize("ttl", ["l1_ttl_s", "l2_ttl_s"])
def test_ttls_expire_in_trace_time(ttl: str) -> None:
    trace = _zipf_trace()  # 100 requests per trace second
    forever = simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=500))
    short = simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=500, **{ttl: 0.5}))
    if ttl == "l1_ttl_s":
        assert short.l1_hit_ratio < forever.l1_hit_ratio and short.miss_ratio == forever.miss_ratio
    else:
        assert short.miss_ratio > forever.miss_ratio


def test_head_keys_never_expire() -> None:
    trace = _zipf_trace()
    result = simulate_server_policy(trace, ServerPolicy.hybrid(head_size=200, l2_ttl_s=0.01))
    assert result.head_requests > 0
    assert result.l2_hits >= result.head_requests  # no L1: every head request is a Redis hit


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: simulate_server_policy(t, ServerPolicy.static(10), train_fraction=0.0), "head_size > 0"),
        (lambda t: simulate_server_policy(t, ServerPolicy(), train_fraction=1.0), r"within \[0, 1\)"),
        (lambda t: simulate_server_policy(Trace.from_keys([]), ServerPolicy()), "leaves no requests"),
        (lambda t: simulate_server_policy(Trace.from_keys(t.keys), ServerPolicy(l2_ttl_s=5)), "timestamps"),
        (lambda t: ServerPolicy(admission="sometimes"), "after:N"),
        (lambda t: ServerPolicy(l2_eviction="volatile-ttl"), "allkeys-lru"),
        (lambda t: ServerPolicy(l2_capacity=0), "l2_capacity"),
        (lambda t: ServerPolicy(mode="static", l1_capacity=5), "static mode has no L1"),
        (lambda t: ServerPolicy(mode="batch"), "mode must be one of"),
        (lambda t: ServerPolicy(mode="dynamic", l1_capacity=5), "dynamic mode has no caches"),
        (lambda t: ServerPolicy(l1_capacity=-1), "l1_capacity must be >= 0"),
    ],
)
def test_server_policy_errors(call: Callable[[Trace], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_zipf_trace(n_requests=100))


def test_policy_gap_names_the_best_of_each_side() -> None:
    from tuning.curves import policy_gap, trace_curves

    curves = trace_curves(_scan_heavy_trace(), fractions=[0.01, 0.1])
    assert {"server L1 lru", "server L1 s3fifo", "redis-allkeys-lru", "S3-FIFO", "Belady", "static head"} <= curves.keys()
    for gap in policy_gap(curves):
        assert gap["library_policy"] != "Belady"
        assert gap["gap_pp"] == pytest.approx((gap["server_miss_ratio"] - gap["library_miss_ratio"]) * 100)
        assert gap["gap_pp"] <= 2.0  # the server's S3-FIFO closes the gap on a scan-heavy trace
    assert "first half" in curves["static head"]["basis"]


def test_tinylfu_admission_replays_like_after_two_on_a_fresh_sketch() -> None:
    """The sketch filter runs in the replay through the same Admission the server builds; on a
    trace far smaller than its width it admits what after:2 admits, give or take collisions."""
    trace = _zipf_trace(5_000, 2_000)

    def admissions(rule: str) -> int:
        return simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=100, admission=rule), train_fraction=0.0).admissions

    assert admissions("tinylfu") == pytest.approx(admissions("after:2"), rel=0.02)
    assert admissions("tinylfu") < admissions("always")


def test_a_sequential_replay_sees_every_write_at_once() -> None:
    replay = ServerReplay(ServerPolicy.hybrid(l1_capacity=100), in_flight=0)
    sources = [replay.serve(key) for key in ["3:1", "3:1", "3:1", "4:2", "3:1"]]
    assert sources == ["model", "l1", "l1", "model", "l1"]


@pytest.mark.parametrize("in_flight", [0.5, 2.0])
def test_requests_in_flight_do_not_see_each_others_admissions(in_flight: float) -> None:
    """On a concurrent server a request overlapping a miss of the same key misses too. With Poisson
    arrivals the requests a miss overlaps are a Poisson count of mean ``in_flight``, and a repeat
    after them hits: the misses of a repeated key are a run at its start, of 1 + about that many
    (a little fewer: a repeat that missed may finish first and write the value sooner)."""
    replay = ServerReplay(ServerPolicy.hybrid(l1_capacity=100_000), in_flight=in_flight)
    extra = []
    for block in range(2000):
        sources = [replay.serve(f"{block}:1") for _ in range(12)]
        misses = sources.count("model")
        assert sources[:misses] == ["model"] * misses  # once it hits it keeps hitting
        extra.append(misses - 1)
    assert 0.7 * in_flight <= sum(extra) / len(extra) <= 1.05 * in_flight
    assert max(extra) > in_flight  # a count, not the mean every time


def test_in_flight_replay_of_a_web_trace_loses_the_hits_of_immediate_repeats(web07: Trace) -> None:
    """A web trace repeats keys back to back; with one request in flight on average, a repeat of a
    miss misses when it arrives before the miss has finished, a share 1 - e^-1 (63%) of the time."""
    policy = ServerPolicy.hybrid(l1_capacity=1000, l1_policy="s3fifo")
    sequential, concurrent = ServerReplay(policy), ServerReplay(policy, in_flight=1)
    repeats_after_a_miss, previous = 0, ("", "")
    for key in (web07.keys[i] for i in web07.ids[:20_000].tolist()):
        source = sequential.serve(key)
        concurrent.serve(key)
        repeats_after_a_miss += previous == (key, "model")
        previous = (key, source)
    extra = concurrent.counts.model_rows - sequential.counts.model_rows
    assert repeats_after_a_miss > 100 and 0.5 * repeats_after_a_miss <= extra <= 0.8 * repeats_after_a_miss
