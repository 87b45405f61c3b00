"""What each cache tier costs on this machine, measured the way the load test measures it.

Calibration *is* a small comparison: :func:`loadtests.runner.run_one` runs of the served model, each
a fresh server and Redis under Locust at a fixed offered rate, read by
:func:`loadtests.tier_costs.tier_costs`. Static runs measure a Redis hit and dynamic runs a model
call, each at every one of :data:`RATE_SHARES` of the calibration rate, so each gets a CPU- and
latency-vs-load curve (batching and queueing as the load produces them). Hybrid runs measure the
rest: on a small hot set that L1 holds after the warm-up (:data:`L1_HOT_SET`, at every rate share)
an L1 hit alone, with its own latency curve; on the comparison's Zipf keys an L1 hit beside a third
of the requests going on to the model; and on uniform keys with no L1 and no head, a miss's Redis lookup and write.
The calibration rate is the target QPS, capped at :data:`MAX_CALIBRATION_RATE` (what one Locust
process offers on a small machine; above it the curves hold their last measured point, and the
candidates say so). A ``results.json`` of the same model (``hybridserve compare``) can stand in for
all of it (its L1 then comes from its hybrid runs, its p99 bounded by Redis', and a miss's store
round trips are estimated).

Example::

    costs = calibrate(Settings(model_name="traffic-heavy"), qps=500)
    costs.at("model", rate=100).p99_ms, costs.bytes_per_entry
    costs = costs_from_results(Path("out/results.json"), "traffic-heavy")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.runner import RunSpec, compare
from loadtests.tier_costs import TierCosts, tier_costs
from models.registry import model_name
from serving.settings import Settings

# One Locust process offers this much reliably on a loaded 2-core machine.
MAX_CALIBRATION_RATE = 400.0
# Every tier is measured at these shares of the calibration rate: its curve.
RATE_SHARES: tuple[float, ...] = (0.25, 1.0)
CALIBRATION_SECONDS = 12.0
# Each run is repeated this many times (in rounds) and the median run kept: identical runs on a
# small VM differ by 10-20% in CPU per request, more than a tier's share of a candidate's cost.
CALIBRATION_REPEATS = 3
PROFILES: tuple[str, ...] = ("light", "heavy")
# L1 runs: every request on a hot set this small (it never moves), so the runner's warm-up puts most
# of it in L1 and L1 answers well over 90% of the run (tier_costs.CLEAN_L1_SHARE).
L1_HOT_SET = "drift:hot=50,p=1,every=1000000000"


# The run that measures each tier alone: its mode and key distribution.
TIER_RUNS: dict[str, tuple[str, str]] = {"redis": ("static", "zipf:1.1"), "model": ("dynamic", "zipf:1.1"),
                                         "l1": ("hybrid", L1_HOT_SET)}


def tier_spec(model: str, tier: str, rate: float, duration_s: float = CALIBRATION_SECONDS) -> RunSpec:
    """The calibration's run of ``tier`` alone (:data:`TIER_RUNS`) for ``model`` at ``rate``."""
    mode, distribution = TIER_RUNS[tier]
    return RunSpec(profile_of(model), mode, distribution, rate=rate, duration_s=duration_s)


def calibration_specs(model: str, qps: float, duration_s: float = CALIBRATION_SECONDS) -> list[RunSpec]:
    """The runs that measure ``model``'s tiers (see the module doc)."""
    profile = profile_of(model)
    rate = min(qps, MAX_CALIBRATION_RATE)
    rates = [max(1.0, rate * share) for share in RATE_SHARES]
    return ([tier_spec(model, tier, r, duration_s) for tier in TIER_RUNS for r in rates]
            + [RunSpec(profile, "hybrid", "zipf:1.1", rate=rate, duration_s=duration_s),
               RunSpec(profile, "hybrid", "uniform", rate=rate, duration_s=duration_s, head_size=0, l1_size=0,
                       settings=(("admission", "always"),))])


def calibrate(settings: Settings, qps: float, duration_s: float = CALIBRATION_SECONDS,
              progress: bool = True, repeats: int = CALIBRATION_REPEATS) -> TierCosts:
    """Measure ``settings``' model's tier costs by load tests (see the module doc), each run
    ``repeats`` times and the median run kept (:func:`loadtests.runner.median_run`)."""
    records = compare(settings.registry, calibration_specs(settings.model_name, qps, duration_s), progress=progress,
                      repeats=repeats)
    return calibration_costs(records, settings.model_name, duration_s, repeats)


def calibration_costs(records: list[dict[str, Any]], model: str, duration_s: float, repeats: int) -> TierCosts:
    """Tier costs of ``model`` from the records of :func:`calibration_specs` runs (each the median
    of ``repeats``), wherever they were run (the tuning benchmark interleaves them with others)."""
    costs = tier_costs(records, model)
    costs.source = (f"calibrated: {len(records)} load-test runs of {duration_s:g} s"
                    + (f", each the median of {repeats}" if repeats > 1 else ""))
    return costs


def costs_from_results(path: Path, model: str) -> TierCosts:
    """Tier costs of ``model`` from a comparison's ``results.json`` (its own runs, not new ones)."""
    runs: list[dict[str, Any]] = json.loads(path.read_text())["runs"]
    costs = tier_costs(runs, model)
    costs.source = f"{path}: {sum(1 for r in runs if r.get('profile') in PROFILES and model_name(r['profile']) == model)} runs"
    return costs


def profile_of(model: str) -> str:
    """What a load-test spec names for ``model``: its demo profile, or the registered name itself
    (``RunSpec`` takes any model of the registry, e.g. one from ``hybridserve import``)."""
    for profile in PROFILES:
        if model_name(profile) == model:
            return profile
    return model

