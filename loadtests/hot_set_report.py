"""The report section of the hot-set load tests (loadtests/hot_set_runs.py): hit ratio over time
under a drifting hot set with and without head refresh, and client p99 and model calls per second
across a version switch with and without warm start, each as a chart and a table.

How to read it: in the drift chart each dotted line is a move of the hot set; without refresh
the hit ratio drops at each move and climbs back only as the admission rule lets the new keys in;
with refresh it climbs back within a refresher check or two. In the switch chart, 0 is the swap
to the new version (a warm start computes its hot keys between the reload request, dotted, and the
swap); a cold version answers its first seconds from the model, a warm-started one from L1.

Example::

    section = hot_set_section(records)        # records: results.json runs with a ``hot_set`` entry
    summary(records)                          # the figures the tables show, JSON-ready
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from loadtests.keys import DriftSpec, parse_spec  # noqa: E402
from loadtests.report import embed_figure  # noqa: E402

Record = dict[str, Any]
# Seconds after a hot-set move, and after a version switch, that the tables look at.
AFTER_MOVE_S = 3.0
AFTER_SWITCH_S = 5.0
VARIANT_COLOURS = {"no refresh": "#C44E52", "head refresh": "#55A868", "cold start": "#C44E52", "warm start": "#55A868"}


def _runs(records: Sequence[Record], scenario: str) -> list[Record]:
    return [r for r in records if (r.get("hot_set") or {}).get("scenario") == scenario]


def _traffic_start(record: Record) -> float:
    points = record["hot_set"]["series"]
    return next((p["unix"] - 1.0 for p in points if p["requests"]), points[0]["unix"] if points else 0.0)


def _period(record: Record) -> float | None:
    text = record["hot_set"]["drift"]
    spec = parse_spec(text) if text else None
    return spec.period_s if isinstance(spec, DriftSpec) else None


def _hit_ratio(points: Sequence[dict[str, Any]]) -> float | None:
    hits = sum(p["l1_hits"] + p["redis_hits"] for p in points)
    served = hits + sum(p["model_rows"] for p in points)
    return hits / served if served else None


def _drift_summary(record: Record) -> dict[str, Any]:
    points = [p for p in record["hot_set"]["series"] if p["requests"]]
    period = _period(record)
    after_move = [p for p in points if period and (p["unix"] % period) <= AFTER_MOVE_S]
    last = points[-1] if points else {}
    return {"scenario": "drift", "variant": record["hot_set"]["variant"], "hit_ratio": _hit_ratio(points),
            "hit_ratio_after_moves": _hit_ratio(after_move), "refreshes": last.get("refreshes", 0),
            "model_rows": sum(p["model_rows"] for p in points), "p99_ms": record["latency_ms"].get("p99")}


def _model_rate(points: Sequence[dict[str, Any]], start: float, end: float) -> float | None:
    """Keys computed by the model per second over the sampling intervals that lie within [start, end]."""
    inside = [(b["unix"] - a["unix"], b["model_rows"]) for a, b in zip(points, points[1:]) if a["unix"] >= start and b["unix"] <= end]
    seconds = sum(span for span, _ in inside)
    return sum(rows for _, rows in inside) / seconds if seconds else None


def _median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def _switch_summary(record: Record) -> dict[str, Any]:
    switch = record["hot_set"]["switch"] or {}
    at, asked = switch.get("unix"), switch.get("requested_unix", switch.get("unix"))
    if at is None:
        return {"scenario": "switch", "variant": record["hot_set"]["variant"], "switched": False}
    windows, points = record["hot_set"]["latency_windows"], record["hot_set"]["series"]
    traffic = [p for p in points if p["requests"]]
    before = [w["p99"] for w in windows if w["unix"] + 1 <= asked]
    after = [w["p99"] for w in windows if int(at) <= w["unix"] < at + AFTER_SWITCH_S]
    return {"scenario": "switch", "variant": record["hot_set"]["variant"], "switched": True,
            "reload_s": switch.get("reload_s"), "p99_ms_per_s_before_median": _median(before),
            "p99_ms_per_s_before_max": max(before, default=None), "p99_ms_per_s_after_max": max(after, default=None),
            "model_rows_per_s_before": _model_rate(traffic, traffic[0]["unix"] if traffic else at, asked),
            "model_rows_per_s_after": _model_rate(points, at, at + AFTER_SWITCH_S + 1.0),
            "p99_ms": record["latency_ms"].get("p99")}


def summary(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The figures of each hot-set run (drift: hit ratios and refreshes; switch: p99 per second
    and model keys per second before and after the swap), JSON-ready."""
    return [(_drift_summary if r["hot_set"]["scenario"] == "drift" else _switch_summary)(r)
            for r in records if r.get("hot_set")]


