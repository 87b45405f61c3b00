"""tuning/verify.py and tuning/calibrate.py: a recommendation checked by a real load test (Locust,
server and Redis processes), tier costs measured by load tests; the window choice and the
simulation of what a run sends, without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.keys import key_stream
from loadtests.tier_costs import TIERS, tier_costs
from serving.settings import Settings
from tuning.calibrate import calibrate
from tuning.recommend import Candidate
from tuning.traces import Trace
from tuning.verify import TOLERANCE_PP, anchor_specs, choose_window, simulate_run, verify

RESULTS = Path(__file__).parent / "data" / "results_small.json"


@pytest.fixture(scope="module")
def trace() -> Trace:
    return Trace.from_keys(key_stream("zipf:1.1", 20, seed=5).take(3000))


def _hybrid(l1: int = 100, head: int = 50, policy: str = "lru") -> Candidate:
    return Candidate("hybrid", head, l1, "always", 0.0, 0.0, 0.0, 0, l1_policy=policy)


def test_the_whole_trace_is_replayed_when_it_fits(trace: Trace) -> None:
    window = choose_window(trace, _hybrid(), rate=100, max_seconds=60)
    assert window.requests == len(trace) and window.steady


def test_a_long_trace_is_cut_where_its_hit_ratio_has_settled(trace: Trace) -> None:
    window = choose_window(trace, _hybrid(), rate=100, max_seconds=25)  # 2,500 of 3,000 fit
    shares = simulate_run(trace, _hybrid(), checkpoints=10)
    assert window.requests <= 2500 and window.requests % 300 == 0
    if window.steady:  # its prefix's hit ratio is within 1 pp of the whole trace's
        assert abs(shares[window.requests // 300 - 1].hit_ratio - shares[-1].hit_ratio) <= 0.01
    assert "prefix" in window.rule


def test_simulated_run_counts_every_mode(trace: Trace) -> None:
    static = Candidate("static", 3360, 0, "always", 0.0, 1.0, 0.0, 3360)
    dynamic = Candidate("dynamic", 0, 0, "always", 0.0, 0.0, 1.0, 0)
    assert simulate_run(trace, static)[-1].hit_ratio == 1.0
    assert simulate_run(trace, dynamic)[-1].hit_ratio == 0.0
    hybrid = simulate_run(trace, _hybrid())[-1]
    assert 0.0 < hybrid.l1 < hybrid.hit_ratio < 1.0


@pytest.mark.slow
def test_load_test_verifies_a_hybrid_recommendation(registry: Path, trace: Trace) -> None:
    """The configuration runs under Locust with the trace's keys; the measured hit ratio is the
    simulated one within 2 pp (different code paths: concurrency, HTTP, Redis) and both sides are
    kept; the measured CPU is compared at the calibration's core speed, the raw figure beside it."""
    costs = tier_costs(json.loads(RESULTS.read_text())["runs"], "traffic-light")
    costs.speed_reference = {"server": 1000.0, "redis": 1000.0}  # a core that ran one probe unit in 1 ms
    short = trace.split(0.5)[0]  # 1,500 requests, about 8 s at 200/s
    result = verify(short, _hybrid(policy="s3fifo"), costs, Settings(registry=registry), slo_p99_ms=1000.0, rate=200.0,
                    rounds=1, anchor_seconds=0.0)
    m, p = result.measured, result.predicted
    assert result.window.requests == len(short) and m["failures"] == 0
    assert m["requests"] == len(short)
    assert result.hit_ratio_pp <= TOLERANCE_PP, result.as_dict()
    assert 0.0 < m["hit_ratio"] < 1.0 and m["cpu_us_per_request"] > 0 and p["cpu_us_per_request"] > 0
    assert {"measured", "predicted", "within_tolerance", "window", "rounds"} <= result.as_dict().keys()
    # No anchor runs: priced by the calibration alone; the run's CPU levelled by its cores' probe
    # readings to the calibration's speed (between the two cores' factors).
    (round_,) = result.rounds
    assert p["anchors"] == {} and p["calibration_cpu_us_per_request"] == p["cpu_us_per_request"]
    assert round_["kept"] and round_["predicted_cpu_us"] == p["cpu_us_per_request"]
    speed = m["core_speed"]
    assert speed["server"]["samples"] > 20 and speed["redis"]["samples"] > 20
    factors = sorted(1000.0 / speed[core]["unit_us"] for core in ("server", "redis"))
    assert factors[0] * 0.999 <= m["cpu_us_per_request"] / m["raw_cpu_us_per_request"] <= factors[1] * 1.001
    assert round_["raw_cpu_us"] == m["raw_cpu_us_per_request"]


