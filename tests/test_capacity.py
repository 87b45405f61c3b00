"""loadtests/capacity.py, projection.py and their report sections: a real (short) ladder against a
real server process, and the arithmetic on stated figures."""

from __future__ import annotations

import math
from pathlib import Path

from loadtests import cost, report
from loadtests.capacity import CapacityCurve, Rung, ladder, provisioning
from loadtests.projection import Target, project
from loadtests.runner import RunSpec


def _rung(rps: float, p99: float, holds: bool, cpu_us: float = 500.0) -> Rung:
    return Rung(rps, rps, p99 / 2, p99, 0, cpu_us, False, holds)


def test_knee_capacity_and_both_costs() -> None:
    curve = CapacityCurve("light", "hybrid", 50.0, server_cores=1,
                          rungs=[_rung(100, 2, True), _rung(400, 8, True, cpu_us=400), _rung(800, 90, False)])
    assert curve.knee is not None and curve.knee.achieved_rps == 400 and curve.capacity_per_core == 400
    need = provisioning(curve, target_qps=1000)
    assert need["cores"] == 3 and math.isclose(need["utilisation"], 1000 / 1200)
    assert math.isclose(need["cpu_cores_busy"], 0.4), "CPU-seconds way: 1000/s x 400 µs"
    assert provisioning(CapacityCurve("light", "static", 50.0, 1, [_rung(100, 60, False)]), 1000)["cores"] == 0


def test_a_short_real_ladder_stops_where_the_slo_breaks(registry: Path) -> None:
    # An SLO no real request can meet: the first rung breaks, so no capacity is claimed.
    curve = ladder(registry, RunSpec("light", "dynamic", duration_s=1.0), rates=(50.0, 100.0), slo_p99_ms=0.001)
    assert len(curve.rungs) == 1 and not curve.rungs[0].holds and curve.capacity_per_core == 0
    assert "SLO" in curve.broke_because and curve.rungs[0].achieved_rps > 0
    # A generous SLO: both rungs hold and the ladder ends first.
    curve = ladder(registry, RunSpec("light", "dynamic", duration_s=2.0), rates=(50.0, 100.0), slo_p99_ms=5000)
    assert [r.holds for r in curve.rungs] == [True, True] and curve.capacity_per_core > 0
    assert curve.broke_because.startswith("the ladder ended first")
    html = report.capacity_section([curve], 1e5)
    assert "data:image/png;base64," in html and "provisioned cores" in html and "ceil(target_qps" in html


def test_projection_scales_measured_figures() -> None:
    base = {"profile": "light", "distribution": "zipf:1.1", "key_count": 10_000, "head_size": 1_000,
            "server_cpu_us_per_request": 100.0, "redis_cpu_us_per_request": 20.0}
    records = [dict(base, mode="static", redis_bytes=1_000_000, precompute_s=2.0, precompute_cpu_s=1.0),
               dict(base, mode="dynamic", redis_bytes=0, precompute_s=0.0, precompute_cpu_s=0.0),
               dict(base, mode="hybrid", redis_bytes=200_000, precompute_s=0.2, precompute_cpu_s=0.1)]
    curves = [CapacityCurve("light", "static", 50.0, 1, [_rung(2_000, 5, True)])]
    static, dynamic, hybrid = project(records, curves, Target(qps=1e5, keys=100_000_000), cost.Prices())
    assert static.api_cores == 50 and "capacity" in static.api_cores_from
    assert dynamic.api_cores == math.ceil(1e5 * 100e-6 / 0.7) and "CPU" in dynamic.api_cores_from
    assert static.redis_bytes == 1e10 and static.redis_masters == 3  # CPU: 1e5 x 20 µs = 2 cores / 0.7 -> 3
    assert static.redis_nodes == 6 and dynamic.redis_nodes == 0
    assert static.precompute_keys == 100_000_000 and hybrid.precompute_keys == 10_000_000
    assert math.isclose(static.precompute_cpu_hours, 1e8 * 1e-4 / 3600)
    assert math.isclose(static.precompute_cost_per_refresh, static.precompute_cpu_hours * cost.Prices().batch_vcpu_hour)
    assert "redis_masters" in report.projection_section([static, dynamic, hybrid], Target())
