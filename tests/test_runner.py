"""loadtests/runner.py + report.py: a short real run of each mode (real server process, Redis, Locust).

Asserts the figures are measured and consistent, never absolute times.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import cost, report
from loadtests.runner import RunSpec, compare

RUN_SECONDS = 3.0


@pytest.fixture(scope="module")
def records(registry: Path) -> list[dict]:  # type: ignore[type-arg]
    specs = [RunSpec("light", mode, "zipf:1.1", rate=150, users=5, duration_s=RUN_SECONDS, head_size=200, l1_size=500)
             for mode in ("static", "dynamic", "hybrid")]
    return compare(registry, specs, cost.Prices(), progress=False)


def _by_mode(records: list[dict], mode: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in records if r["mode"] == mode)


def test_figures_are_measured_and_consistent(records: list[dict]) -> None:  # type: ignore[type-arg]
    static, dynamic, hybrid = (_by_mode(records, m) for m in ("static", "dynamic", "hybrid"))
    for r in records:
        assert r["failures"] == 0, r["failure_reasons"]
        assert r["requests"] > 0 and r["achieved_rps"] > 0
        assert r["server_cpu_us_per_request"] > 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"] + 1
        # from the locustfile's 2% histogram (bucket bounds are never whole ms), not Locust's rounding
        assert r["latency_ms"]["p50"] != round(r["latency_ms"]["p50"])
        assert {"per_million_target", "monthly_target"} <= r["cost"].keys()
        assert r["cost"]["per_million_target"]["total"] > 0
    assert static["hit_ratio"]["total"] == 1.0 and static["tier_counts"]["model_rows"] == 0
    assert dynamic["hit_ratio"]["total"] == 0.0 and dynamic["tier_counts"]["model_rows"] > 0
    assert 0.0 < hybrid["hit_ratio"]["total"] < 1.0
    assert static["redis_bytes"] > hybrid["redis_bytes"] > dynamic["redis_bytes"] == 0
    assert static["redis_cpu_us_per_request"] > 0 and static["precompute_cpu_s"] > 0


def test_report_files(records: list[dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    results, html_path = report.write_report(records, tmp_path, {"machine": "test", "duration_s": RUN_SECONDS})
    loaded = json.loads(results.read_text())["runs"]
    assert [r["mode"] for r in loaded] == ["static", "dynamic", "hybrid"]
    required = {"mode", "profile", "distribution", "offered_rps", "achieved_rps", "latency_ms", "failures", "hit_ratio",
                "server_cpu_us_per_request", "redis_bytes", "cost", "load_generator_saturated"}
    assert required <= loaded[0].keys()
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page  # opens without network
    assert "light" in report.summary_table(records)
    assert report.verdict(records)


def test_distributed_load_merges_the_workers_histograms(registry: Path) -> None:
    """A Locust master with two workers: each worker writes its own latency histogram, the
    percentiles come from their sum, the rate is shared, and nothing fails."""
    spec = RunSpec("light", "dynamic", "zipf:1.1", rate=100, users=4, duration_s=RUN_SECONDS, load_workers=2)
    [record] = compare(registry, [spec], cost.Prices(), progress=False)
    assert record["failures"] == 0, record["failure_reasons"]
    assert record["latency_histograms"] == 2 and record["load_workers"] == 2
    assert record["requests"] > 0 and record["latency_ms"]["p50"] <= record["latency_ms"]["p99"]
    assert record["latency_ms"]["p50"] != round(record["latency_ms"]["p50"])  # the 2% histogram, not Locust's
    assert record["achieved_rps"] < 1.5 * spec.rate, "the offered rate is split between the workers, not multiplied"


def test_percentiles_are_merged_not_averaged() -> None:
    from loadtests.runner import precise_percentiles

    fast = [[1.0, 99]]  # one worker: 99 answers at 1 ms
    slow = [[50.0, 99]]  # another: 99 answers at 50 ms
    merged = precise_percentiles([fast, slow])
    assert merged["p50"] == 1.0 and merged["p99"] == 50.0  # averaging the two p50s would say 25.5
    assert precise_percentiles([[], []]) == {}, "nothing recorded (all warm-up): no made-up zeros"
