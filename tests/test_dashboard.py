"""deploy/grafana/dashboards: every metric, label and label value the dashboard queries is one a real
server exports, in each mode (scraped from /metrics over HTTP; histogram _bucket/_sum/_count count)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import running

DASHBOARDS = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
METRIC = re.compile(r"\bhybridserve_[a-z0-9_]+\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
PROMETHEUS_LABELS = {"instance", "job"}  # added by Prometheus at scrape time


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard.get("templating", {}).get("list", []) if "definition" in v]
    return exprs


def _exported(text: str) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen, from a Prometheus text exposition."""
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return found


def test_dashboards_query_something() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files
    for path in files:
        queries = _queries(json.loads(path.read_text()))
        assert len(queries) >= 10 and all(METRIC.search(q) for q in queries), path.name


@pytest.mark.parametrize("mode", ["static", "dynamic", "hybrid"])
def test_dashboard_metrics_are_exported(ready_settings, mode: str) -> None:  # type: ignore[no-untyped-def]
    settings = ready_settings(mode)
    with running(settings) as (_, client):
        for _ in range(2):  # a miss and (hybrid) a hit
            assert client.get("/v1/predict/2:5").status_code == 200
        exported = _exported(client.get("/metrics").text)
    for path in sorted(DASHBOARDS.glob("*.json")):
        for query in _queries(json.loads(path.read_text())):
            names = METRIC.findall(query)
            missing = [n for n in names if n not in exported]
            assert not missing, f"{path.name}: {mode} server does not export {missing} (queried by {query})"
            labels = {label for n in names for label in exported[n]} | PROMETHEUS_LABELS
            used = {x.strip() for group in BY.findall(query) for x in group.split(",") if x.strip()}
            used |= {name for name, _, _ in MATCHER.findall(query)}
            assert used <= labels, f"{path.name}: labels {used - labels} not on {names} ({query})"
            for name, op, value in MATCHER.findall(query):
                if op == "=" and name not in PROMETHEUS_LABELS:
                    seen = {v for n in names for v in exported[n].get(name, set())}
                    assert value in seen, f"{path.name}: no {name}={value!r} on {names} ({query})"
