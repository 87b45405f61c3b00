"""loadtests/report.py and report_check.py: the report's layout, and a look at it in headless Chromium.

tests/data/results_small.json is a synthetic fixture in the results.json format (two profiles, a
uniform run, a saturated run; invented figures) so the page is checked without load tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loadtests import report
from loadtests.report_check import VIEWPORT_WIDTH, check_page, find_chromium

RESULTS = Path(__file__).with_name("data") / "results_small.json"


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def page(results: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, html_path = report.write_report(results["runs"], tmp_path_factory.mktemp("report"), results["context"])
    return html_path


def test_verdict_first_then_tradeoff_then_one_section_per_profile(page: Path, results: dict[str, Any]) -> None:
    text = page.read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings[:2] == ["Verdict", "The trade-off: cost against p99 latency"]
    profiles = list(dict.fromkeys(r["profile"] for r in results["runs"]))
    assert [h for h in headings if h.startswith("Profile: ")] == [f"Profile: {p}" for p in profiles]
    for profile in profiles:
        section = text.split(f"<h2>Profile: {profile}</h2>", 1)[1].split("</section>", 1)[0]
        runs_in_table = re.findall(r"<tr><td>([^<]*)</td>", section)
        assert runs_in_table and all(run.startswith(f"{profile}/") for run in runs_in_table)
    # the trade-off picture, then latency, CPU and hit ratio per profile; every image described
    assert text.count("data:image/png;base64,") == 1 + 3 * len(profiles)
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="[^"]+">', text)) == 1 + 3 * len(profiles)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # opens offline, as is


def test_report_in_headless_chromium(page: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    check = check_page(page, page.with_name("report.png"))
    assert check.problems == [], check.problems
    assert check.images == 7 and check.broken == 0
    assert check.client_width == VIEWPORT_WIDTH and check.scroll_width <= check.client_width
    assert check.scroll_height > 2 * 900  # the whole report was laid out, not an error page


def test_the_check_sees_overflow_and_broken_images(page: Path, tmp_path: Path) -> None:
    """The browser check can fail: a too-wide block and a broken image are both reported."""
    if find_chromium() is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace(
        "</body>", '<div style="width:2000px">wide</div><img src="data:image/png;base64,AAAA" alt="broken"></body>'))
    problems = check_page(bad, tmp_path / "bad.png").problems
    assert any("horizontal overflow" in p for p in problems) and any("1 of 8 images broken" in p for p in problems)


def test_the_report_says_how_a_trace_was_replayed() -> None:
    from loadtests.report import _trace_note

    own = {"distribution": "trace:t.keys", "unknown_key_share": 0.125, "trace_keys_mapped": False}
    assert "12.5% of its requests were for keys the model does not have" in _trace_note([own])
    assert "MAPPED" in _trace_note([{**own, "distribution": "trace:map:t.keys", "trace_keys_mapped": True}])
    assert _trace_note([{"distribution": "zipf:1.1"}]) == ""


def test_the_table_says_how_fast_each_runs_cores_ran(results: dict[str, Any]) -> None:
    """The probe's unit times beside the CPU columns; "-" for a record from before the probe."""
    run = results["runs"][0]
    probed = {**run, "core_speed": {"server": {"unit_us": 412.4, "samples": 240, "spread": 2.1},
                                    "redis": {"unit_us": 398.0, "samples": 240, "spread": 1.9}}}
    table = report._html_table([probed, run])
    assert "core speed: probe unit µs, server / Redis" in table
    assert "<td>412 / 398</td>" in table and table.count("<td>-</td>") >= 1
