"""The report section of drift runs: the drift statistics over time and the moment each alert fired.

A run made with ``RunSpec(instances="drift:at=0.5,shift=2.0", ...)`` records ``/v1/monitoring``
once a second (:class:`loadtests.drift_traffic.MonitoringSampler`); this section draws, per such
run, every feature's PSI and the prediction's PSI over the run with the threshold, the moment the
shift began and the moment each alert first fired, and tabulates how long after the shift each
alert came. :func:`loadtests.report.render_html` appends it when a run has drift records.

Example::

    html = drift_section(records)    # "" when no record has drift statistics
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402

Record = dict[str, Any]
FIGURE_SIZE_IN = (10.0, 4.2)  # the report's column width (loadtests.report.FIGURE_WIDTH_IN)
DPI = 100
PREDICTION_COLOUR = "#000000"
SHIFT_COLOUR = "#7f7f7f"
ALERT_COLOUR = "#d62728"
QUIET_COLOUR = "#b0b0b0"  # features whose alert never fired


def drift_runs(records: Sequence[Record]) -> list[Record]:
    """The records of runs that sampled drift statistics."""
    return [r for r in records if r.get("drift", {}).get("series")]


def _chart(record: Record) -> str:
    drift = record["drift"]
    series = drift["series"]
    times = [s["t"] for s in series]
    fig, ax = plt.subplots(figsize=FIGURE_SIZE_IN, layout="constrained")
    fired = drift.get("fired_at_s", {})
    for name in series[0]["psi"]:
        alerted = name in fired
        ax.plot(times, [s["psi"][name] for s in series], linewidth=1.6 if alerted else 0.8,
                color=None if alerted else QUIET_COLOUR, label=name if alerted else None)
    ax.plot(times, [s["prediction_psi"] for s in series], color=PREDICTION_COLOUR, linewidth=2.2, label="prediction")
    ax.axhline(series[-1]["threshold"], color=ALERT_COLOUR, linestyle="--", linewidth=1, label="PSI threshold")
    if drift.get("shift_at_s") is not None:
        ax.axvline(drift["shift_at_s"], color=SHIFT_COLOUR, linestyle=":", linewidth=1.5, label="shift began")
    for i, (name, at) in enumerate(sorted(fired.items(), key=lambda item: item[1])):
        ax.axvline(at, color=ALERT_COLOUR, linewidth=1, alpha=0.7, label="alert fired" if i == 0 else None)
        ax.annotate(name, (at, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8, color=ALERT_COLOUR)
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("PSI against the card's reference")
    ax.grid(alpha=0.35)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="thin grey: features without alert")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(record: Record) -> str:
    drift = record["drift"]
    shift = drift.get("shift_at_s")
    rows = []
    for name, at in sorted(drift.get("fired_at_s", {}).items(), key=lambda item: item[1]):
        after = f"{at - shift:.1f}" if shift is not None else "-"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{at:.1f}</td><td>{after}</td></tr>")
    body = "".join(rows) or '<tr><td colspan="3">no alert fired</td></tr>'
    return ("<table><tr><th>statistic</th><th>alert fired (s into the run)</th><th>s after the shift</th></tr>"
            f"{body}</table>")


def drift_section(records: Sequence[Record]) -> str:
    """One HTML section with a chart and an alert table per drift run ("" without drift runs)."""
    runs = drift_runs(records)
    if not runs:
        return ""
    parts = ["<section><h2>Drift monitoring</h2><p>Raw-feature instances drawn from the training distribution, "
             "shifted part-way through the run (<code>instances</code>); <code>GET /v1/monitoring</code> read once a "
             "second. PSI rules of thumb: below 0.1 stable, 0.1-0.2 a moderate shift, above 0.2 significant.</p>"]
    for r in runs:
        window = r["drift"]["series"][-1]["rows"]
        title = f"{r['profile']}/{r['mode']}: instances {r.get('instances', '')}"
        parts.append(f"<h3>{html.escape(title)}</h3><p>Window at the end: {window} rows.</p>"
                     f'<figure><img src="{_chart(r)}" alt="{html.escape(title)}: PSI over time"></figure>{_table(r)}')
    parts.append("</section>")
    return "".join(parts)
