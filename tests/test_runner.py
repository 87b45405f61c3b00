"""loadtests/runner.py + report.py: short real runs (real server process, Redis, Locust) in one matrix.

The figures are checked against each other and against what the server counted, never against
absolute times: the runs share a loaded 2-core machine with the test process.

The matrix: static light under a flood far above what one Locust process can offer (it must be
flagged saturated), and dynamic and hybrid heavy well below it, in the same run of ``compare``, so
their CPU per request is measured under the same conditions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loadtests import cost, report
from loadtests.runner import SATURATION_SHARE, RunSpec, compare, fell_behind, median_run, window_cpu_percent
from loadtests.tier_costs import at_speed, speed_reference
from models.registry import resolve
from tests.helpers import locustfile_constant

RUN_SECONDS = 3.0
# One Locust process sends a few thousand requests a second at most: 100,000 is far out of reach.
FLOOD_RATE = 100_000.0
FLOOD_USERS = 2
# Well below what the generator (and the heavy model) can do on a loaded 2-core machine.
PACED_RATE = 100.0
PACED_USERS = 5
HEAD_SIZE = 1000  # most of Zipf(1.1) traffic on the test key space: hybrid computes few rows
L1_SIZE = 5000  # above the test key space (3,360): nothing admitted is evicted from L1
# Per-key size spread: a key's MEMORY USAGE depends on its length's allocator size class (86 or
# 102 bytes on Redis 6.2 for these keys), so per-key figures of two key sets differ by up to ~20%.
KEY_BYTES_TOLERANCE = 0.25
# The locustfile's latency histogram: bucket upper bounds are FLOOR_MS * GROWTH ** k, k >= 1.
HISTOGRAM_FLOOR_MS = locustfile_constant("FLOOR_MS")
HISTOGRAM_GROWTH = locustfile_constant("GROWTH")

Record = dict[str, Any]


@pytest.fixture(scope="module")
def records(registry: Path) -> list[Record]:
    specs = [
        RunSpec("light", "static", "zipf:1.1", rate=FLOOD_RATE, users=FLOOD_USERS, duration_s=RUN_SECONDS,
                head_size=HEAD_SIZE, l1_size=L1_SIZE),
        *(RunSpec("heavy", mode, "zipf:1.1", rate=PACED_RATE, users=PACED_USERS, duration_s=RUN_SECONDS,
                  head_size=HEAD_SIZE, l1_size=L1_SIZE) for mode in ("dynamic", "hybrid")),
    ]
    return compare(registry, specs, cost.Prices(), progress=False)


def _by_mode(records: list[Record], mode: str) -> Record:
    return next(r for r in records if r["mode"] == mode)


def _on_histogram_grid(ms: float) -> bool:
    """Whether ``ms`` is an upper bound of the locustfile's histogram (not Locust's rounded figure)."""
    k = math.log(ms / HISTOGRAM_FLOOR_MS) / math.log(HISTOGRAM_GROWTH)
    return k >= 1 - 1e-9 and abs(k - round(k)) < 1e-6


@pytest.mark.slow
def test_figures_are_measured_and_consistent(records: list[Record]) -> None:
    static, dynamic, hybrid = (_by_mode(records, m) for m in ("static", "dynamic", "hybrid"))
    for r in records:
        assert r["failures"] == 0, r["failure_reasons"]
        assert r["requests"] > 0 and r["achieved_rps"] > 0
        latency = r["latency_ms"]
        assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"] + 1
        # From the locustfile's 2% histogram, not Locust's whole-millisecond statistics.
        assert all(_on_histogram_grid(latency[q]) for q in ("p50", "p95", "p99")), latency
        assert {"per_million_target", "monthly_target"} <= r["cost"].keys()
        assert r["cost"]["per_million_target"]["total"] > 0
    assert static["hit_ratio"]["total"] == 1.0 and static["tier_counts"]["model_rows"] == 0
    assert dynamic["hit_ratio"]["total"] == 0.0 and dynamic["tier_counts"]["model_rows"] == dynamic["tier_counts"]["keys"]
    assert 0.0 < hybrid["hit_ratio"]["total"] < 1.0
    assert static["redis_cpu_us_per_request"] > 0 and static["precompute_cpu_s"] > 0


@pytest.mark.slow
def test_reported_duration_is_the_window_the_figures_are_over(records: list[Record]) -> None:
    for r in records:
        # The rate is requests over this duration: Locust's traffic window, not the requested run
        # length and not the wall time around Locust (its start-up and shutdown).
        assert r["duration_s"] == pytest.approx(r["requests"] / r["achieved_rps"], rel=1e-9)
        assert r["requested_duration_s"] == RUN_SECONDS
        # The server counted the same requests (plus at most one in flight per user at the stop),
        # so the cost model's rate (server-counted predictions / duration) is the achieved rate.
        assert 0 <= r["tier_counts"]["requests"] - r["requests"] <= r["users"]
        assert r["cost"]["measured"]["qps"] == pytest.approx(r["achieved_rps"] * r["batch_size"], rel=0.05)


@pytest.mark.slow
def test_server_cpu_follows_the_model_work(records: list[Record], registry: Path) -> None:
    """Dynamic and hybrid heavy differ in the model rows they compute; their CPU differs by at least
    what those rows cost.

    Each row costs at least the model's batched per-row time (its card, measured at export), the
    cheapest a row gets, so the rows hybrid avoided per request put a floor under the difference.
    It is a floor, not an estimate: a single-row call costs several times that, and hybrid's extra
    Redis round trips take some back. A CPU reading of the wrong process or window (about 0, or the
    same for both) fails it. "Several times" is not asserted: at the test registry's size one heavy
    row (~150 us) is about a third of what serving a request costs at this rate, so dynamic
    measured 1.2-1.6x hybrid here; the gap grows with the model (benchmarks/model_cost.py).

    Both runs are read at one core speed (``tier_costs.at_speed``, as every comparison of runs is):
    this VM's cores run the same work in 0.6-1.1 of their fastest time from minute to minute, and
    raw, one 3 s run on a slow spell once read hybrid at 421 us against dynamic's 376 us.
    """
    raw = _by_mode(records, "dynamic"), _by_mode(records, "hybrid")
    assert all(r["core_speed"].get("server", {}).get("unit_us", 0) > 0 for r in raw), "no probe reading"
    reference = speed_reference(list(raw))
    dynamic, hybrid = (at_speed(r, reference) for r in raw)
    batch_row_us = resolve(registry, "traffic-heavy").card()["inference_time"]["batch_row_us"]

    def rows_per_request(r: Record) -> float:
        return r["tier_counts"]["model_rows"] / r["tier_counts"]["requests"]

    avoided = rows_per_request(dynamic) - rows_per_request(hybrid)
    difference_us = dynamic["server_cpu_us_per_request"] - hybrid["server_cpu_us_per_request"]
    print(f"\nserver CPU per request: dynamic heavy {dynamic['server_cpu_us_per_request']:.0f} us, "
          f"hybrid heavy {hybrid['server_cpu_us_per_request']:.0f} us "
          f"({dynamic['server_cpu_us_per_request'] / hybrid['server_cpu_us_per_request']:.2f}x); hybrid avoided "
          f"{avoided:.2f} rows a request, at least {avoided * batch_row_us:.0f} us; at one core speed, raw "
          f"{raw[0]['server_cpu_us_per_request']:.0f} and {raw[1]['server_cpu_us_per_request']:.0f} us, probe units "
          f"{raw[0]['core_speed']['server']['unit_us']:.0f} and {raw[1]['core_speed']['server']['unit_us']:.0f} us")
    assert avoided > 0.5  # the head and L1 answer most of Zipf traffic
    assert difference_us >= avoided * batch_row_us


@pytest.mark.slow
def test_redis_bytes_are_the_stored_keys(records: list[Record]) -> None:
    static, dynamic, hybrid = (_by_mode(records, m) for m in ("static", "dynamic", "hybrid"))
    # Measured, not clamped: dynamic reports 0 because it stored nothing.
    assert dynamic["redis_keys"] == dynamic["redis_bytes"] == 0
    assert static["redis_keys"] == static["key_count"] + 1  # the table and its pointer
    bytes_per_key = static["redis_bytes"] / static["redis_keys"]
    # Hybrid's Redis grows by the keys it admits during the window (the head and the warm-up's
    # admissions were there before): every admission is a key not yet stored, except when two
    # concurrent requests miss the same key and both admit it.
    added = hybrid["redis_keys_added"]
    assert 0 < added <= hybrid["tier_counts"]["admitted"]
    assert hybrid["redis_bytes_added"] == pytest.approx(added * bytes_per_key, rel=KEY_BYTES_TOLERANCE)
    assert hybrid["redis_keys"] >= HEAD_SIZE + added
    assert hybrid["redis_bytes"] == pytest.approx(hybrid["redis_keys"] * bytes_per_key, rel=KEY_BYTES_TOLERANCE)
    assert static["redis_bytes"] > hybrid["redis_bytes"]


@pytest.mark.slow
def test_cost_includes_l1_memory(records: list[Record]) -> None:
    """The report says all cache memory, L1 included, is priced: the measured cache memory cost
    is Redis' bytes plus L1's, and only hybrid has L1 entries."""
    for r in records:
        assert (r["l1_bytes"] > 0) == (r["mode"] == "hybrid" and r["l1_entries"] > 0)
        if r["l1_entries"]:
            assert 50 < r["l1_bytes"] / r["l1_entries"] < 1000  # an entry: a short key, a float, dict overhead
        measured = r["cost"]["measured"]
        hours_per_million = 1e6 / measured["qps"] / 3600
        expected = (r["redis_bytes"] + r["l1_bytes"]) / cost.BYTES_PER_GB * hours_per_million * cost.Prices().cache_gb_hour
        assert r["cost"]["per_million_measured"]["cache_memory"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_saturation_is_flagged_only_when_the_offered_rate_is_out_of_reach(records: list[Record]) -> None:
    flooded = _by_mode(records, "static")
    assert flooded["load_generator_saturated"] is True
    assert flooded["achieved_rps"] < SATURATION_SHARE * FLOOD_RATE
    for paced in (_by_mode(records, "dynamic"), _by_mode(records, "hybrid")):
        assert paced["load_generator_saturated"] is False, paced
        assert not fell_behind(paced["achieved_rps"], PACED_RATE, paced["duration_s"])


def test_falling_behind_allows_for_poisson_noise_in_short_runs() -> None:
    # 2 s at 100/s: 200 arrivals on average, 14 standard deviation; 170 is noise, 120 is not.
    assert not fell_behind(170 / 2, 100.0, 2.0)
    assert fell_behind(120 / 2, 100.0, 2.0)
    # 12 s at 300/s: 3,600 on average; 92% of the rate is already behind.
    assert not fell_behind(0.96 * 300, 300.0, 12.0)
    assert fell_behind(0.88 * 300, 300.0, 12.0)


def _run(server_us: float, redis_us: float, p99: float) -> Record:
    return {"server_cpu_us_per_request": server_us, "redis_cpu_us_per_request": redis_us, "latency_ms": {"p99": p99}}


def test_the_median_run_is_a_whole_run_with_every_repeat_listed() -> None:
    runs = [_run(500, 50, 9.0), _run(300, 20, 4.0), _run(400, 30, 7.0)]
    chosen = median_run(runs)
    # By server + Redis CPU: 320, 430, 550; the middle one whole, its own p99 with it.
    assert chosen["server_cpu_us_per_request"] == 400 and chosen["latency_ms"]["p99"] == 7.0
    assert [r["p99_ms"] for r in chosen["repeats"]] == [9.0, 4.0, 7.0]
    assert "repeats" not in runs[2]  # the inputs are left as they were
    # An even count: the lower of the middle two.
    assert median_run(runs[:2])["server_cpu_us_per_request"] == 300


def test_the_median_run_is_chosen_at_one_core_speed() -> None:
    """A run that read high only because its cores ran slow is not the median: runs are ordered by
    their CPU at the runs' median core speed, and each repeat keeps its core speed."""
    def on(run: Record, unit_us: float) -> Record:
        return {**run, "core_speed": {"server": {"unit_us": unit_us}, "redis": {"unit_us": unit_us}}}

    runs = [on(_run(500, 50, 9.0), 800.0), on(_run(300, 20, 4.0), 400.0), on(_run(400, 30, 7.0), 400.0)]
    # At 400 us a unit: 275, 320, 430; raw the 550 run would be the highest and 430 the median.
    chosen = median_run(runs)
    assert chosen["server_cpu_us_per_request"] == 300 and chosen["latency_ms"]["p99"] == 4.0
    assert [r["core_speed"]["server"]["unit_us"] for r in chosen["repeats"]] == [800.0, 400.0, 400.0]


