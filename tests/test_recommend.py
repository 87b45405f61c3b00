"""tuning.recommend: the choice meets the SLO it was given, says so when none can, ranks by cost."""

from __future__ import annotations

import pytest

from loadtests.cost import HOURS_PER_MONTH, Prices
from loadtests.keys import key_stream
from loadtests.tier_costs import TierCosts, TierPoint
from tuning.recommend import P99_TAIL_SHARE, Candidate, Recommendation, estimate_p99, format_table, rank, recommend, simulate_candidates
from tuning.traces import Trace

KEY_COUNT = 20 * 168


def _flat(cpu_s: float, p50_ms: float, p99_ms: float) -> list[TierPoint]:
    return [TierPoint(rate=100.0, cpu_s=cpu_s, p50_ms=p50_ms, p99_ms=p99_ms, requests=10_000)]


# Plausible measured costs: L1 < Redis < model, in CPU and in latency; the same at every rate.
COSTS = TierCosts(
    model="traffic-light",
    curves={"l1": _flat(0.0002, 0.5, 1.0), "redis": _flat(0.0004, 0.8, 2.0), "model": _flat(0.005, 8.0, 30.0)},
    bytes_per_entry=100.0, l1_bytes_per_entry=200.0, precompute_cpu_s_per_key=0.0001,
)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return Trace.from_keys(key_stream("zipf:1.1", 20, seed=3).take(4000))


@pytest.fixture(scope="module")
def simulated(trace: Trace) -> list[Candidate]:
    """The candidates replayed once for the module (the slow part); each test prices its own copies."""
    return simulate_candidates(trace, COSTS, KEY_COUNT, min_budget_bytes=0)  # the test trace's budgets are tiny


def _rank(simulated: list[Candidate], slo: float, key_count: int = KEY_COUNT) -> Recommendation:
    return rank(simulated, COSTS, slo_p99_ms=slo, qps=500, key_count=key_count)


@pytest.mark.parametrize("slo", [2.5, 40.0])
def test_chosen_meets_slo_and_is_cheapest_that_does(simulated: list[Candidate], slo: float) -> None:
    rec = _rank(simulated, slo)
    assert rec.slo_met and rec.chosen is not None
    assert rec.chosen.p99_ms <= slo
    meeting = [c for c in rec.candidates if c.p99_ms <= slo]
    assert rec.chosen.monthly_usd == min(c.monthly_usd for c in meeting)
    assert rec.chosen.env("traffic-light")["HYBRIDSERVE_MODE"] == rec.chosen.mode
    assert "*" in format_table(rec)


def test_unreachable_slo_is_flagged(simulated: list[Candidate]) -> None:
    rec = _rank(simulated, 0.1)
    assert not rec.slo_met and rec.chosen is None
    assert rec.as_dict()["slo_met"] is False and rec.as_dict()["env"] is None
    assert not any(c.meets_slo for c in rec.candidates)
    assert rec.to_verify() is min(rec.candidates, key=lambda c: (c.p99_ms, c.monthly_usd))  # still something to verify


def test_ranking_is_by_monthly_cost_and_consistent_with_prices(simulated: list[Candidate]) -> None:
    rec = _rank(simulated, 40)
    totals = [c.monthly_usd for c in rec.candidates]
    assert totals == sorted(totals)
    dynamic = next(c for c in rec.candidates if c.mode == "dynamic")
    # Dynamic: every request a model call, no memory, no precompute.
    expected = COSTS.curves["model"][0].cpu_s * 500 * HOURS_PER_MONTH * Prices().serving_vcpu_hour
    assert dynamic.monthly_usd == pytest.approx(expected)
    for c in rec.candidates:
        parts = c.monthly["serving_cpu"] + c.monthly["cache_memory"] + c.monthly["precompute"]
        assert c.monthly_usd == pytest.approx(parts)
        assert c.l1_hit_ratio + c.l2_hit_ratio + c.miss_ratio == pytest.approx(1.0)
    # Same simulated shares, more cached memory -> never cheaper.
    hybrids = [c for c in rec.candidates if c.mode == "hybrid" and c.admission == "always" and c.l1_size == 0]
    by_memory = sorted(hybrids, key=lambda c: c.memory_bytes)
    assert all(a.monthly_usd <= b.monthly_usd for a, b in zip(by_memory, by_memory[1:]) if a.miss_ratio == b.miss_ratio)


