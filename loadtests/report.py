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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from loadtests import cost  # noqa: E402
from loadtests.drift_report import drift_section  # noqa: E402
from loadtests.capacity import CapacityCurve, capacity_formulas, provisioning  # noqa: E402
from loadtests.projection import Projection, Target, projection_formulas  # noqa: E402
from loadtests.split_report import split_section  # noqa: E402

MODE_COLOURS = {"static": "#4C72B0", "dynamic": "#DD8452", "hybrid": "#55A868"}
PERCENTILE_COLOURS = {"p50": "#9ecae1", "p95": "#4292c6", "p99": "#08519c"}
# 10 in at 100 dpi: 1000 px, inside the page's 1100 px column, so no image is ever scaled up or cut.
FIGURE_WIDTH_IN = 10.0
DPI = 100
Record = dict[str, Any]


def _repeats_note(context: dict[str, Any]) -> str:
    """How many times each run was repeated, where it was (each figure is then the median run's)."""
    repeats = int(context.get("repeats", 1) or 1)
    return f"; each run {repeats} times, the median run by CPU per request shown" if repeats > 1 else ""


def _label(r: Record) -> str:
    dist = "" if r["distribution"].startswith("zipf") else f" ({r['distribution']})"
    return f"{r['profile']}/{r['mode']}{dist}"


def _short_label(r: Record) -> str:
    """The label inside a profile's section, where the profile goes without saying."""
    dist = "" if r["distribution"].startswith("zipf") else f"\n({r['distribution']})"
    saturated = "\n(saturated)" if r["load_generator_saturated"] else ""
    return f"{r['mode']}{dist}{saturated}"


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _linear_axis(ax: Axes, label: str, top: float, percent: bool = False) -> None:
    """A linear y axis from 0 to a little over ``top`` (room for value labels), with a handful of
    round ticks and a grid to read values against."""
    ax.set_ylabel(label)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}" if percent else f"{v:g}"))
    ax.grid(axis="y", alpha=0.35)
    ax.set_axisbelow(True)


def _legend_outside(ax: Axes, title: str | None = None) -> None:
    """The legend right of the plot, where it can never hide a bar or its value."""
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _figure(height_in: float = 3.8) -> tuple[plt.Figure, Axes]:
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH_IN, height_in), layout="constrained")
    return fig, ax


def _latency_chart(records: Sequence[Record], profile: str) -> str:
    """p50/p95/p99 per run on a linear millisecond axis, each bar labelled with its value."""
    fig, ax = _figure()
    width = 0.26
    xs = range(len(records))
    for i, q in enumerate(("p50", "p95", "p99")):
        bars = ax.bar([x + (i - 1) * width for x in xs], [r["latency_ms"][q] for r in records], width,
                      label=q, color=PERCENTILE_COLOURS[q])
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(list(xs), [_short_label(r) for r in records])
    _linear_axis(ax, "latency (ms, client side)", max(r["latency_ms"]["p99"] for r in records))
    ax.set_title(f"{profile}: latency percentiles per run (ms, lower is better)")
    _legend_outside(ax, "percentile")
    return _png(fig)