def _first_move(record: Record) -> float:
    """Wall-clock time of the first move of the hot set after the traffic started (the drift's
    epochs are multiples of its period in Unix time): each run's time axis starts there, so the
    moves line up across runs."""
    start, period = _traffic_start(record), _period(record) or 1.0
    return (start // period + 1) * period


def _drift_chart(runs: Sequence[Record]) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    end = 0.0
    for record in runs:
        zero = _first_move(record)
        points = [p for p in record["hot_set"]["series"] if p["hit_ratio"] is not None]
        variant = record["hot_set"]["variant"]
        ax.plot([p["unix"] - zero for p in points], [p["hit_ratio"] for p in points], "-o", markersize=3,
                color=VARIANT_COLOURS.get(variant, "#777"), label=variant)
        end = max([end, *(p["unix"] - zero for p in points)])
    period = _period(runs[0]) if runs else None
    if period:
        for i in range(int(end // period) + 1):
            ax.axvline(i * period, linestyle=":", color="#999")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("seconds from the first move of the hot set (dotted: it moves)")
    ax.set_ylabel("hit ratio per second (L1 + Redis)")
    ax.set_title("Drifting hot set: hit ratio with and without head refresh")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return embed_figure(fig, "hit ratio per second under a drifting hot set, with and without head refresh")


def _switch_chart(runs: Sequence[Record]) -> str:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.6), sharex=True)
    for record in runs:
        switch = record["hot_set"]["switch"] or {}
        at = switch.get("unix")
        if at is None:
            continue
        variant = record["hot_set"]["variant"]
        colour = VARIANT_COLOURS.get(variant, "#777")
        windows = record["hot_set"]["latency_windows"]
        top.plot([w["unix"] + 0.5 - at for w in windows], [max(w["p99"], 0.01) for w in windows], "-o", markersize=3,
                 color=colour, label=variant)
        points = record["hot_set"]["series"]
        spans = [(b["unix"] - a["unix"], b) for a, b in zip(points, points[1:])]
        bottom.plot([b["unix"] - at for _, b in spans], [b["model_rows"] / span for span, b in spans], "-o", markersize=3,
                    color=colour, label=variant)
        if switch.get("requested_unix") is not None:  # where the reload was asked for
            for ax in (top, bottom):
                ax.axvline(switch["requested_unix"] - at, linestyle=":", color=colour)
    for ax in (top, bottom):
        ax.axvline(0, linestyle="--", color="#333")
    top.set_yscale("log")
    top.set_ylabel("client p99 per second (ms)")
    top.set_title("Version switch: p99 and model calls with and without warm start")
    top.legend(loc="upper right")
    bottom.set_ylabel("keys computed by the model /s")
    bottom.set_xlabel("seconds from the swap to the second version (dashed; dotted: the reload was asked for)")
    fig.tight_layout()
    return embed_figure(fig, "client p99 per one-second window and model keys per second across a version switch, "
                             "with and without warm start")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.0f}"
    return str(value)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(key)))}</td>" for key, _ in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _setting(record: Record, name: str) -> str:
    return str(dict(record.get("settings") or ()).get(name, "default"))


def hot_set_section(records: Sequence[Record]) -> str:
    """HTML: the drift and switch charts and tables (empty when no run has a ``hot_set`` entry)."""
    drift, switch = _runs(records, "drift"), _runs(records, "switch")
    if not drift and not switch:
        return ""
    rows = summary(records)
    parts = ["<h2>The hot set follows the traffic</h2>"]
    if drift:
        parts += [f"<p>Hybrid, <code>{html.escape(drift[0]['distribution'])}</code>, admission "
                  f"<code>{html.escape(_setting(drift[0], 'admission'))}</code>; hit ratio of each second from the server's "
                  "counters (<code>/v1/cache/stats</code>, sampled every second). \"after moves\": the first "
                  f"{AFTER_MOVE_S:g} s after each move of the hot set.</p>", _drift_chart(drift),
                  _table([r for r in rows if r["scenario"] == "drift"],
                         [("variant", "run"), ("hit_ratio", "hit ratio"), ("hit_ratio_after_moves", "hit ratio after moves"),
                          ("refreshes", "head refreshes"), ("model_rows", "model rows"), ("p99_ms", "client p99 ms")])]
    if switch:
        parts += [f"<p>Hybrid, profile <code>{html.escape(switch[0]['profile'])}</code>, "
                  f"<code>{html.escape(switch[0]['distribution'])}</code>; halfway through, <code>POST /v1/admin/reload</code> "
                  "to a second version of the model (another seed). Client p99 of each one-second window (Locust's "
                  "per-second histograms) and the keys the model computed per second; \"after\": the "
                  f"{AFTER_SWITCH_S:g} s from the swap.</p>", _switch_chart(switch),
                  _table([r for r in rows if r["scenario"] == "switch"],
                         [("variant", "run"), ("reload_s", "reload took s"), ("p99_ms_per_s_before_median", "median p99/s before, ms"),
                          ("p99_ms_per_s_before_max", "worst p99/s before, ms"), ("p99_ms_per_s_after_max", "worst p99/s after, ms"),
                          ("model_rows_per_s_before", "model keys/s before"), ("model_rows_per_s_after", "model keys/s after"),
                          ("p99_ms", "client p99 ms (whole run)")])]
    return "<section>" + "".join(parts) + "</section>"
