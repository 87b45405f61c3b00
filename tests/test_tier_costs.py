"""loadtests/tier_costs.py: tier curves from load-test records (a recorded results.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtests.tier_costs import (CLEAN_L1_SHARE, MIN_L1_SHARE, TierCosts, anchor_factors, at_speed, cpu_us_at_speed,
                                  speed_reference, tier_costs)

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
    assert 0 < costs.at("l1", 200).cpu_s < costs.at("redis", 200).cpu_s < costs.at("model", 200).cpu_s


def test_curves_interpolate_in_log_rate_and_say_when_they_extrapolate(runs: list[dict]) -> None:
    low, high = dict(runs[4]), dict(runs[4])  # heavy dynamic
    low.update(achieved_rps=100.0, server_cpu_us_per_request=2000.0, latency_ms={**low["latency_ms"], "p99": 10.0})
    high.update(achieved_rps=400.0, server_cpu_us_per_request=1000.0, latency_ms={**high["latency_ms"], "p99": 40.0})
    costs = tier_costs([r for r in runs if r["mode"] != "dynamic"] + [low, high], "traffic-heavy")
    middle = costs.at("model", 200.0)  # halfway in log rate: CPU; its p99 at the load it makes (0.3 CPU s/s)
    assert middle.cpu_s == pytest.approx(1500e-6) and not middle.extrapolated
    assert middle.p99_ms == pytest.approx(10.0 + 30.0 * math.log(0.3 / 0.2) / math.log(0.4 / 0.2))
    beyond = costs.at("model", 1000.0)
    assert beyond.extrapolated and beyond.p99_ms == 40.0


def test_p99_follows_the_load_of_the_whole_mix(runs: list[dict]) -> None:
    """A tier serving few requests on a busy server queues behind the others: its p99 is read at
    the mix's load, not at its own rate."""
    low, high = dict(runs[4]), dict(runs[4])
    low.update(achieved_rps=100.0, server_cpu_us_per_request=2000.0, latency_ms={**low["latency_ms"], "p99": 10.0})
    high.update(achieved_rps=400.0, server_cpu_us_per_request=1000.0, latency_ms={**high["latency_ms"], "p99": 40.0})
    costs = tier_costs([r for r in runs if r["mode"] != "dynamic"] + [low, high], "traffic-heavy")
    alone, busy = costs.at("model", 100.0), costs.at("model", 100.0, load=0.4)
    assert alone.p99_ms == pytest.approx(10.0) and busy.p99_ms == pytest.approx(40.0)
    assert alone.cpu_s == busy.cpu_s  # batching follows the tier's own rate
    assert costs.at("model", 100.0, load=0.8).extrapolated


def test_l1_p99_is_its_own_only_from_runs_l1_answered_nearly_alone(runs: list[dict]) -> None:
    hybrid = next(r for r in runs if r["profile"] == "heavy" and r["mode"] == "hybrid")
    assert hybrid["hit_ratio"]["l1"] < CLEAN_L1_SHARE
    mixed = tier_costs(runs, "traffic-heavy")
    (point,) = mixed.curves["l1"]
    assert not point.p99_of_tier
    assert mixed.at("l1", point.rate).p99_ms == mixed.at("redis", point.rate, load=point.load).p99_ms  # Redis' bound
    clean = dict(hybrid, hit_ratio={"l1": 0.97, "redis": 0.03, "total": 1.0},
                 latency_ms={**hybrid["latency_ms"], "p99": 1.5})
    costs = tier_costs([r for r in runs if r is not hybrid] + [clean], "traffic-heavy")
    (point,) = costs.curves["l1"]
    assert point.p99_of_tier and costs.at("l1", point.rate).p99_ms == 1.5


def test_missing_runs_are_named(runs: list[dict]) -> None:
    with pytest.raises(ValueError, match="no dynamic run of traffic-heavy"):
        tier_costs([r for r in runs if r["mode"] != "dynamic"], "traffic-heavy")
    with pytest.raises(ValueError, match="no static run of traffic-other"):
        tier_costs(runs, "traffic-other")