def test_compare_refuses_fewer_than_one_repeat(registry: Path) -> None:
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        compare(registry, [RunSpec("light", "static")], repeats=0)


@pytest.mark.slow
def test_report_files(records: list[Record], tmp_path: Path) -> None:
    results, html_path = report.write_report(records, tmp_path, {"machine": "test", "duration_s": RUN_SECONDS})
    loaded = json.loads(results.read_text())["runs"]
    assert [r["mode"] for r in loaded] == ["static", "dynamic", "hybrid"]
    required = {"mode", "profile", "distribution", "offered_rps", "achieved_rps", "latency_ms", "failures", "hit_ratio",
                "server_cpu_us_per_request", "redis_bytes", "redis_keys", "cost", "load_generator_saturated",
                "duration_s", "requested_duration_s"}
    assert required <= loaded[0].keys()
    page = html_path.read_text()
    images = page.count("<img")
    assert images >= 4 and page.count('src="data:image/png;base64,') == images  # every plot inline
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


def test_generator_cpu_counts_only_the_traffic_window() -> None:
    # (wall clock, CPU seconds so far): a start-up second at full CPU, then 30% a second.
    samples = [(100.0, 0.0), (101.0, 1.0), (102.0, 1.3), (103.0, 1.6), (104.0, 1.9)]
    assert window_cpu_percent(samples, 101.0, 104.0) == pytest.approx(30.0)
    assert window_cpu_percent(samples, 100.0, 104.0) == pytest.approx(100.0)  # peak, start-up included
    # A window shorter than the sampling period: the mean over the samples around it.
    assert window_cpu_percent(samples, 101.2, 101.8) == pytest.approx(30.0)
    assert window_cpu_percent(samples, 100.5, 101.5) == pytest.approx(65.0)
    assert window_cpu_percent([], 1.0, 2.0) == 0.0
