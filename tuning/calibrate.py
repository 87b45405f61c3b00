"""What each cache tier costs on this machine, measured the way the load test measures it.

Calibration *is* a small comparison: :func:`loadtests.runner.run_one` runs of the served model, each
a fresh server and Redis under Locust at a fixed offered rate, read by
:func:`loadtests.tier_costs.tier_costs` (static runs: the Redis tier; dynamic: the model; hybrid: L1).
Dynamic runs at :data:`RATE_SHARES` of the calibration rate, so the model tier gets a latency- and
CPU-vs-rate curve (batching and queueing as the target rate produces them); static and hybrid run
once, at the full rate. The
calibration rate is the target QPS, capped at :data:`MAX_CALIBRATION_RATE` (what one Locust process
offers on a small machine; above it the curves hold their last measured point, and the candidates
say so). A ``results.json`` of the same model (``hybridserve compare``) can stand in for all of it.

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
# Static and dynamic are measured at these shares of the calibration rate: their tier curves.
RATE_SHARES: tuple[float, ...] = (0.25, 1.0)
CALIBRATION_SECONDS = 12.0
PROFILES: tuple[str, ...] = ("light", "heavy")


def calibration_specs(model: str, qps: float, duration_s: float = CALIBRATION_SECONDS) -> list[RunSpec]:
    """The runs that measure ``model``'s tiers: static and dynamic at each rate share, hybrid at the
    full rate. ``ValueError`` for a model that is not a load-test profile."""
    profile = profile_of(model)
    rate = min(qps, MAX_CALIBRATION_RATE)
    # Static once, at the full rate: a Redis hit is not batched, so its cost hardly moves with the
    # rate, and every static run pays a precompute of the whole table.
    specs = [RunSpec(profile, "static", rate=rate, duration_s=duration_s)]
    specs += [RunSpec(profile, "dynamic", rate=max(1.0, rate * share), duration_s=duration_s) for share in RATE_SHARES]
    return specs + [RunSpec(profile, "hybrid", rate=rate, duration_s=duration_s)]


def calibrate(settings: Settings, qps: float, duration_s: float = CALIBRATION_SECONDS,
              progress: bool = True) -> TierCosts:
    """Measure ``settings``' model's tier costs by load tests (see the module doc)."""
    records = compare(settings.registry, calibration_specs(settings.model_name, qps, duration_s), progress=progress)
    costs = tier_costs(records, settings.model_name)
    costs.source = f"calibrated: {len(records)} load-test runs of {duration_s:g} s"
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

