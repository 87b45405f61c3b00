"""``hybridserve tune``: tier costs, recommend, plot, write tuning.json and optionally verify by a load test.

tuning.json's top-level keys, for scripts: ``curves`` (policy -> sizes and miss ratios),
``candidates``, ``chosen``, ``tiers`` (the tier measurements with their request counts),
``policy_gap`` and ``verify`` (measured and predicted), beside ``trace``, ``key_space``,
``cost_vs_memory``, ``slo_p99_ms``, ``qps`` and ``env``.

Example::

    run_tune(Path("web.keys.txt"), Settings(model_name="traffic-heavy"), slo_p99_ms=20, qps=500,
             out=Path("out/tune"), verify_live=True, results=Path("out/results.json"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.tier_costs import TierCosts
from serving.model import LoadedModel
from serving.settings import Settings
from tuning.calibrate import CALIBRATION_REPEATS, calibrate, costs_from_results
from tuning.curves import policy_gap, trace_curves
from tuning.key_fit import FittedTrace, fit_trace
from tuning.plots import plot_costs, plot_miss_ratio_curves
from tuning.recommend import Recommendation, format_table, recommend
from tuning.traces import read_trace
from tuning.verify import ANCHOR_SECONDS, MAX_VERIFY_SECONDS, VERIFY_ROUNDS, check_anchor_seconds, verify

# Exit status when no configuration meets the SLO: the report is still written.
EXIT_SLO_UNREACHABLE = 3


def run_tune(
    trace_path: Path,
    settings: Settings,
    *,
    slo_p99_ms: float,
    qps: float,
    out: Path,
    verify_live: bool = False,
    verify_seconds: float = MAX_VERIFY_SECONDS,
    results: Path | None = None,
    map_keys: bool = False,
    calibration_repeats: int = CALIBRATION_REPEATS,
    verify_rounds: int = VERIFY_ROUNDS,
    verify_anchor_seconds: float = ANCHOR_SECONDS,
) -> int:
    """Run the whole tuning flow, print a table and the settings to use; returns the exit status."""
    if verify_live and verify_seconds <= 0:
        # Checked before minutes of calibration, not after.
        raise ValueError(f"--verify-seconds must be > 0, got {verify_seconds:g}")
    if verify_live and verify_rounds < 1:
        raise ValueError(f"--verify-rounds must be >= 1, got {verify_rounds}")
    if verify_live:
        check_anchor_seconds(verify_anchor_seconds, "--verify-anchor-seconds")
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    fitted = fit_trace(read_trace(trace_path), model.key_space, map_keys=map_keys)
    print(f"trace {trace_path}: {fitted.original_requests:,} requests, {fitted.out_of_space_share:.1%} outside "
          f"{settings.model_name}'s key space{' (mapped onto it)' if fitted.mapped else ''}; "
          f"{fitted.distinct_in_space:,} distinct keys in it", flush=True)
    costs = _costs(settings, qps, results, calibration_repeats)
    rec = recommend(fitted.trace, costs, slo_p99_ms=slo_p99_ms, qps=qps, key_count=model.key_space.count,
                    model_name=settings.model_name)
    curves = trace_curves(fitted.trace)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = rec.as_dict() | {
        "trace": str(trace_path), "key_space": fitted.as_dict(), "curves": curves, "policy_gap": policy_gap(curves),
        "plots": _plots(trace_path.stem, curves, rec, out), "verify": None,
    }
    if verify_live:
        candidate = rec.to_verify()
        print(f"verifying {candidate.label} by a load test ...", flush=True)
        report["verify"] = verify(fitted.trace, candidate, costs, settings, slo_p99_ms=slo_p99_ms,
                                  max_seconds=verify_seconds, rounds=verify_rounds,
                                  anchor_seconds=verify_anchor_seconds).as_dict()
    (out / "tuning.json").write_text(json.dumps(report, indent=2, default=str))
    _print_summary(rec, report, fitted, out)
    return 0 if rec.slo_met else EXIT_SLO_UNREACHABLE


def _costs(settings: Settings, qps: float, results: Path | None, repeats: int) -> TierCosts:
    if results is not None:
        print(f"tier costs from {results} ...", flush=True)
        return costs_from_results(results, settings.model_name)
    print(f"calibrating {settings.model_name} by load tests ...", flush=True)
    return calibrate(settings, qps, repeats=repeats)


def _plots(name: str, curves: dict[str, dict[str, Any]], rec: Recommendation, out: Path) -> list[str]:
    return [str(plot_miss_ratio_curves(curves, name, out / "miss_ratio.png")), str(plot_costs(rec, name, out / "cost.png"))]


def _print_summary(rec: Recommendation, report: dict[str, Any], fitted: FittedTrace, out: Path) -> None:
    print(format_table(rec))
    for tier, points in rec.costs.curves.items():
        shown = ", ".join(f"{p.rate:.0f}/s: {p.cpu_s * 1e6:.0f} us CPU, p99 {p.p99_ms:.1f} ms ({p.requests:,} req)" for p in points)
        print(f"  {tier}: {shown}")
    print(f"  {rec.costs.bytes_per_entry:.0f} B per Redis entry, {rec.costs.l1_bytes_per_entry:.0f} B per L1 entry ({rec.costs.source})")
    for gap in report["policy_gap"]:
        print(f"  policy gap at {gap['fraction']:.0%}: server {gap['server_policy']} {gap['server_miss_ratio']:.3f} vs "
              f"{gap['library_policy']} {gap['library_miss_ratio']:.3f} ({gap['gap_pp']:+.1f} pp)")
    if rec.chosen is None:
        best = min(rec.candidates, key=lambda c: c.p99_ms)
        print(f"\nno configuration meets p99 <= {rec.slo_p99_ms:g} ms; the lowest estimate is {best.label} at {best.p99_ms:.2f} ms")
    else:
        c = rec.chosen
        print(f"\nrecommended: {c.label}: hit ratio {c.hit_ratio:.1%} of the {1 - fitted.out_of_space_share:.1%} of requests "
              f"in the key space, p99 ~{c.p99_ms:.2f} ms, ${c.monthly_usd:,.2f}/month at {rec.qps:g} QPS")
        for name, value in c.env(rec.model_name).items():
            print(f"{name}={value}")
        for name, value in c.redis_config().items():
            print(f"redis: {name} {value}")
    v = report.get("verify")
    if v:
        m, p = v["measured"], v["predicted"]
        print(f"\nverify {v['candidate']} ({v['window']['requests']:,} requests: {v['window']['rule']}): hit ratio "
              f"{m['hit_ratio']:.2%} measured vs {p['hit_ratio']:.2%} predicted; CPU {m['cpu_us_per_request']:.0f} vs "
              f"{p['cpu_us_per_request']:.0f} us/request at the calibration's core speed ({m['raw_cpu_us_per_request']:.0f} "
              f"as measured; the median of {len(v['rounds'])} round(s)); p99 {m['p99_ms']:.1f} ms (SLO {rec.slo_p99_ms:g}): {'ok' if v['within_tolerance'] else 'OFF'}")
    print(f"\nwrote {out / 'tuning.json'}, {out / 'miss_ratio.png'}, {out / 'cost.png'}")