def test_a_miss_pays_its_store_round_trips_measured_by_an_all_miss_run(runs: list[dict]) -> None:
    """A hybrid run of (nearly) only misses prices a miss's Redis lookup and write: what it costs
    per miss beyond the dynamic run's model call; without one it is estimated, and the notes say so."""
    heavy = [r for r in runs if r["profile"] == "heavy" and r["distribution"] != "uniform"]
    dynamic = next(r for r in heavy if r["mode"] == "dynamic")
    all_miss = dict(next(r for r in heavy if r["mode"] == "hybrid"), distribution="uniform",
                    hit_ratio={"l1": 0.0, "redis": 0.1, "total": 0.1}, achieved_rps=dynamic["achieved_rps"] / 0.9,
                    server_cpu_us_per_request=0.9 * (dynamic["server_cpu_us_per_request"] + 300.0) + 0.1 * 220.0,
                    redis_cpu_us_per_request=0.9 * dynamic["redis_cpu_us_per_request"] + 0.1 * heavy[0]["redis_cpu_us_per_request"])
    costs = tier_costs([*heavy, all_miss], "traffic-heavy")
    assert costs.miss_store_cpu_s == pytest.approx(300e-6, rel=0.02)
    shares = {"l1": 0.5, "redis": 0.3, "model": 0.2}
    assert (costs.cpu_per_request(shares, 400, misses_pass_store=True) - costs.cpu_per_request(shares, 400, misses_pass_store=False)
            == pytest.approx(0.2 * costs.miss_store_cpu_s))
    estimated = tier_costs(heavy, "traffic-heavy")
    assert estimated.miss_store_cpu_s == estimated.curves["redis"][-1].cpu_s
    assert any("no hybrid run of only misses" in note for note in estimated.notes)


def test_idle_cpu_is_a_cost_per_second_not_per_request(runs: list[dict]) -> None:
    """A run's idle CPU (timers, polls) is taken out of its tiers' per-request cost and added back
    at the rate priced: the same tier measured at 100/s and 400/s then costs the same per request."""
    idle = {"server": 4.0, "redis": 2.0}  # ms a second
    def at(rate: float, base_us: float) -> dict:
        record = dict(runs[3], achieved_rps=rate, duration_s=10.0, idle_cpu_ms_per_s=idle, redis_cpu_us_per_request=0.0)
        return record | {"server_cpu_us_per_request": base_us + 6000.0 / rate}  # 6 ms/s spread over the requests
    costs = tier_costs([at(100.0, 200.0), at(400.0, 200.0), *[r for r in runs if r["mode"] != "static"]], "traffic-heavy")
    assert costs.idle_cpu_s_per_s == pytest.approx(6e-3)
    assert [p.cpu_s for p in costs.curves["redis"]] == pytest.approx([200e-6, 200e-6])
    assert costs.cpu_per_request({"redis": 1.0}, 100.0, misses_pass_store=False) == pytest.approx(260e-6)
    assert costs.cpu_per_request({"redis": 1.0}, 400.0, misses_pass_store=False) == pytest.approx(215e-6)


def _scaled_run(record: dict, factor: float, **changes: object) -> dict:
    """A copy of ``record`` whose server and Redis CPU per request are ``factor`` times as much."""
    return {**record, "server_cpu_us_per_request": record["server_cpu_us_per_request"] * factor,
            "redis_cpu_us_per_request": record["redis_cpu_us_per_request"] * factor, **changes}


def test_scaled_costs_multiply_each_tier_and_keep_the_curve_shapes(runs: list[dict]) -> None:
    costs = tier_costs(runs, "traffic-heavy")
    levelled = costs.scaled({"redis": 1.5, "model": 0.8})
    for tier, factor in (("redis", 1.5), ("model", 0.8), ("l1", 1.0)):
        assert [p.cpu_s for p in levelled.curves[tier]] == pytest.approx([p.cpu_s * factor for p in costs.curves[tier]])
        assert [p.p99_ms for p in levelled.curves[tier]] == [p.p99_ms for p in costs.curves[tier]]
    assert levelled.miss_store_cpu_s == pytest.approx(costs.miss_store_cpu_s * 1.5)  # two Redis round trips
    assert "redis x1.50" in levelled.notes[-1] and costs.curves["redis"][0].cpu_s != levelled.curves["redis"][0].cpu_s