@pytest.mark.slow
def test_anchored_round_relevels_every_tier_the_configuration_uses(registry: Path, trace: Trace) -> None:
    """By default each round first runs the calibration's runs of the candidate's tiers (Redis, the
    model, L1 for this hybrid): the prediction is priced by the calibration re-levelled by them,
    the calibration's own prediction kept beside it, and the measured side is the candidate's run."""
    costs = tier_costs(json.loads(RESULTS.read_text())["runs"], "traffic-light")
    short = trace.split(0.25)[0]  # 750 requests
    result = verify(short, _hybrid(policy="s3fifo"), costs, Settings(registry=registry), slo_p99_ms=1000.0, rate=200.0,
                    rounds=1, anchor_seconds=2.0)
    m, p = result.measured, result.predicted
    assert m["requests"] == len(short) and m["failures"] == 0  # the candidate's run, not an anchor's
    assert set(p["anchors"]) == {"redis", "model", "l1"}, p["anchors"]
    assert all(factor > 0 for factor in p["anchors"].values())
    assert p["cpu_us_per_request"] > 0 and p["calibration_cpu_us_per_request"] > 0
    assert p["cpu_us_per_request"] != p["calibration_cpu_us_per_request"]  # re-levelled, not the calibration's
    (round_,) = result.rounds
    assert round_["anchors"] == p["anchors"] and round_["predicted_cpu_us"] == p["cpu_us_per_request"]


def test_anchors_measure_the_tiers_a_configuration_uses() -> None:
    def modes(candidate: Candidate) -> list[str]:
        return [f"{s.mode}/{s.distribution.split(':')[0]}" for s in anchor_specs(candidate, "traffic-light", 300.0)]

    static = Candidate("static", 3360, 0, "always", 0.0, 1.0, 0.0, 3360)
    fronted = Candidate("hybrid", 3360, 500, "always", 0.4, 0.6, 0.0, 3360, full_table=True)
    assert modes(static) == ["static/zipf"]
    assert modes(Candidate("dynamic", 0, 0, "always", 0.0, 0.0, 1.0, 0)) == ["dynamic/zipf"]  # never Redis
    assert modes(fronted) == ["static/zipf", "hybrid/drift"]  # never a model call
    assert modes(_hybrid()) == ["static/zipf", "dynamic/zipf", "hybrid/drift"]
    assert modes(_hybrid(l1=0)) == ["static/zipf", "dynamic/zipf"]
    assert all(s.rate == 300.0 and s.profile == "light" for s in anchor_specs(_hybrid(), "traffic-light", 300.0))


def test_verify_refuses_no_rounds(trace: Trace, registry: Path) -> None:
    costs = tier_costs(json.loads(RESULTS.read_text())["runs"], "traffic-light")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        verify(trace, _hybrid(), costs, Settings(registry=registry), slo_p99_ms=50.0, rounds=0)
    for seconds in (-1.0, 0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="anchor seconds must be 0 .no anchor runs. or a finite number of seconds >= 2"):
            verify(trace, _hybrid(), costs, Settings(registry=registry), slo_p99_ms=50.0, anchor_seconds=seconds)


@pytest.mark.slow
def test_calibration_measures_every_tier_by_load_tests(registry: Path) -> None:
    costs = calibrate(Settings(registry=registry, model_name="traffic-heavy"), qps=80.0, duration_s=2.0, progress=False,
                      repeats=1)
    assert set(costs.curves) == set(TIERS)
    assert len(costs.curves["redis"]) == len(costs.curves["model"]) == 2  # each at two rates: its curve
    clean = [p for p in costs.curves["l1"] if p.p99_of_tier]  # the hot-set runs measure L1's own p99
    assert len(clean) == 2 and len(costs.curves["l1"]) == 3  # and the Zipf mix its CPU in a mix
    # Measured by the all-miss run, not estimated (its size is noise at 2 s runs: the bench has it).
    assert costs.miss_store_cpu_s >= 0 and not any("no hybrid run of only misses" in n for n in costs.notes)
    assert all(p.cpu_s > 0 and p.p99_ms >= p.p50_ms > 0 and p.requests > 0 for ps in costs.curves.values() for p in ps)
    # The heavy model costs more than a Redis hit: the premise of caching it.
    assert costs.at("model", 50).cpu_s > costs.at("redis", 50).cpu_s
    assert 20 < costs.bytes_per_entry < 1000 and costs.precompute_cpu_s_per_key > 0
