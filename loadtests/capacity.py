"""Capacity: how much traffic one server core holds under a p99 SLO, per mode, and what a target
rate then needs in provisioned cores.

For each mode, one prepared server (:func:`loadtests.runner.prepared`) is offered a ladder of rates,
each for a fixed time (its first second left out of the percentiles), until a rung breaks: client p99 over the SLO, a failed request, or the
achieved rate under ``SATURATION_SHARE`` of the offered one, less Poisson noise (the server fell behind: its queue, and
so its latency, only grows). The *knee* is the last rung that held; capacity per core is its
achieved rate over the server's cores (the runner pins it to one). A rung where the load generator
itself saturated ends the ladder too, and the capacity is then a lower bound (``generator_bound``).

Cost at a target rate, both ways:

- CPU-seconds (what the comparison prices): target x CPU per request at the knee, as if the CPU
  could be bought by the second;
- provisioned cores: ``ceil(target / capacity_per_core)``, what a deployment that must hold the
  SLO buys, at utilisation ``target / (cores x capacity_per_core)``.

Example::

    curve = ladder(Path("registry"), RunSpec("light", "hybrid"), rates=(200, 400, 800), slo_p99_ms=50)
    provisioning(curve, target_qps=100_000)      # {"cores": ..., "utilisation": ..., ...}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtests import cost
from loadtests.runner import RunResult, RunSpec, fell_behind, measure, prepared

DEFAULT_RATES = (100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
FULL_DURATION_S = 6.0
# make demo --quick: fewer, shorter rungs (about a minute and a half for three modes).
QUICK_RATES = (100.0, 300.0, 900.0, 2700.0)
QUICK_DURATION_S = 3.0
# Start of each rung left out of its percentiles: users starting and connections opening are not
# the steady state a rate is judged by (the rung still counts its requests and rate).
RUNG_WARMUP_S = 1.0
# Locust users per rung: enough that each user's interval (users / rate) exceeds twice the SLO, so
# open-loop pacing is not held back by users waiting on responses up to the SLO.
USERS_PER_SLO_INTERVAL = 2.0
MIN_USERS = 10


@dataclass(frozen=True)
class Rung:
    """One offered rate and what it gave."""

    offered_rps: float
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    failures: int
    server_cpu_us_per_request: float
    generator_saturated: bool
    holds: bool  # p99 within the SLO, no failure, the offered rate reached


@dataclass
class CapacityCurve:
    """The ladder of one mode and where it broke."""

    profile: str
    mode: str
    slo_p99_ms: float
    server_cores: int
    rungs: list[Rung] = field(default_factory=list)
    broke_because: str = "the ladder ended first (capacity is at least the last rate)"

    @property
    def knee(self) -> Rung | None:
        """The highest rung that held (rungs hold up to the first that breaks)."""
        held = [r for r in self.rungs if r.holds]
        return held[-1] if held else None

    @property
    def generator_bound(self) -> bool:
        """Whether the generator, not the server, ended the ladder: the capacity is a lower bound."""
        return any(r.generator_saturated for r in self.rungs)

    @property
    def capacity_per_core(self) -> float:
        """Highest rate per server core that met the SLO (0: none did)."""
        knee = self.knee
        return knee.achieved_rps / self.server_cores if knee else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, derived figures included."""
        knee = self.knee
        return {**asdict(self), "knee_rps": knee.achieved_rps if knee else 0.0,
                "capacity_rps_per_core": self.capacity_per_core, "generator_bound": self.generator_bound}


