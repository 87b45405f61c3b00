"""tuning.recommend: the choice meets the SLO it was given, says so when none can, ranks by cost."""

from __future__ import annotations

import pytest

from loadtests.cost import HOURS_PER_MONTH, Prices
from loadtests.keys import key_stream
from tuning.calibrate import TierCost, TierCosts
from tuning.recommend import P99_TAIL_SHARE, estimate_p99, format_table, recommend
from tuning.traces import Trace

KEY_COUNT = 20 * 168
# Plausible measured costs: L1 < Redis < model, in CPU and in latency.
COSTS = TierCosts(
    tiers={"l1": TierCost(0.0002, 0.5, 1.0), "redis": TierCost(0.0004, 0.8, 2.0), "model": TierCost(0.005, 8.0, 30.0)},
    bytes_per_entry=100.0,
    precompute_cpu_s_per_key=0.0001,
)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return Trace.from_keys(key_stream("zipf:1.1", 20, seed=3).take(6000))


@pytest.mark.parametrize("slo", [2.5, 40.0])
def test_chosen_meets_slo_and_is_cheapest_that_does(trace: Trace, slo: float) -> None:
    rec = recommend(trace, COSTS, slo_p99_ms=slo, qps=500, key_count=KEY_COUNT)
    assert rec.slo_met and rec.chosen is not None
    assert rec.chosen.p99_ms <= slo
    meeting = [c for c in rec.candidates if c.p99_ms <= slo]
    assert rec.chosen.monthly_usd == min(c.monthly_usd for c in meeting)
    assert rec.chosen.env("traffic-light")["HYBRIDSERVE_MODE"] == rec.chosen.mode
    assert "*" in format_table(rec)


def test_unreachable_slo_is_flagged(trace: Trace) -> None:
    rec = recommend(trace, COSTS, slo_p99_ms=0.1, qps=500, key_count=KEY_COUNT)
    assert not rec.slo_met and rec.chosen is None
    assert rec.as_dict()["slo_met"] is False and rec.as_dict()["env"] is None
    assert not any(c.meets_slo for c in rec.candidates)
    assert rec.best_hybrid().mode == "hybrid"  # still something to verify


def test_ranking_is_by_monthly_cost_and_consistent_with_prices(trace: Trace) -> None:
    rec = recommend(trace, COSTS, slo_p99_ms=40, qps=500, key_count=KEY_COUNT)
    totals = [c.monthly_usd for c in rec.candidates]
    assert totals == sorted(totals)
    dynamic = next(c for c in rec.candidates if c.mode == "dynamic")
    # Dynamic: every request a model call, no memory, no precompute.
    expected = COSTS.tiers["model"].cpu_s * 500 * HOURS_PER_MONTH * Prices().serving_vcpu_hour
    assert dynamic.monthly_usd == pytest.approx(expected)
    for c in rec.candidates:
        parts = c.monthly["serving_cpu"] + c.monthly["cache_memory"] + c.monthly["precompute"]
        assert c.monthly_usd == pytest.approx(parts)
        assert c.l1_hit_ratio + c.l2_hit_ratio + c.miss_ratio == pytest.approx(1.0)
    # Same simulated shares, more cached memory -> never cheaper.
    hybrids = [c for c in rec.candidates if c.mode == "hybrid" and c.admission == "always" and c.l1_size == 0]
    by_entries = sorted(hybrids, key=lambda c: c.redis_entries)
    assert all(a.monthly_usd <= b.monthly_usd for a, b in zip(by_entries, by_entries[1:]) if a.miss_ratio == b.miss_ratio)


def test_p99_rule_follows_the_tail_share() -> None:
    assert estimate_p99({"l1": 0.9, "redis": 0.05, "model": 0.05}, COSTS) == 30.0
    assert estimate_p99({"l1": 0.9, "redis": 0.095, "model": P99_TAIL_SHARE / 2}, COSTS) == 2.0
    assert estimate_p99({"l1": 0.999, "redis": 0.0005, "model": 0.0005}, COSTS) == 1.0


def test_every_emitted_variable_is_a_real_setting(trace: Trace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The env lines a recommendation prints are read back by Settings to the same values."""
    from serving.settings import Settings

    rec = recommend(trace, COSTS, slo_p99_ms=40.0, qps=500, key_count=KEY_COUNT)
    for candidate in rec.candidates:
        env = candidate.env("traffic-light")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.mode == candidate.mode
        if candidate.mode == "hybrid":
            assert (settings.l1_size, settings.admission, settings.head_size) == (candidate.l1_size, candidate.admission, candidate.head_size)
        for name in env:
            monkeypatch.delenv(name)
