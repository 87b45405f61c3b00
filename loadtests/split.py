"""The split scenario's measurements: per-version requests, latency and CPU/cost share of one load test
of a server with a traffic split (``RunSpec(..., settings=(("routes", "A:90,B:10,shadow=C"),))``).

Locust does not know which version answered, so per-version latency is the server's: the quantiles
(bucket upper bounds) of ``hybridserve_version_request_seconds`` between the scrapes before and after
the run. CPU is measured for the whole server process; it is shared out by each version's share of
the server's request-seconds (the event loop is one thread, so time spent on a version's requests is
close to CPU spent on them), the shadow's background work included. The cost of a version is that
CPU at the serving vCPU price, per million predictions it answered.

Example::

    before = snapshot(metrics_text, stats)        # scrape before the run
    after = snapshot(metrics_text_2, stats_2)     # and after
    breakdown(before, after, server_cpu_s=12.5, vcpu_hour=0.05, quantiles=q)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Histogram = dict[float, float]
SECONDS_PER_HOUR = 3600.0


def version_histograms(metrics: str) -> dict[str, Histogram]:
    """Cumulative counts of ``hybridserve_version_request_seconds`` by version and upper bound,
    summed over sources."""
    found: dict[str, Histogram] = {}
    for line in metrics.splitlines():
        if line.startswith("hybridserve_version_request_seconds_bucket{"):
            labels, value = line.rsplit(" ", 1)
            version = labels.split('version="', 1)[1].split('"', 1)[0]
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets = found.setdefault(version, {})
            buckets[le] = buckets.get(le, 0.0) + float(value)
    return found


def _seconds(stats: dict[str, Any]) -> float:
    return float(stats.get("seconds", 0.0))


def breakdown(before: dict[str, Any], after: dict[str, Any], server_cpu_s: float, vcpu_hour: float,
              quantiles: Callable[[Histogram, Histogram], dict[str, float]]) -> dict[str, Any]:
    """Per version of the split (and the shadow) over one run: requests, keys, server-side p50/p99,
    share of the server's request-seconds, CPU per request and serving cost per million
    predictions; the shadow's differences. ``before``/``after``: the runner's server snapshots
    (``stats``: /v1/cache/stats; ``versions``: :func:`version_histograms` of /metrics)."""
    s0, s1 = before["stats"], after["stats"]
    rows: dict[str, dict[str, Any]] = {}
    roles = [("primary", s1.get("versions", {}), s0.get("versions", {})),
             ("shadow", s1.get("shadow", {}).get("versions", {}), s0.get("shadow", {}).get("versions", {}))]
    for role, now, then in roles:
        for version, stats in now.items():
            old = then.get(version, {"counts": {}, "seconds": 0.0})
            requests = stats["counts"]["requests"] - old["counts"].get("requests", 0)
            keys = stats["counts"]["keys"] - old["counts"].get("keys", 0)
            rows[f"{version} ({role})" if role == "shadow" else version] = {
                "version": version, "role": role, "requests": requests, "keys": keys,
                "seconds": _seconds(stats) - _seconds(old),
                "latency_ms": quantiles(before["versions"].get(version, {}), after["versions"].get(version, {}))
                if role == "primary" else {},
            }
    total_s = sum(r["seconds"] for r in rows.values()) or 1.0
    answered = sum(r["requests"] for r in rows.values() if r["role"] == "primary") or 1
    for row in rows.values():
        share = row["seconds"] / total_s
        cpu_s = server_cpu_s * share
        row["request_share"] = row["requests"] / answered if row["role"] == "primary" else 0.0
        row["cpu_share"] = share
        row["cpu_us_per_request"] = cpu_s / row["requests"] * 1e6 if row["requests"] else 0.0
        row["usd_per_million"] = cpu_s / SECONDS_PER_HOUR * vcpu_hour / row["keys"] * 1e6 if row["keys"] else 0.0
    shadow = s1.get("shadow", {})
    return {"routes": s1.get("routes"), "versions": rows,
            "shadow": {"differences": shadow.get("differences", []), "dropped": shadow.get("dropped", 0) - s0.get("shadow", {}).get("dropped", 0),
                       "errors": shadow.get("errors", 0) - s0.get("shadow", {}).get("errors", 0)}}