def _rung(result: RunResult, slo_p99_ms: float) -> tuple[Rung, str | None]:
    """The rung a measurement gives, and why the ladder stops there (``None``: go on)."""
    p99 = result.latency_ms["p99"]
    broken = None
    if result.failures:
        broken = f"{result.failures} failed requests at {result.offered_rps:.0f} req/s"
    elif p99 > slo_p99_ms:
        broken = f"p99 {p99:.1f} ms over the {slo_p99_ms:g} ms SLO at {result.offered_rps:.0f} req/s"
    elif fell_behind(result.achieved_rps, result.offered_rps, result.duration_s):
        broken = f"achieved {result.achieved_rps:.0f} of {result.offered_rps:.0f} req/s offered"
    rung = Rung(result.offered_rps, result.achieved_rps, result.latency_ms["p50"], p99, result.failures,
                result.server_cpu_us_per_request, result.load_generator_saturated, holds=broken is None)
    if broken is None and result.load_generator_saturated:
        # The server held, but a higher rate would measure the generator: stop, as a lower bound.
        return rung, f"the load generator saturated at {result.offered_rps:.0f} req/s (capacity is at least this)"
    return rung, broken


def ladder(registry: Path, spec: RunSpec, rates: tuple[float, ...] = DEFAULT_RATES, slo_p99_ms: float = 50.0) -> CapacityCurve:
    """Offer ``rates`` in turn to one prepared server of ``spec``'s mode until one breaks."""
    with prepared(spec, registry) as bench:
        curve = CapacityCurve(spec.profile, spec.mode, slo_p99_ms, bench.server_cores)
        for rate in rates:
            users = max(MIN_USERS, math.ceil(rate * USERS_PER_SLO_INTERVAL * slo_p99_ms / 1000))
            warmup = min(RUNG_WARMUP_S, spec.duration_s / 3)  # a short rung keeps most of its samples
            result = measure(bench, replace(spec, rate=rate, users=users, latency_after_s=warmup), cost.Prices())
            rung, reason = _rung(result, slo_p99_ms)
            curve.rungs.append(rung)
            if reason is not None:
                curve.broke_because = reason
                break
    return curve


def provisioning(curve: CapacityCurve, target_qps: float) -> dict[str, float]:
    """What ``target_qps`` requests/s need, both ways (see the module doc); cores 0 when no rung held."""
    knee = curve.knee
    if knee is None or curve.capacity_per_core <= 0:
        return {"target_qps": target_qps, "cpu_cores_busy": 0.0, "cores": 0, "utilisation": 0.0}
    cores = math.ceil(target_qps / curve.capacity_per_core)
    return {"target_qps": target_qps,
            "cpu_cores_busy": target_qps * knee.server_cpu_us_per_request / 1e6,
            "cores": cores,
            "utilisation": target_qps / (cores * curve.capacity_per_core)}


def capacity_formulas() -> str:
    """The two ways of costing a target rate, as the report prints them."""
    return ("CPU-seconds:      cores_busy = target_qps x server_cpu_us_per_request(knee) / 1e6\n"
            "provisioned:      cores = ceil(target_qps / capacity_rps_per_core)\n"
            "                  utilisation = target_qps / (cores x capacity_rps_per_core)\n"
            "capacity_rps_per_core = achieved rps at the knee (last rung with p99 <= SLO, no failure,\n"
            "                        offered rate reached) / server cores")


def measure_capacity(registry: Path, profile: str, modes: tuple[str, ...], rates: tuple[float, ...] = DEFAULT_RATES,
                     slo_p99_ms: float = 50.0, duration_s: float = 5.0, progress: bool = True) -> list[CapacityCurve]:
    """One ladder per mode (``hybridserve capacity``, and the demo's capacity section)."""
    curves = []
    for mode in modes:
        if progress:
            print(f"capacity of {profile}/{mode}: rates {', '.join(f'{r:g}' for r in rates)} req/s, "
                  f"{duration_s:g}s each, SLO p99 {slo_p99_ms:g} ms ...", flush=True)
        curve = ladder(registry, RunSpec(profile, mode, duration_s=duration_s), rates, slo_p99_ms)
        if progress:
            print(f"        {curve.capacity_per_core:.0f} req/s per core; stopped: {curve.broke_because}", flush=True)
        curves.append(curve)
    return curves