def test_anchor_runs_relevel_the_calibration_to_price_them_as_measured(runs: list[dict]) -> None:
    """Each anchor run (static, dynamic, a hybrid L1 answered nearly alone), made on a faster or
    slower machine, is priced by the re-levelled costs at exactly the CPU it measured."""
    heavy = {r["mode"] + "/" + r["distribution"]: r for r in runs if r["profile"] == "heavy"}
    costs = tier_costs(runs, "traffic-heavy")
    hot = {"l1": 0.95, "redis": 0.04, "total": 0.99}
    anchors = [_scaled_run(heavy["static/zipf:1.1"], 1.3), _scaled_run(heavy["dynamic/zipf:1.1"], 0.8),
               _scaled_run(heavy["hybrid/zipf:1.1"], 0.9, hit_ratio=hot),
               _scaled_run(next(r for r in runs if r["profile"] == "light" and r["mode"] == "static"), 5.0),  # another model
               _scaled_run(heavy["hybrid/uniform"], 3.0)]  # L1 answered too few: not an L1 anchor
    factors = anchor_factors(costs, anchors)
    assert set(factors) == {"redis", "model", "l1"}
    assert factors["redis"] > 1.2 and factors["model"] < 0.85  # the idle CPU is not scaled with the rest
    levelled = costs.scaled(factors)
    for anchor, shares, store in ((anchors[0], {"redis": 1.0}, False), (anchors[1], {"model": 1.0}, False),
                                  (anchors[2], {"l1": 0.95, "redis": 0.04, "model": 0.01}, True)):
        priced = levelled.cpu_per_request(shares, anchor["achieved_rps"], misses_pass_store=store)
        assert priced == pytest.approx(_cpu(anchor), rel=2e-2)  # per prediction served vs per HTTP request
    assert anchor_factors(costs, [{**anchors[0], "failures": 3}]) == {}  # a run with failures says nothing


def test_an_l1_hit_is_priced_at_the_servers_rate_where_it_was_measured_at_several(runs: list[dict]) -> None:
    """Hot-set runs at two rates (an L1 hit costs more per request at a low rate, Poisson wake-ups):
    pricing at a rate uses that rate's run, not their average, and an anchor run equal to one of
    them re-levels by 1."""
    base = next(r for r in runs if r["profile"] == "heavy" and r["mode"] == "hybrid" and r["distribution"] == "zipf:1.1")
    hot = {"l1": 0.97, "redis": 0.03, "total": 1.0}
    slow = _scaled_run(base, 2.0, hit_ratio=hot, achieved_rps=75.0, offered_rps=75.0)
    fast = _scaled_run(base, 1.0, hit_ratio=hot, achieved_rps=300.0, offered_rps=300.0)
    costs = tier_costs(runs + [slow, fast], "traffic-heavy")
    at_slow, at_fast = (costs.at("l1", 0.97 * rate, share=0.97).cpu_s for rate in (75.0, 300.0))
    clean = {round(p.rate): p.cpu_s for p in costs.curves["l1"] if p.p99_of_tier}
    assert at_slow == pytest.approx(clean[round(0.97 * 75)]) and at_fast == pytest.approx(clean[round(0.97 * 300)])
    assert at_slow > 1.8 * at_fast
    assert anchor_factors(costs, [fast])["l1"] == pytest.approx(1.0, rel=1e-6)


def test_an_l1_hit_is_priced_beside_the_models_share_not_at_its_own(runs: list[dict]) -> None:
    """L1 in front of a full static table (no model call) is priced by the hot-set run even at the
    Zipf mix's L1 share; beside the Zipf mix's model share, by the Zipf run; in between, linearly.
    (The benchmark: the light "static table + L1" candidate verified 29% above a prediction that
    priced its L1 hits by the Zipf mix's leftover.)"""
    base = next(r for r in runs if r["profile"] == "heavy" and r["mode"] == "hybrid" and r["distribution"] == "zipf:1.1")
    hot = _scaled_run(base, 1.0, hit_ratio={"l1": 0.97, "redis": 0.03, "total": 1.0})
    costs = tier_costs(runs + [hot], "traffic-heavy")
    clean = next(p for p in costs.curves["l1"] if p.p99_of_tier)
    mix = next(p for p in costs.curves["l1"] if not p.p99_of_tier)
    assert mix.model_share == pytest.approx(1 - base["hit_ratio"]["total"]) and clean.model_share == pytest.approx(0.0)
    assert mix.cpu_s != pytest.approx(clean.cpu_s, rel=0.05)
    rate = hot["achieved_rps"]
    table = costs.at("l1", mix.share * rate, share=mix.share, model_share=0.0)
    assert table.cpu_s == pytest.approx(clean.cpu_s)
    beside = costs.at("l1", mix.share * rate, share=mix.share, model_share=mix.model_share)
    assert beside.cpu_s == pytest.approx(mix.cpu_s)
    halfway = costs.at("l1", mix.share * rate, share=mix.share, model_share=mix.model_share / 2)
    assert halfway.cpu_s == pytest.approx((clean.cpu_s + mix.cpu_s) / 2)
    # cpu_per_request passes the mix's model share: a full-table mix pays the hot-set price for L1.
    priced = costs.cpu_per_request({"l1": 0.6, "redis": 0.4}, rate, misses_pass_store=True)
    assert priced == pytest.approx(costs.idle_cpu_s_per_s / rate + 0.6 * clean.cpu_s + 0.4 * costs.at("redis", 0.4 * rate).cpu_s)


