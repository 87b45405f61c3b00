"""loadtests/split.py and split_report.py: a short real load test of a hybrid server with a 90/10
split and a shadow (real server process, Redis, Locust); the per-version figures are checked against
each other and against what the server counted, never against absolute times."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import cost, report
from loadtests.runner import RunSpec, compare
from tests.test_consistency import two_versions  # noqa: F401  (the fixture the next one builds on)
from tests.test_routes import Versions, versions  # noqa: F401  (the fixture)

RUN_SECONDS = 3.0
RATE = 100.0


@pytest.fixture(scope="module")
def record(versions: Versions) -> dict:  # type: ignore[type-arg]
    routes = f"{versions.a}:90,{versions.b}:10,shadow={versions.c}"
    spec = RunSpec("light", "hybrid", "uniform", rate=RATE, users=5, duration_s=RUN_SECONDS, head_size=500, l1_size=5000,
                   settings=(("routes", routes),))
    [found] = compare(versions.registry, [spec], cost.Prices(), progress=False)
    return found


def test_the_split_run_records_each_version(record: dict, versions: Versions) -> None:  # type: ignore[type-arg]
    split = record["split"]
    rows = split["versions"]
    assert {r["version"] for r in rows.values() if r["role"] == "primary"} == {versions.a, versions.b}
    assert rows[f"{versions.c} (shadow)"]["role"] == "shadow"
    primary = [r for r in rows.values() if r["role"] == "primary"]
    # Every answered request is one version's (single-key GETs: one version each).
    assert sum(r["requests"] for r in primary) == record["tier_counts"]["requests"]
    assert rows[versions.a]["requests"] > rows[versions.b]["requests"] > 0  # uniform keys: about 90/10
    assert sum(r["cpu_share"] for r in rows.values()) == pytest.approx(1.0)
    for r in primary:
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["cpu_us_per_request"] > 0 and r["usd_per_million"] > 0
    differences = split["shadow"]["differences"]
    assert {d["primary"] for d in differences} == {versions.a, versions.b}
    assert all(d["shadow"] == versions.c and d["compared"] > 0 for d in differences)


def test_the_report_shows_the_split(record: dict, versions: Versions, tmp_path: Path) -> None:  # type: ignore[type-arg]
    _, page = report.write_report([record], tmp_path, {"duration_s": RUN_SECONDS})
    text = page.read_text()
    assert "<h2>Traffic split</h2>" in text
    assert versions.b in text and f"{versions.c} (shadow)" in text and "mean |difference|" in text
    assert report.render_html([{**record, "split": {}}], {}).count("Traffic split") == 0
