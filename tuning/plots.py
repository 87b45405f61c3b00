"""PNG plots for ``hybridserve tune``: miss-ratio curves, and cost against cache memory.

matplotlib runs on the Agg backend: no display is needed, and nothing opens a window.

Example::

    plot_miss_ratio_curves(curves, "web07", "out/miss_ratio.png")
    plot_costs(recommendation, "web07", "out/cost.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from tuning.curves import STATIC_HEAD, STATIC_HEAD_BASIS  # noqa: E402
from tuning.recommend import Recommendation  # noqa: E402

PLOT_POLICIES: tuple[str, ...] = ("LRU", "LFU", "S3-FIFO", "W-TinyLFU", "Belady", "server L1 lru", "server L1 s3fifo",
                                  "redis-allkeys-lru", "redis-allkeys-lfu", STATIC_HEAD)
FIGURE_SIZE = (9, 5.5)


def plot_miss_ratio_curves(curves: dict[str, dict[str, Any]], trace_name: str, out: str | Path) -> Path:
    """Library and server curves, miss ratio vs cache size; clamped sizes ringed, the static head's
    basis written under the plot."""
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    clamped_shown = False
    for policy in (p for p in PLOT_POLICIES if p in curves):
        curve = curves[policy]
        style = "--" if curve["runnable"] else "-"
        ax.plot(curve["sizes"], curve["miss_ratios"], linestyle=style, marker=".", label=policy)
        clamped = [(s, m) for s, m, c in zip(curve["sizes"], curve["miss_ratios"], curve["clamped_from"]) if c is not None]
        if clamped:
            ax.scatter(*zip(*clamped), s=90, facecolors="none", edgecolors="black",
                       label=None if clamped_shown else "size raised to the library minimum (S3-FIFO: 20 objects)")
            clamped_shown = True
    ax.set(xscale="log", xlabel="cache size (objects)", ylabel="miss ratio", ylim=(0, 1),
           title=f"{trace_name}: miss-ratio curves (dashed: what the server runs)")
    ax.legend(fontsize="x-small", ncol=2)
    fig.text(0.01, 0.01, STATIC_HEAD_BASIS, fontsize="x-small", wrap=True)
    fig.subplots_adjust(bottom=0.17)
    return _save(fig, out, tight=False)


def plot_costs(rec: Recommendation, trace_name: str, out: str | Path) -> Path:
    """Monthly cost against cache memory for every candidate, those meeting the SLO filled, the
    cheapest-per-memory curve drawn, the chosen configuration marked."""
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    for meets, marker in ((True, "o"), (False, "x")):
        picked = [c for c in rec.candidates if c.meets_slo == meets]
        ax.scatter([max(c.memory_bytes, 1) / 1e6 for c in picked], [c.monthly_usd for c in picked], marker=marker, s=18,
                   alpha=0.6, label=f"{'meets' if meets else 'misses'} p99 <= {rec.slo_p99_ms:g} ms")
    frontier = rec.cost_memory_curve()
    ax.plot([max(p["memory_bytes"], 1) / 1e6 for p in frontier], [p["monthly_usd"] for p in frontier], color="grey",
            linewidth=0.8, label="cheapest at each memory size")
    if rec.chosen is not None:
        c = rec.chosen
        ax.scatter([max(c.memory_bytes, 1) / 1e6], [c.monthly_usd], s=250, facecolors="none", edgecolors="red",
                   label=f"chosen: {c.label}")
    ax.set(xscale="symlog", xlabel="cache memory (MB, Redis + L1)", ylabel="USD per month",
           title=f"{trace_name}: cost at {rec.qps:g} QPS vs cache memory, p99 SLO {rec.slo_p99_ms:g} ms")
    ax.legend(fontsize="x-small")
    return _save(fig, out)


def _save(fig: plt.Figure, out: str | Path, tight: bool = True) -> Path:
    target = Path(out)
    if tight:
        fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
