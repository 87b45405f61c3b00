"""tuning.verify and tuning.calibrate against a live server (embedded Redis, uvicorn subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import Settings
from tuning.calibrate import TIERS, calibrate
from tuning.recommend import Candidate
from tuning.traces import read_trace
from tuning.verify import TOLERANCE_PP, verify

WEB_TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "cache2k-web07.keys.txt"
# 3,000 requests hold fewer distinct keys than the 3,360-key test registry, so they map 1:1.
SAMPLE_REQUESTS = 3000


@pytest.mark.slow
@pytest.mark.skipif(not WEB_TRACE.is_file(), reason=f"real trace {WEB_TRACE} not present")
@pytest.mark.parametrize("l1_size, head_size, admission", [(200, 100, "after:2")])
def test_server_wiring_counts_the_hits_the_simulation_counts_on_sequential_requests(
    registry: Path, l1_size: int, head_size: int, admission: str
) -> None:
    """The live server, fed the trace one GET at a time, counts the hits the simulator counts.

    Server and simulation run the same L1 and admission code (``serving.cache``) on the same
    sequential requests, so this cannot show that a recommendation holds under real traffic.
    What it proves is the wiring around that code: the head the simulation picks is the one
    precomputed, the server's tiers are consulted in the simulated order, L1 size and admission
    reach the server, and ``/v1/cache/stats`` counts every tier. A recommendation is verified
    under concurrent load by the load-test verification, not here.
    """
    candidate = Candidate("hybrid", head_size, l1_size, admission, 0.0, 0.0, 0.0, 0)
    result = verify(read_trace(WEB_TRACE), candidate, Settings(registry=registry), limit=SAMPLE_REQUESTS)
    assert result.requests == SAMPLE_REQUESTS and result.evaluated == SAMPLE_REQUESTS // 2
    assert result.difference_pp <= TOLERANCE_PP, result.as_dict()
    assert abs(result.measured_l1_hit_ratio - result.simulated_l1_hit_ratio) * 100 <= TOLERANCE_PP
    assert 0.0 < result.measured_hit_ratio < 1.0


def test_calibration_measures_every_tier(registry: Path) -> None:
    costs = calibrate(Settings(registry=registry, model_name="traffic-heavy"), requests=60)
    assert set(costs.tiers) == set(TIERS)
    assert all(t.cpu_s > 0 and t.p99_ms >= t.p50_ms > 0 for t in costs.tiers.values())
    # The heavy model costs more than a dict lookup: the premise of caching it.
    assert costs.tiers["model"].p50_ms > costs.tiers["l1"].p50_ms
    assert 20 < costs.bytes_per_entry < 1000 and costs.precompute_cpu_s_per_key > 0