def _with_speed(record: dict, server_unit_us: float, redis_unit_us: float) -> dict:
    """``record`` as if its cores' probes read these unit times during the run."""
    return {**record, "core_speed": {"server": {"unit_us": server_unit_us, "samples": 200, "spread": 1.5},
                                     "redis": {"unit_us": redis_unit_us, "samples": 200, "spread": 1.5}}}


def test_a_run_on_a_slow_core_is_read_at_the_reference_speed(runs: list[dict]) -> None:
    """Server CPU scales by the server core's probe, Redis' by its own, idle CPU too; a record or a
    reference without a reading keeps its figures as measured."""
    run = {**runs[0], "idle_cpu_ms_per_s": {"server": 4.0, "redis": 2.0}}
    slow = _with_speed(run, 800.0, 500.0)
    levelled = at_speed(slow, {"server": 400.0, "redis": 500.0})
    assert levelled["server_cpu_us_per_request"] == pytest.approx(run["server_cpu_us_per_request"] / 2)
    assert levelled["redis_cpu_us_per_request"] == pytest.approx(run["redis_cpu_us_per_request"])
    assert levelled["idle_cpu_ms_per_s"] == pytest.approx({"server": 2.0, "redis": 2.0})
    assert cpu_us_at_speed(slow, {"server": 400.0, "redis": 500.0}) == pytest.approx(
        run["server_cpu_us_per_request"] / 2 + run["redis_cpu_us_per_request"])
    assert at_speed(run, {"server": 400.0}) is run and at_speed(slow, {}) is slow
    assert slow["server_cpu_us_per_request"] == run["server_cpu_us_per_request"]  # the record itself is untouched


def test_tier_costs_read_every_run_at_the_runs_median_core_speed(runs: list[dict]) -> None:
    """The same static run measured on a core twice as slow reads the same after levelling; the
    costs say which speed they are at, and a reference given overrides the runs' own."""
    static = next(r for r in runs if r["profile"] == "heavy" and r["mode"] == "static")
    others = [_with_speed(r, 400.0, 400.0) for r in runs if r is not static]
    fast = _with_speed(static, 400.0, 400.0)
    slow = _with_speed(_scaled_run(static, 2.0, idle_cpu_ms_per_s={}), 800.0, 800.0)
    fast["idle_cpu_ms_per_s"] = {}
    costs = tier_costs([*others, fast, slow], "traffic-heavy")
    assert costs.speed_reference == {"server": 400.0, "redis": 400.0}
    both = [p.cpu_s for p in costs.curves["redis"] if p.rate == fast["achieved_rps"]]
    assert len(both) == 2 and both[0] == pytest.approx(both[1]) and both[0] == pytest.approx(_cpu(fast), rel=2e-2)
    halved = tier_costs([*others, fast], "traffic-heavy", reference={"server": 200.0, "redis": 200.0})
    assert halved.speed_reference == {"server": 200.0, "redis": 200.0}
    assert halved.curves["model"][0].cpu_s < 0.6 * costs.curves["model"][0].cpu_s
    assert TierCosts.from_dict(costs.as_dict()).speed_reference == costs.speed_reference
    assert speed_reference(runs) == {}  # records from before the probe
