"""Miss-ratio curves of a trace for tuning.json and the plots, and the gap between what the server
can run and the best library policy.

Three kinds of curve, each ``policy -> points`` at the same cache sizes (fractions of the trace's
distinct keys), whole trace from cold caches:

- libCacheSim's policies (Belady, the offline optimum, shown but never counted as runnable);
- what the server runs: its L1 policies (``server L1 lru``, ``server L1 s3fifo``) replayed through
  its own code, and Redis ``allkeys-lru`` / ``allkeys-lfu`` as Redis samples them;
- ``static head``: only a precomputed head of that size, chosen on the trace's first half and
  evaluated on its second (so it skips the first half's compulsory misses, and can dip below
  Belady, which pays them).

Example::

    curves = trace_curves(trace)
    policy_gap(curves)[0]["gap_pp"]     # server-runnable minus best libCacheSim, in points
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from serving.cache import L1_POLICIES
from tuning.simulate import (
    DEFAULT_FRACTIONS,
    LIBCACHESIM_POLICIES,
    MIN_CACHE_SIZE,
    REDIS_POLICIES,
    ServerPolicy,
    cache_sizes,
    miss_ratio_curves,
    simulate_server_policy,
)
from tuning.traces import Trace

OFFLINE_POLICIES = frozenset({"Belady"})
STATIC_HEAD = "static head"
STATIC_HEAD_BASIS = ("static head: a precomputed head chosen on the trace's first half and evaluated on its second half; "
                     "the first half's compulsory misses are not counted, so it can dip below Belady, which pays them")
# The two reference sizes: the gap is reported at each.
GAP_FRACTIONS: tuple[float, ...] = (0.01, 0.1)


def server_policy_names() -> list[str]:
    """Curves of what the server can run: its L1 policies and Redis' eviction policies."""
    return [f"server L1 {policy}" for policy in L1_POLICIES] + list(REDIS_POLICIES)


def trace_curves(trace: Trace, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, dict[str, Any]]:
    """``policy -> {"sizes", "fractions", "miss_ratios", "clamped_from", "runnable"}`` (JSON-ready)."""
    fractions = sorted({*fractions, *GAP_FRACTIONS})
    out: dict[str, dict[str, Any]] = {}
    for curve in miss_ratio_curves(trace, list(LIBCACHESIM_POLICIES) + list(REDIS_POLICIES), fractions):
        points = [asdict(p) for p in curve.points]
        out[curve.policy] = _curve(points, runnable=curve.policy in REDIS_POLICIES)
    sizes = cache_sizes(trace.n_unique, fractions)
    for policy in L1_POLICIES:
        points = []
        for fraction, size in zip(fractions, sizes):
            # The server's S3-FIFO has no lower limit, but libCacheSim's does: compare like with like.
            usable = max(size, MIN_CACHE_SIZE["S3-FIFO"]) if policy == "s3fifo" else size
            replay = ServerPolicy.hybrid(l1_capacity=usable, l1_policy=policy)
            miss = 1.0 - simulate_server_policy(trace, replay, train_fraction=0.0).l1_hit_ratio
            points.append({"fraction": fraction, "cache_size": usable, "miss_ratio": miss,
                           "clamped_from": size if usable != size else None})
        out[f"server L1 {policy}"] = _curve(points, runnable=True)
    head = [{"fraction": f, "cache_size": s, "miss_ratio": simulate_server_policy(trace, ServerPolicy.static(s)).miss_ratio,
             "clamped_from": None} for f, s in zip(fractions, sizes)]
    out[STATIC_HEAD] = _curve(head, runnable=True) | {"basis": STATIC_HEAD_BASIS}
    return out


def _curve(points: list[dict[str, Any]], *, runnable: bool) -> dict[str, Any]:
    return {"fractions": [p["fraction"] for p in points], "sizes": [p["cache_size"] for p in points],
            "miss_ratios": [p["miss_ratio"] for p in points], "clamped_from": [p["clamped_from"] for p in points],
            "runnable": runnable}


def policy_gap(curves: dict[str, dict[str, Any]], fractions: Sequence[float] = GAP_FRACTIONS) -> list[dict[str, Any]]:
    """Per size: the best server-runnable policy (L1 policies and Redis evictions, whole trace from
    cold, so not the static head) against the best libCacheSim policy but Belady; ``gap_pp`` > 0
    when the server's best misses more."""
    runnable = server_policy_names()
    library = [p for p in LIBCACHESIM_POLICIES if p not in OFFLINE_POLICIES]
    out = []
    for fraction in fractions:
        def at(policy: str) -> float:
            curve = curves[policy]
            return float(curve["miss_ratios"][curve["fractions"].index(fraction)])

        server = min(runnable, key=at)
        best = min(library, key=at)
        out.append({"fraction": fraction, "server_policy": server, "server_miss_ratio": at(server),
                    "library_policy": best, "library_miss_ratio": at(best), "gap_pp": (at(server) - at(best)) * 100})
    return out
