"""results.json, a self-contained report.html (plots inlined as PNG data URIs, no network needed)
and the terminal summary of a comparison.

Example::

    records = compare(Path("registry"), specs)          # loadtests.runner
    write_report(records, Path("out"), context={"machine": "2 cores", "when": "2026-12-02", "duration_s": 20})
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402

from loadtests import cost  # noqa: E402
from loadtests.capacity import CapacityCurve, capacity_formulas, provisioning  # noqa: E402
from loadtests.projection import Projection, Target, projection_formulas  # noqa: E402

MODE_COLOURS = {"static": "#4C72B0", "dynamic": "#DD8452", "hybrid": "#55A868"}


def _label(r: dict[str, Any]) -> str:
    dist = "" if r["distribution"].startswith("zipf") else f" ({r['distribution']})"
    return f"{r['profile']}/{r['mode']}{dist}"


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _bar_chart(records: Sequence[dict[str, Any]], value: Any, title: str, ylabel: str, log: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    labels = [_label(r) for r in records]
    ax.bar(labels, [value(r) for r in records], color=[MODE_COLOURS[r["mode"]] for r in records])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def _latency_chart(records: Sequence[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.25
    xs = range(len(records))
    for i, q in enumerate(("p50", "p95", "p99")):
        ax.bar([x + (i - 1) * width for x in xs], [max(r["latency_ms"][q], 0.05) for r in records], width, label=q)
    ax.set_xticks(list(xs), [_label(r) for r in records], rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("ms (client side)")
    ax.set_title("Latency percentiles per run")
    ax.legend()
    return _png(fig)


def _by(records: Sequence[dict[str, Any]], profile: str, mode: str, dist_prefix: str = "zipf") -> dict[str, Any] | None:
    return next((r for r in records if r["profile"] == profile and r["mode"] == mode
                 and r["distribution"].startswith(dist_prefix)), None)


def verdict(records: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-language conclusions drawn from the measured records."""
    lines = []
    for profile in sorted({r["profile"] for r in records}):
        runs = [r for r in records if r["profile"] == profile and r["distribution"].startswith("zipf")]
        if not runs:
            continue
        cheapest = min(runs, key=lambda r: r["cost"]["per_million_target"]["total"])
        cpu = {r["mode"]: r["server_cpu_us_per_request"] + r["redis_cpu_us_per_request"] for r in runs}
        lines.append(
            f"{profile}: cheapest on Zipf traffic is {cheapest['mode']} at "
            f"${cheapest['cost']['per_million_target']['total']:.4f} per million predictions; server+Redis CPU per "
            "request: " + ", ".join(f"{m} {v:.0f} µs" for m, v in sorted(cpu.items())) + "."
        )
        hybrid, dynamic = _by(records, profile, "hybrid"), _by(records, profile, "dynamic")
        if hybrid and dynamic:
            h = hybrid["server_cpu_us_per_request"] + hybrid["redis_cpu_us_per_request"]
            d = dynamic["server_cpu_us_per_request"]
            if h < 0.8 * d:
                lines.append(f"{profile}: caching pays — hybrid serves {hybrid['hit_ratio']['total']:.0%} from cache and "
                             f"costs {h:.0f} µs CPU a request against dynamic's {d:.0f} µs.")
            elif h < d:
                lines.append(f"{profile}: caching saves little — hybrid serves {hybrid['hit_ratio']['total']:.0%} from "
                             f"cache yet costs {h:.0f} µs CPU a request against dynamic's {d:.0f} µs ({1 - h / d:.0%} less): "
                             "a cache lookup costs nearly what this model's inference does, and a Redis hit more.")
            else:
                lines.append(f"{profile}: caching does not pay here — hybrid costs {h:.0f} µs CPU a request against "
                             f"dynamic's {d:.0f} µs: the cache lookups (an L1 miss goes to Redis, a Redis miss adds a "
                             f"write) cost about as much as the inference they save"
                             + (" (a Redis hit costs more than this cheap model)." if d < 2 * h else
                                ", and dynamic batching already makes each dynamic row cheap."))
        uniform = _by(records, profile, "hybrid", "uniform")
        if uniform and hybrid:
            lines.append(f"{profile}: on uniform traffic hybrid's hit ratio falls to {uniform['hit_ratio']['total']:.0%} "
                         f"(from {hybrid['hit_ratio']['total']:.0%} on Zipf): with no popular keys a cache stops paying.")
    saturated = [_label(r) for r in records if r["load_generator_saturated"]]
    if saturated:
        lines.append("Offered load was not reached (load generator or server saturated) in: " + ", ".join(saturated)
                     + ". CPU per request stays valid; throughput and latency there are at saturation.")
    return lines


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    """Fixed-width table for the terminal."""
    header = f"{'run':28s} {'rps':>7s} {'p50':>6s} {'p99':>6s} {'fail':>5s} {'hit':>5s} {'cpu µs':>7s} {'redis µs':>8s} {'$/M':>8s} {'$/month':>9s}"
    rows = [header, "-" * len(header)]
    for r in records:
        rows.append(
            f"{_label(r):28s} {r['achieved_rps']:7.0f} {r['latency_ms']['p50']:6.1f} {r['latency_ms']['p99']:6.1f} "
            f"{r['failures']:5d} {r['hit_ratio']['total']:5.2f} {r['server_cpu_us_per_request']:7.0f} "
            f"{r['redis_cpu_us_per_request']:8.1f} {r['cost']['per_million_target']['total']:8.4f} "
            f"{r['cost']['monthly_target']['total']:9.2f}"
        )
    return "\n".join(rows)


