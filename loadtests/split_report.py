"""The split scenario's section of the report: per-version latency, CPU and cost, and the shadow's
difference from the answering versions, for every run whose server had a traffic split
(``split`` in its record, :mod:`loadtests.split`). Plain HTML tables: no plot needed for a handful
of versions."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]


def _cells(values: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>"


def _versions_table(split: dict[str, Any]) -> str:
    rows = []
    for name, v in split["versions"].items():
        latency = v["latency_ms"]
        rows.append(_cells([name, f"{v['requests']:,}", f"{v['request_share']:.1%}" if v["role"] == "primary" else "(shadow)",
                            f"{latency['p50']:.2f}" if latency else "-", f"{latency['p99']:.2f}" if latency else "-",
                            f"{v['cpu_share']:.1%}", f"{v['cpu_us_per_request']:.0f}", f"{v['usd_per_million']:.4f}"]))
    head = ("<tr><th>version</th><th>requests</th><th>share of requests</th><th>server p50 ≤ ms</th><th>server p99 ≤ ms</th>"
            "<th>share of server CPU</th><th>CPU µs / request</th><th>serving CPU $ / million predictions</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _shadow_table(split: dict[str, Any]) -> str:
    shadow = split["shadow"]
    if not shadow["differences"]:
        return ""
    rows = [_cells([d["primary"], d["shadow"], f"{d['compared']:,}", f"{d['identical']:.1%}", f"{d['mean_abs']:.3f}", f"{d['max_abs']:.3f}"])
            for d in shadow["differences"]]
    head = ("<tr><th>answering version</th><th>shadow</th><th>keys compared</th><th>identical</th><th>mean |difference|</th>"
            "<th>max |difference|</th></tr>")
    return (f"<p>Shadow: {shadow['dropped']:,} shadow requests dropped (queue full), {shadow['errors']:,} failed during the run; "
            f"comparisons since the server started (warm-up included).</p><table>{head}{''.join(rows)}</table>")


def split_section(records: Sequence[Record]) -> str:
    """HTML for the runs with a traffic split; empty when there are none."""
    runs = [r for r in records if r.get("split")]
    if not runs:
        return ""
    parts = []
    for r in runs:
        routes = r["split"]["routes"] or {}
        shown = ", ".join(f"{x['version']}:{x['weight']:g}" for x in routes.get("routes", []))
        shadow = f", shadow {routes['shadow']}" if routes.get("shadow") else ""
        parts.append(f"<h3>{html.escape(r['profile'])}/{html.escape(r['mode'])}/{html.escape(r['distribution'])}: "
                     f"{html.escape(shown + shadow)}</h3>{_versions_table(r['split'])}{_shadow_table(r['split'])}")
    return ("<h2>Traffic split</h2><p>Per version of the split: latency is the server's own (upper bounds of "
            "<code>hybridserve_version_request_seconds</code> buckets), CPU is the server process's, shared out by each "
            "version's share of request-seconds (the shadow's background work included); cost is that CPU at the serving "
            "vCPU price per million predictions the version answered.</p>" + "".join(parts))
