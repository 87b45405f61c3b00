"""PNG plots for ``hybridserve tune``: miss-ratio curves and cost against cache size.

matplotlib runs on the Agg backend: no display is needed, and nothing opens a window.

Example::

    plot_miss_ratio_curves(trace, "out/miss_ratio.png")
    plot_costs(recommendation, "out/cost.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

from tuning.recommend import Recommendation  # noqa: E402
from tuning.simulate import DEFAULT_FRACTIONS, ServerPolicy, cache_sizes, miss_ratio_curves, simulate_server_policy  # noqa: E402
from tuning.traces import Trace  # noqa: E402

PLOT_POLICIES: tuple[str, ...] = ("LRU", "LFU", "S3-FIFO", "W-TinyLFU", "Belady")
FIGURE_SIZE = (8, 5)


def plot_miss_ratio_curves(
    trace: Trace, out: str | Path, policies: Sequence[str] = PLOT_POLICIES, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> Path:
    """libCacheSim policies (Belady included) and the server's own tiers, miss ratio vs cache size.

    Server curves: ``static head`` (only the precomputed head, sized on the x axis) and ``server L1``
    (the L1's own miss ratio at that capacity, admission ``always`` and ``after:2``, cold start).
    """
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    for curve in miss_ratio_curves(trace, list(policies), list(fractions)):
        ax.plot([p.cache_size for p in curve.points], [p.miss_ratio for p in curve.points], marker=".", label=curve.policy)
    sizes = cache_sizes(trace.n_unique, fractions)
    for label, policy_of in _server_curves().items():
        ratios = [_server_miss_ratio(trace, policy_of(size)) for size in sizes]
        ax.plot(sizes, ratios, linestyle="--", marker="x", label=label)
    ax.set(xscale="log", xlabel="cache size (objects)", ylabel="miss ratio", ylim=(0, 1),
           title=f"miss-ratio curves ({trace.n_requests:,} requests, {trace.n_unique:,} keys)")
    ax.legend(fontsize="small")
    return _save(fig, out)


def _server_curves() -> dict[str, Callable[[int], ServerPolicy]]:
    return {
        "server static head": lambda size: ServerPolicy.static(head_size=size),
        "server L1 (always)": lambda size: ServerPolicy.hybrid(l1_capacity=size, admission="always"),
        "server L1 (after:2)": lambda size: ServerPolicy.hybrid(l1_capacity=size, admission="after:2"),
    }


def _server_miss_ratio(trace: Trace, policy: ServerPolicy) -> float:
    """Static: requests outside the head, which is chosen on the first half of the trace and
    evaluated on the second (so it skips the first half's compulsory misses and can fall below
    Belady at small sizes). L1 curves: requests L1 did not answer over the whole trace from cold,
    on the same basis as the libCacheSim curves."""
    if policy.mode == "static":
        return simulate_server_policy(trace, policy).miss_ratio
    return 1.0 - simulate_server_policy(trace, policy, train_fraction=0.0).l1_hit_ratio


def plot_costs(rec: Recommendation, out: str | Path) -> Path:
    """Monthly cost against L1 size, one line per admission rule and head size; static and dynamic
    as horizontal reference lines; the chosen configuration circled."""
    fig, ax = plt.subplots(figsize=FIGURE_SIZE)
    hybrids = [c for c in rec.candidates if c.mode == "hybrid"]
    for admission, head in sorted({(c.admission, c.head_size) for c in hybrids}):
        line = sorted((c for c in hybrids if (c.admission, c.head_size) == (admission, head)), key=lambda c: c.l1_size)
        ax.plot([max(c.l1_size, 1) for c in line], [c.monthly_usd for c in line], marker="o",
                label=f"hybrid {admission} head={head}")
    for ref in (c for c in rec.candidates if c.mode != "hybrid"):
        ax.axhline(ref.monthly_usd, linestyle=":", color="grey")
        ax.annotate(ref.mode, (1, ref.monthly_usd), fontsize="small")
    if rec.chosen is not None and rec.chosen.mode == "hybrid":
        ax.scatter([max(rec.chosen.l1_size, 1)], [rec.chosen.monthly_usd], s=200, facecolors="none", edgecolors="red")
    ax.set(xscale="log", xlabel="L1 size (entries; 0 shown at 1)", ylabel="USD per month",
           title=f"cost at {rec.qps:g} QPS, p99 SLO {rec.slo_p99_ms:g} ms")
    ax.legend(fontsize="small")
    return _save(fig, out)


def _save(fig: plt.Figure, out: str | Path) -> Path:
    target = Path(out)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
