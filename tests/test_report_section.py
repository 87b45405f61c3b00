"""tuning/report_section.py: the demo report's tuning section renders what `tune` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.keys import key_stream
from tests.test_recommend import COSTS, KEY_COUNT
from tuning.recommend import recommend
from tuning.report_section import tuning_section
from tuning.traces import Trace


@pytest.fixture(scope="module")
def trace() -> Trace:
    return Trace.from_keys(key_stream("zipf:1.1", 20, seed=3).take(6000))


@pytest.mark.parametrize("slo", [40.0, 0.1])
def test_renders_recommendation_and_verification(tmp_path: Path, trace: Trace, slo: float) -> None:
    rec = recommend(trace, COSTS, slo_p99_ms=slo, qps=500, key_count=KEY_COUNT)
    report = rec.as_dict() | {"trace": "demo.keys", "plots": []}
    report["verify"] = {"candidate": "hybrid l1=10 head=0 always", "measured_hit_ratio": 0.5,
                        "simulated_hit_ratio": 0.51, "difference_pp": 1.0}
    (tmp_path / "tuning.json").write_text(json.dumps(report, default=str))
    html = tuning_section(tmp_path)
    assert "Cache tuning" in html and "0.51" not in html and "51.00%" in html
    if rec.chosen is not None:
        assert f"HYBRIDSERVE_MODE={rec.chosen.mode}" in html and "Recommended" in html
    else:
        assert "No configuration meets" in html