def test_the_redis_budget_sizes_the_cache(simulated: list[Candidate]) -> None:
    """Hybrid candidates differ in hit ratio and cost as the Redis memory budget changes."""
    rec = _rank(simulated, 40)
    plain = [c for c in rec.candidates if c.mode == "hybrid" and not c.full_table and c.l1_size == 0
             and c.head_size == 0 and c.admission == "always" and c.redis_eviction == "allkeys-lru"]
    by_budget = sorted(plain, key=lambda c: c.memory_bytes)
    assert len(by_budget) == 4 and by_budget[-1].redis_budget_bytes is None  # three budgets and unbounded
    hits = [c.hit_ratio for c in by_budget]
    assert hits == sorted(hits) and hits[0] < hits[-1] - 0.05
    assert len({round(c.monthly_usd, 6) for c in by_budget}) == 4
    bounded = by_budget[0]
    assert bounded.redis_config() == {"maxmemory": str(bounded.redis_budget_bytes), "maxmemory-policy": "allkeys-lru"}
    assert bounded.memory_bytes == pytest.approx(bounded.redis_budget_bytes)
    curve = rec.cost_memory_curve()
    assert [p["memory_bytes"] for p in curve] == sorted(p["memory_bytes"] for p in curve)


def test_static_is_priced_on_the_key_space_and_full_table_l1_is_a_candidate(simulated: list[Candidate]) -> None:
    rec = _rank(simulated, 40)
    static = next(c for c in rec.candidates if c.mode == "static")
    assert static.redis_entries == KEY_COUNT and static.memory_bytes == KEY_COUNT * COSTS.bytes_per_entry
    assert static.monthly["precompute"] > 0
    full = [c for c in rec.candidates if c.full_table]
    assert full and all(c.miss_ratio == 0.0 and c.head_size == KEY_COUNT and c.l1_size > 0 for c in full)
    # Never fewer keys than the trace holds, whatever key count is given.
    tiny = Trace.from_keys(["1:1", "2:2", "3:3"] * 20)
    small = recommend(tiny, COSTS, slo_p99_ms=40, qps=500, key_count=1)
    assert small.key_count == 3 and next(c for c in small.candidates if c.mode == "static").redis_entries == 3


def test_p99_rule_follows_the_tail_share() -> None:
    p99 = {"l1": 1.0, "redis": 2.0, "model": 30.0}
    assert estimate_p99({"l1": 0.9, "redis": 0.05, "model": 0.05}, p99) == 30.0
    assert estimate_p99({"l1": 0.9, "redis": 0.095, "model": P99_TAIL_SHARE / 2}, p99) == 2.0
    assert estimate_p99({"l1": 0.999, "redis": 0.0005, "model": 0.0005}, p99) == 1.0


def test_every_emitted_variable_is_a_real_setting(simulated: list[Candidate], monkeypatch: pytest.MonkeyPatch) -> None:
    """The env lines a recommendation prints are read back by Settings to the same values."""
    from serving.settings import Settings

    rec = _rank(simulated, 40.0)
    for candidate in rec.candidates:
        env = candidate.env("traffic-light")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        assert settings.mode == candidate.mode
        if candidate.mode == "hybrid":
            assert (settings.l1_size, settings.l1_policy, settings.admission, settings.head_size, settings.redis_ttl_s) == (
                candidate.l1_size, candidate.l1_policy, candidate.admission, candidate.head_size, candidate.redis_ttl_s)
        for name in env:
            monkeypatch.delenv(name)


def test_no_budget_below_the_floor() -> None:
    """Budgets smaller than Redis' client-buffer noise are not offered (a 1 MB floor by default)."""
    tiny = Trace.from_keys([f"{n % 300}:1" for n in range(2000)])
    budgets = {c.redis_budget_bytes for c in simulate_candidates(tiny, COSTS, KEY_COUNT, l1_policies=("lru",))
               if c.mode == "hybrid" and not c.full_table}
    assert budgets == {None}  # 300 keys x 100 B: every budget would be under 1 MB
