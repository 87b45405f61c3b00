"""loadtests/tier_costs.py: tier curves from load-test records (a recorded results.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.tier_costs import MIN_L1_SHARE, tier_costs

RESULTS = Path(__file__).parent / "data" / "results_small.json"


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return json.loads(RESULTS.read_text())["runs"]


def _cpu(record: dict) -> float:
    return (record["server_cpu_us_per_request"] + record["redis_cpu_us_per_request"]) / 1e6


def test_each_tier_comes_from_the_runs_that_measure_it(runs: list[dict]) -> None:
    costs = tier_costs(runs, "traffic-heavy")
    static, dynamic = (next(r for r in runs if r["profile"] == "heavy" and r["mode"] == m) for m in ("static", "dynamic"))
    (redis,), (model,) = costs.curves["redis"], costs.curves["model"]
    assert redis.cpu_s == pytest.approx(_cpu(static)) and redis.p99_ms == static["latency_ms"]["p99"]
    assert model.cpu_s == pytest.approx(_cpu(dynamic)) and model.rate == dynamic["achieved_rps"]
    assert redis.requests == static["requests"] and model.requests == dynamic["requests"]
    assert costs.bytes_per_entry == static["redis_bytes"] / static.get("redis_keys", static["key_count"])


def test_l1_is_what_the_hybrid_run_leaves_over(runs: list[dict]) -> None:
    """The decomposition reproduces each hybrid run's CPU from its tier shares."""
    costs = tier_costs(runs, "traffic-heavy")
    hybrids = [r for r in runs if r["profile"] == "heavy" and r["mode"] == "hybrid" and r["hit_ratio"]["l1"] >= MIN_L1_SHARE]
    assert len(costs.curves["l1"]) == len(hybrids) == 1
    run = hybrids[0]
    shares = {"l1": run["hit_ratio"]["l1"], "redis": run["hit_ratio"]["redis"], "model": 1 - run["hit_ratio"]["total"]}
    rebuilt = costs.cpu_per_request(shares, run["achieved_rps"], misses_pass_store=True)
    assert rebuilt == pytest.approx(_cpu(run), rel=1e-3)  # per prediction served vs per HTTP request
    # A miss behind Redis costs more than the same model call in a dynamic run.
    assert rebuilt > costs.cpu_per_request(shares, run["achieved_rps"], misses_pass_store=False)
    assert 0 < costs.at("l1", 200).cpu_s < costs.at("redis", 200).cpu_s < costs.at("model", 200).cpu_s


def test_curves_interpolate_in_log_rate_and_say_when_they_extrapolate(runs: list[dict]) -> None:
    low, high = dict(runs[4]), dict(runs[4])  # heavy dynamic
    low.update(achieved_rps=100.0, server_cpu_us_per_request=2000.0, latency_ms={**low["latency_ms"], "p99": 10.0})
    high.update(achieved_rps=400.0, server_cpu_us_per_request=1000.0, latency_ms={**high["latency_ms"], "p99": 40.0})
    costs = tier_costs([r for r in runs if r["mode"] != "dynamic"] + [low, high], "traffic-heavy")
    middle = costs.at("model", 200.0)  # halfway in log rate
    assert middle.cpu_s == pytest.approx(1500e-6) and middle.p99_ms == pytest.approx(25.0) and not middle.extrapolated
    beyond = costs.at("model", 1000.0)
    assert beyond.extrapolated and beyond.p99_ms == 40.0


def test_missing_runs_are_named(runs: list[dict]) -> None:
    with pytest.raises(ValueError, match="no dynamic run of traffic-heavy"):
        tier_costs([r for r in runs if r["mode"] != "dynamic"], "traffic-heavy")
    with pytest.raises(ValueError, match="no static run of traffic-other"):
        tier_costs(runs, "traffic-other")