def _stacked_chart(records: Sequence[Record], profile: str, parts: Sequence[tuple[str, Callable[[Record], float], str]],
                   title: str, ylabel: str, fmt: Callable[[float], str], percent: bool = False) -> str:
    """One stacked bar per run (its parts in order), the total written on top."""
    fig, ax = _figure(3.4)
    labels = [_short_label(r) for r in records]
    bottoms = [0.0] * len(records)
    for name, value, colour in parts:
        heights = [value(r) for r in records]
        ax.bar(labels, heights, 0.55, bottom=bottoms, label=name, color=colour)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, total in enumerate(bottoms):
        ax.annotate(fmt(total), (x, total), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    _linear_axis(ax, ylabel, max(bottoms), percent)
    ax.set_title(f"{profile}: {title}")
    _legend_outside(ax)
    return _png(fig)


def _cpu_chart(records: Sequence[Record], profile: str) -> str:
    return _stacked_chart(records, profile, [
        ("server", lambda r: r["server_cpu_us_per_request"], "#8172B3"),
        ("Redis", lambda r: r["redis_cpu_us_per_request"], "#C44E52"),
    ], "CPU time per request (µs, lower is cheaper)", "CPU per request (µs)", lambda v: f"{v:.0f} µs")


def _hit_chart(records: Sequence[Record], profile: str) -> str:
    return _stacked_chart(records, profile, [
        ("L1 (in-process)", lambda r: r["hit_ratio"].get("l1", 0.0), "#55A868"),
        ("Redis", lambda r: r["hit_ratio"].get("redis", r["hit_ratio"]["total"] - r["hit_ratio"].get("l1", 0.0)), "#4C72B0"),
    ], "keys served from a cache (%), the rest computed by the model", "keys served from cache (%)",
        lambda v: f"{v:.0%}", percent=True)


def _cost(r: Record) -> float:
    return float(r["cost"]["per_million_target"]["total"])


def _tradeoff_chart(records: Sequence[Record]) -> str:
    """Cost per million predictions against client p99, one panel per profile, one colour per mode."""
    profiles = _profiles(records)
    fig, axes = plt.subplots(1, len(profiles), figsize=(FIGURE_WIDTH_IN, 4.2), layout="constrained", squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        runs = [r for r in records if r["profile"] == profile]
        for mode, colour in MODE_COLOURS.items():
            mine = [r for r in runs if r["mode"] == mode]
            if not mine:
                continue
            ax.scatter([r["latency_ms"]["p99"] for r in mine], [_cost(r) for r in mine], s=70, label=mode, color=colour,
                       edgecolors="black", linewidths=0.6, zorder=3)
            for r in mine:
                note = r["distribution"] if not r["distribution"].startswith("zipf") else ""
                note += " (saturated)" if r["load_generator_saturated"] else ""
                if note:
                    ax.annotate(note.strip(), (r["latency_ms"]["p99"], _cost(r)), xytext=(5, 5), textcoords="offset points",
                                fontsize=8)
        ax.set_xlim(left=0, right=max(r["latency_ms"]["p99"] for r in runs) * 1.25)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("p99 latency (ms, client side)")
        _linear_axis(ax, "cost (USD per million predictions)", max(_cost(r) for r in runs))
        ax.grid(axis="x", alpha=0.35)
        ax.set_title(f"{profile}: cost against p99 (lower left is better)")
        ax.legend(title="mode", loc="lower right")
    return _png(fig)


def _profiles(records: Sequence[Record]) -> list[str]:
    """Profiles in the order the runs first show them."""
    return list(dict.fromkeys(r["profile"] for r in records))


def _by(records: Sequence[Record], profile: str, mode: str, dist_prefix: str = "zipf") -> dict[str, Any] | None:
    return next((r for r in records if r["profile"] == profile and r["mode"] == mode
                 and r["distribution"].startswith(dist_prefix)), None)


def verdict(records: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-language conclusions drawn from the measured records."""
    lines = []
    for profile in _profiles(records):  # the order of the report's sections
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


def _html_table(records: Sequence[Record]) -> str:
    cols = ["run", "offered rps", "achieved rps", "p50 ms", "p95 ms", "p99 ms", "max ms", "server p99 ms ≤",
            "failures", "hit ratio", "server CPU µs/req", "Redis CPU µs/req", "Redis bytes", "precompute s",
            "$/M (target)", "$/month (target)", "generator saturated", "core speed: probe unit µs, server / Redis"]
    body = []
    for r in records:
        cells = [_label(r), f"{r['offered_rps']:.0f}", f"{r['achieved_rps']:.0f}", *(f"{r['latency_ms'][q]:.1f}" for q in ("p50", "p95", "p99", "max")),
                 f"{r['server_latency_ms']['p99']:.2f}", str(r["failures"]), f"{r['hit_ratio']['total']:.3f}",
                 f"{r['server_cpu_us_per_request']:.0f}", f"{r['redis_cpu_us_per_request']:.1f}", f"{r['redis_bytes']:,}",
                 f"{r['precompute_s']:.2f}",
                 f"{r['cost']['per_million_target']['total']:.4f}", f"{r['cost']['monthly_target']['total']:.2f}",
                 "yes" if r["load_generator_saturated"] else "no", _core_speed(r)]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    # The wrapper scrolls a wide table inside the column instead of widening the whole page.
    return ('<div class="scroll"><table><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
            + "".join(body) + "</table></div>")


def _core_speed(r: Record) -> str:
    """How fast the run's cores ran (a probe's unit time: higher is slower; this VM's cores vary
    minute to minute, and the CPU columns carry it), or "-" for a record from before the probe."""
    speed = r.get("core_speed") or {}
    if not (speed.get("server") and speed.get("redis")):
        return "-"
    return f"{speed['server']['unit_us']:.0f} / {speed['redis']['unit_us']:.0f}"


def _setup(records: Sequence[Record]) -> str:
    """One line on what was served: key space, users, and the hybrid cache configuration."""
    if not records:
        return ""
    r = records[0]
    hybrid = next((x for x in records if x["mode"] == "hybrid"), None)
    cache = (f" Hybrid: head of {hybrid['head_size']:,} keys precomputed (most frequent in a sample of earlier traffic), "
             f"L1 of {hybrid['l1_size']:,} entries, filled by a warm-up before the measured window." if hybrid else "")
    return (f"<p>Key space: {r['key_count']:,} keys; {r['users']} Locust users, {r['batch_size']} key(s) per request, "
            f"seed {r['seed']}.{html.escape(cache)}{html.escape(_trace_note(records))}</p>")


def _trace_note(records: Sequence[Record]) -> str:
    """What a trace replay sent: its keys mapped onto the model's, or its own (with the share the
    model lacks, answered 404 as users' requests would be)."""
    traces = [r for r in records if str(r.get("distribution", "")).startswith("trace:")]
    if not traces:
        return ""
    if any(r.get("trace_keys_mapped") for r in traces):
        return " Trace keys were MAPPED onto the model's keys (trace:map:), not replayed as they are."
    share = max(float(r.get("unknown_key_share", 0.0)) for r in traces)
    return f" The trace replayed its own keys; {share:.1%} of its requests were for keys the model does not have (404)."


def _img(src: str, alt: str) -> str:
    return f'<figure><img src="{src}" alt="{html.escape(alt)}"></figure>'


def embed_figure(fig: plt.Figure, alt: str) -> str:
    """A matplotlib figure as an inlined ``<figure>`` (closes the figure), for report sections
    rendered elsewhere (loadtests/hot_set_report.py)."""
    return _img(_png(fig), alt)


def _profile_section(records: Sequence[Record], profile: str) -> str:
    """One profile's runs: their table, then latency, CPU and hit-ratio charts."""
    runs = [r for r in records if r["profile"] == profile]
    return (f'<section><h2>Profile: {html.escape(profile)}</h2>{_html_table(runs)}'
            + _img(_latency_chart(runs, profile), f"{profile}: latency percentiles per run, in ms")
            + _img(_cpu_chart(runs, profile), f"{profile}: server and Redis CPU per request, in µs")
            + _img(_hit_chart(runs, profile), f"{profile}: share of keys served from L1 and Redis")
            + "</section>")


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f4f4f4}pre{background:#f8f8f8;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}figure{margin:1em 0}img{max-width:100%;height:auto}figure img{display:block}
.verdict{background:#f3f8f3;border-left:4px solid #55A868;padding:.5em 1em}.verdict li{margin:.3em 0}
code{overflow-wrap:anywhere}"""


def render_html(records: Sequence[Record], context: dict[str, Any], extra_sections: Sequence[str] = ()) -> str:
    """The whole report as one HTML string (images inlined): the verdict first, the cost/latency
    trade-off, then one section per profile."""
    verdict_html = "".join(f"<li>{html.escape(line)}</li>" for line in verdict(records))
    tradeoff = _img(_tradeoff_chart(records), "cost per million predictions against p99 latency, per mode") if records else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>hybridserve report</title><style>{STYLE}</style></head><body>
<h1>hybridserve: static vs dynamic vs hybrid</h1>
<h2>Verdict</h2><div class="verdict"><ul>{verdict_html}</ul></div>
<h2>The trade-off: cost against p99 latency</h2>
<p>Each point is one run; lower left is cheaper and faster. Cost is per million predictions at the target scenario
({html.escape(json.dumps(context.get('target', {})))}); latency is Locust's client-side p99, loopback included.</p>
{tradeoff}
<p>Measured on this machine ({html.escape(str(context.get('machine', '')))}), {html.escape(str(context.get('when', '')))}.
Each run: a fresh server process and Redis, a fixed offered rate of Poisson arrivals from Locust in its own process, {html.escape(str(context.get('duration_s', '')))} s{_repeats_note(context)}.</p>
{_setup(records)}
{''.join(_profile_section(records, p) for p in _profiles(records))}
<h2>How it is measured</h2>
<p>Latency percentiles are client side (Locust's unrounded response times at 2% resolution, loopback included);
"server p99 ≤" is the upper bound of the server's own Prometheus histogram bucket. CPU per request is process CPU time
(psutil) of the server and Redis (<code>INFO cpu</code>) over the measured window divided by requests; it stays valid when the
load generator is the bottleneck. A Redis hit is not free: it costs a network round trip and Redis CPU, which for a cheap model
can exceed inference itself; the in-process L1 is the fast path.</p>
<h2>Cost model</h2><pre>{html.escape(cost.cost_formulas(context.get('prices', cost.Prices())))}</pre>
{drift_section(records)}{split_section(records)}
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
