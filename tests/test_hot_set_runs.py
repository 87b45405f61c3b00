"""The hot-set load tests (loadtests/hot_set_runs.py) and their report section: one short real run
of the version switch (Locust in its own process, a real server and Redis, a reload to a second
version halfway), and the section's figures from a hand-made record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadtests import cost
from loadtests.hot_set_report import hot_set_section, summary
from loadtests.hot_set_runs import Scenario, run_scenario, scenarios, series

RUN_SECONDS = 6.0
RATE = 60.0


@pytest.fixture(scope="module")
def switch_record(two_light_versions: tuple[Path, str, str]) -> dict:  # type: ignore[type-arg]
    registry, _, new = two_light_versions
    warm = next(s for s in scenarios(RUN_SECONDS, RATE) if s.variant == "warm start")
    spec = replace(warm.spec, profile="light", users=5, head_size=200)
    return run_scenario(Scenario("switch", "warm start", spec, switch_after_s=RUN_SECONDS / 2), registry, new, cost.Prices())


def test_a_switch_run_records_the_reload_and_the_series(switch_record: dict, two_light_versions: tuple[Path, str, str]) -> None:  # type: ignore[type-arg]
    hot = switch_record["hot_set"]
    assert hot["scenario"] == "switch" and hot["switch"]["to"] == two_light_versions[2]
    assert hot["switch"]["requested_unix"] <= hot["switch"]["unix"]
    versions = [p["model_version"] for p in hot["series"]]
    assert versions[0] == two_light_versions[1] and versions[-1] == two_light_versions[2]  # served both, in order
    # Every second of traffic has a latency window, and their requests add up to Locust's count.
    windows = hot["latency_windows"]
    assert len(windows) >= RUN_SECONDS - 1
    assert sum(w["requests"] for w in windows) == switch_record["requests"]
    assert all(w["p99"] >= w["p50"] > 0 for w in windows)
    [figures] = summary([switch_record])
    assert figures["switched"] and figures["reload_s"] > 0
    section = hot_set_section([switch_record])
    assert section.count("<img") == 1 and "warm start" in section


def test_series_are_per_interval_deltas() -> None:
    samples = [{"unix": float(t), "model_version": "v", "head_refresh": {"refreshes": t, "distance": 0.5},
                "counts": {"requests": 10 * t, "l1_hits": 6 * t, "redis_hits": 2 * t, "model_rows": 2 * t}} for t in range(4)]
    points = series(samples)
    assert [p["requests"] for p in points] == [10, 10, 10]
    assert [p["hit_ratio"] for p in points] == [0.8, 0.8, 0.8]
    assert points[-1]["refreshes"] == 3


def test_drift_summary_and_section_from_a_record() -> None:
    # 20 s of a drift with period 10: hit ratio 0.2 in the 3 s after each move, 0.9 otherwise.
    points = [{"unix": 1000.0 + t, "requests": 100, "l1_hits": 20 if (1000 + t) % 10 <= 3 else 90, "redis_hits": 0,
               "model_rows": 80 if (1000 + t) % 10 <= 3 else 10, "hit_ratio": None, "refreshes": 2, "hot_set_distance": 0.1}
              for t in range(20)]
    record = {"hot_set": {"scenario": "drift", "variant": "head refresh", "series": points, "latency_windows": [],
                          "switch": None, "drift": "drift:hot=300,p=0.9,period=10"},
              "latency_ms": {"p99": 5.0}, "distribution": "drift:hot=300,p=0.9,period=10", "settings": [["admission", "after:4"]]}
    [figures] = summary([record])
    assert figures["hit_ratio_after_moves"] == pytest.approx(0.2)
    assert figures["hit_ratio"] == pytest.approx((8 * 20 + 12 * 90) / 2000)
    assert figures["refreshes"] == 2
    assert "after:4" in hot_set_section([record])
