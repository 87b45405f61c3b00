"""Cost model: hand-computed examples, projection rules, monotonicity, JSON output."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loadtests.cost import (
    HOURS_PER_MONTH,
    Prices,
    RunUsage,
    Scenario,
    cost_formulas,
    cost_per_million,
    estimate,
    monthly_cost,
)

PRICES = Prices(serving_vcpu_hour=0.05, batch_vcpu_hour=0.02, cache_gb_hour=0.02)
# 1e6 predictions in 100 s (10,000/s) using 30 + 6 CPU seconds, 2 GB of cache, 72 s rebuild.
USAGE = RunUsage(
    mode="static",
    predictions=1_000_000,
    duration_s=100.0,
    server_cpu_s=30.0,
    redis_cpu_s=6.0,
    cache_bytes=2e9,
    key_count=10_000,
    precompute_cpu_s=72.0,
)
MEASURED = Scenario(qps=10_000.0, key_count=10_000, refresh_period_s=86_400.0)


def test_per_million_by_hand() -> None:
    cost = cost_per_million(USAGE, MEASURED, PRICES)
    # 36 CPU s per million = 0.01 vCPU-hour at $0.05.
    assert cost.serving_cpu == pytest.approx(0.0005)
    # A million takes 100 s = 1/36 hour; 2 GB x $0.02 / 36.
    assert cost.cache_memory == pytest.approx(0.04 / 36)
    # A rebuild is 72 s = 0.02 vCPU-hour x $0.02 = $0.0004, spread over 864 million predictions a day.
    assert cost.precompute == pytest.approx(0.0004 / 864)
    assert cost.total == pytest.approx(cost.serving_cpu + cost.cache_memory + cost.precompute)


def test_projection_scales_memory_and_precompute_by_key_space() -> None:
    base = cost_per_million(USAGE, MEASURED, PRICES)
    ten_times = cost_per_million(USAGE, dataclasses.replace(MEASURED, key_count=100_000), PRICES)
    assert ten_times.serving_cpu == pytest.approx(base.serving_cpu)
    assert ten_times.cache_memory == pytest.approx(10 * base.cache_memory)
    assert ten_times.precompute == pytest.approx(10 * base.precompute)


def test_dynamic_memory_does_not_grow_with_key_space() -> None:
    dynamic = dataclasses.replace(USAGE, mode="dynamic", cache_bytes=1e6, precompute_cpu_s=0.0)
    base = cost_per_million(dynamic, MEASURED, PRICES)
    bigger = cost_per_million(dynamic, dataclasses.replace(MEASURED, key_count=100_000), PRICES)
    assert bigger.cache_memory == pytest.approx(base.cache_memory)
    assert bigger.precompute == 0.0


def test_monthly_by_hand() -> None:
    target = Scenario(qps=1_000.0, key_count=10_000)
    monthly = monthly_cost(USAGE, target, PRICES)
    # Memory is held all month whatever the rate: 2 GB x 730 h x $0.02.
    assert monthly.cache_memory == pytest.approx(2 * HOURS_PER_MONTH * 0.02)
    # 1,000/s for a month is 2,628 million predictions.
    assert monthly.serving_cpu == pytest.approx(0.0005 * 2_628)
    # One rebuild a day, 730 / 24 days a month.
    assert monthly.precompute == pytest.approx(0.0004 * HOURS_PER_MONTH / 24)
    assert monthly.unit == "USD per month"


@pytest.mark.parametrize("field", ["server_cpu_s", "redis_cpu_s", "cache_bytes", "precompute_cpu_s"])
def test_more_usage_costs_more(field: str) -> None:
    more = dataclasses.replace(USAGE, **{field: getattr(USAGE, field) * 2})
    assert cost_per_million(more, MEASURED, PRICES).total > cost_per_million(USAGE, MEASURED, PRICES).total


@pytest.mark.parametrize("field", ["serving_vcpu_hour", "batch_vcpu_hour", "cache_gb_hour"])
def test_higher_prices_cost_more(field: str) -> None:
    dearer = dataclasses.replace(PRICES, **{field: getattr(PRICES, field) * 2})
    assert cost_per_million(USAGE, MEASURED, dearer).total > cost_per_million(USAGE, MEASURED, PRICES).total


def test_rate_and_refresh_period_trade_off() -> None:
    faster = dataclasses.replace(MEASURED, qps=20_000.0)
    assert cost_per_million(USAGE, faster, PRICES).total < cost_per_million(USAGE, MEASURED, PRICES).total
    assert monthly_cost(USAGE, faster, PRICES).total > monthly_cost(USAGE, MEASURED, PRICES).total
    weekly = dataclasses.replace(MEASURED, refresh_period_s=7 * 86_400.0)
    assert cost_per_million(USAGE, weekly, PRICES).precompute < cost_per_million(USAGE, MEASURED, PRICES).precompute


def test_estimate_is_json_serialisable_and_uses_the_measured_rate() -> None:
    result = estimate(USAGE, Scenario(qps=500.0, key_count=50_000), PRICES)
    assert result.measured == MEASURED
    assert result.per_million_measured == cost_per_million(USAGE, MEASURED, PRICES)
    decoded = json.loads(json.dumps(dataclasses.asdict(result)))
    assert decoded["monthly_target"]["unit"] == "USD per month"
    assert decoded["prices"]["cache_gb_hour"] == 0.02


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "cached"}, "mode must be one of"),
        ({"predictions": 0}, "predictions must be > 0"),
        ({"duration_s": 0.0}, "duration_s must be > 0"),
        ({"server_cpu_s": -1.0}, "server_cpu_s must be >= 0"),
    ],
)
def test_bad_usage_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(USAGE, **changes)


def test_bad_scenario_and_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="qps must be > 0"):
        Scenario(qps=0.0, key_count=1)
    with pytest.raises(ValueError, match="cache_gb_hour must be >= 0"):
        Prices(cache_gb_hour=-0.1)


def test_formulas_text_names_every_part_and_price() -> None:
    text = cost_formulas(PRICES)
    for part in ("serving CPU", "cache memory", "precompute", "total", "per month"):
        assert part in text
    assert "$0.05/vCPU-hour" in text and "$0.02/GB-hour" in text