def _html_table(records: Sequence[dict[str, Any]]) -> str:
    cols = ["run", "offered rps", "achieved rps", "p50 ms", "p95 ms", "p99 ms", "max ms", "server p99 ms ≤",
            "failures", "hit ratio", "server CPU µs/req", "Redis CPU µs/req", "Redis bytes", "precompute s",
            "$/M (target)", "$/month (target)", "generator saturated"]
    body = []
    for r in records:
        cells = [_label(r), f"{r['offered_rps']:.0f}", f"{r['achieved_rps']:.0f}", *(f"{r['latency_ms'][q]:.1f}" for q in ("p50", "p95", "p99", "max")),
                 f"{r['server_latency_ms']['p99']:.2f}", str(r["failures"]), f"{r['hit_ratio']['total']:.3f}",
                 f"{r['server_cpu_us_per_request']:.0f}", f"{r['redis_cpu_us_per_request']:.1f}", f"{r['redis_bytes']:,}",
                 f"{r['precompute_s']:.2f}",
                 f"{r['cost']['per_million_target']['total']:.4f}", f"{r['cost']['monthly_target']['total']:.2f}",
                 "yes" if r["load_generator_saturated"] else "no"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>" + "".join(body) + "</table>"


def _setup(records: Sequence[dict[str, Any]]) -> str:
    """One line on what was served: key space, users, and the hybrid cache configuration."""
    if not records:
        return ""
    r = records[0]
    hybrid = next((x for x in records if x["mode"] == "hybrid"), None)
    cache = (f" Hybrid: head of {hybrid['head_size']:,} keys precomputed (most frequent in a sample of earlier traffic), "
             f"L1 of {hybrid['l1_size']:,} entries, filled by a warm-up before the measured window." if hybrid else "")
    return (f"<p>Key space: {r['key_count']:,} keys; {r['users']} Locust users, {r['batch_size']} key(s) per request, "
            f"seed {r['seed']}.{html.escape(cache)}</p>")


def render_html(records: Sequence[dict[str, Any]], context: dict[str, Any], extra_sections: Sequence[str] = ()) -> str:
    """The whole report as one HTML string (images inlined)."""
    charts = [
        _latency_chart(records),
        _bar_chart(records, lambda r: r["server_cpu_us_per_request"] + r["redis_cpu_us_per_request"],
                   "Server + Redis CPU per request", "µs", log=True),
        _bar_chart(records, lambda r: r["cost"]["per_million_target"]["total"], "Cost per million predictions (target scenario)", "USD"),
        _bar_chart(records, lambda r: r["hit_ratio"]["total"], "Cache hit ratio (L1 + Redis)", "share of keys"),
    ]
    verdict_html = "".join(f"<li>{html.escape(line)}</li>" for line in verdict(records))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>hybridserve report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#f4f4f4}} pre{{background:#f8f8f8;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>hybridserve: static vs dynamic vs hybrid</h1>
<p>Measured on this machine ({html.escape(str(context.get('machine', '')))}), {html.escape(str(context.get('when', '')))}.
Each run: a fresh server process and Redis, a fixed offered rate from Locust in its own process, {html.escape(str(context.get('duration_s', '')))} s.</p>
{_setup(records)}
<h2>Verdict</h2><ul>{verdict_html}</ul>
<h2>Results</h2>{_html_table(records)}
<p>Latency percentiles are client side (Locust's unrounded response times at 2% resolution, loopback included);
"server p99 ≤" is the upper bound of the server's own Prometheus histogram bucket. CPU per request is process CPU time
(psutil) of the server and Redis (<code>INFO cpu</code>) over the measured window divided by requests; it stays valid when the
load generator is the bottleneck. A Redis hit is not free: it costs a network round trip and Redis CPU, which for a cheap model
can exceed inference itself; the in-process L1 is the fast path.</p>
{''.join(f'<img src="{c}" style="max-width:100%">' for c in charts)}
<h2>Cost model</h2><pre>{html.escape(cost.cost_formulas(context.get('prices', cost.Prices())))}</pre>
<p>Target scenario: {html.escape(json.dumps(context.get('target', {})))}.</p>
{''.join(extra_sections)}
</body></html>"""


def _capacity_chart(curves: Sequence[CapacityCurve]) -> str:
    """Client p99 against achieved throughput, one line per mode, the knee starred, the SLO dashed."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for curve in curves:
        colour = MODE_COLOURS.get(curve.mode, "#777")
        ax.plot([r.achieved_rps for r in curve.rungs], [max(r.p99_ms, 0.05) for r in curve.rungs], "o-", color=colour,
                label=f"{curve.profile}/{curve.mode}")
        if curve.knee is not None:
            ax.plot([curve.knee.achieved_rps], [max(curve.knee.p99_ms, 0.05)], "*", color=colour, markersize=18,
                    markeredgecolor="black")
    if curves:
        ax.axhline(curves[0].slo_p99_ms, linestyle="--", color="#c00", label=f"SLO p99 {curves[0].slo_p99_ms:g} ms")
    ax.set_xlabel("achieved requests/s (one server core)")
    ax.set_ylabel("p99 ms (client side)")
    ax.set_yscale("log")
    ax.set_title("Latency against throughput; ★ = knee (highest rate that met the SLO)")
    ax.legend()
    return _png(fig)


def capacity_section(curves: Sequence[CapacityCurve], target_qps: float) -> str:
    """HTML: the latency/throughput chart, capacity per core and the cost of ``target_qps`` both ways."""
    rows = []
    for curve in curves:
        need = provisioning(curve, target_qps)
        knee = curve.knee
        cells = [f"{curve.profile}/{curve.mode}", f"{knee.achieved_rps:.0f}" if knee else "none",
                 f"{curve.capacity_per_core:.0f}" + (" (lower bound)" if curve.generator_bound else ""),
                 f"{knee.server_cpu_us_per_request:.0f}" if knee else "-", f"{need['cpu_cores_busy']:.1f}",
                 str(need["cores"]), f"{need['utilisation']:.0%}", curve.broke_because]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    cols = ["run", "knee req/s", "req/s per core", "CPU µs/req at knee", f"CPU-seconds way: cores busy at {target_qps:g}/s",
            f"provisioned cores at {target_qps:g}/s", "utilisation", "ladder stopped because"]
    return (f"<h2>Capacity</h2><p>Each mode's server (one core) offered a ladder of rates until a rung broke the "
            f"SLO. Cost of {target_qps:g} requests/s: CPU-seconds (what the comparison prices) against cores provisioned "
            "to hold the SLO.</p>"
            f'<img src="{_capacity_chart(curves)}" style="max-width:100%">'
            "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>" + "".join(rows) + "</table>"
            f"<pre>{html.escape(capacity_formulas())}</pre>")


def projection_section(rows: Sequence[Projection], target: Target) -> str:
    """HTML: what each mode needs at the user's target, with the formulas."""
    cols = ["run", "API cores", "from", "Redis GB", "Redis masters", "Redis nodes", "keys per refresh",
            "refresh hours (1 process)", "refresh CPU hours", "$ per refresh"]
    body = []
    for p in rows:
        cells = [f"{p.profile}/{p.mode}", str(p.api_cores), p.api_cores_from, f"{p.redis_bytes / 1e9:.1f}", str(p.redis_masters),
                 str(p.redis_nodes), f"{p.precompute_keys:,}", f"{p.precompute_hours_one_process:.2f}",
                 f"{p.precompute_cpu_hours:.2f}", f"{p.precompute_cost_per_refresh:.2f}"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<h2>Projection: {target.keys:,} keys at {target.qps:,.0f} requests/s</h2>"
            "<p>From the per-unit figures measured above (this machine), by these formulas:</p>"
            "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>" + "".join(body) + "</table>"
            f"<pre>{html.escape(projection_formulas())}</pre>")


def write_report(records: Sequence[dict[str, Any]], out: Path, context: dict[str, Any], extra_sections: Sequence[str] = (),
                 extra_results: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write results.json (``extra_results`` added at its top level, e.g. ``capacity``) and
    report.html into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    document = {"context": {k: v for k, v in context.items() if k != "prices"}, "runs": list(records), **(extra_results or {})}
    results.write_text(json.dumps(document, indent=2, default=str))
    report = out / "report.html"
    report.write_text(render_html(records, context, extra_sections))
    return results, report
