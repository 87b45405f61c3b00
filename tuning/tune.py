"""``hybridserve tune``: calibrate, recommend, plot, write tuning.json and optionally verify live.

Example::

    run_tune(Path("web.keys.txt"), Settings(model_name="traffic-heavy"), slo_p99_ms=20, qps=500,
             out=Path("out/tune"), verify_live=True)
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.model import LoadedModel
from serving.settings import Settings
from tuning.calibrate import calibrate
from tuning.plots import plot_costs, plot_miss_ratio_curves
from tuning.recommend import Recommendation, format_table, recommend
from tuning.traces import Trace, read_trace
from tuning.verify import DEFAULT_VERIFY_REQUESTS, MIN_VERIFY_REQUESTS, verify

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
    verify_requests: int = DEFAULT_VERIFY_REQUESTS,
) -> int:
    """Run the whole tuning flow, print a table and the settings to use; returns the exit status."""
    if verify_live and verify_requests < MIN_VERIFY_REQUESTS:
        # Checked before minutes of calibration, not after.
        raise ValueError(f"--verify-requests must be at least {MIN_VERIFY_REQUESTS} (half warms the caches, "
                         f"half is measured), got {verify_requests}")
    trace = read_trace(trace_path)
    key_count = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version).features.key_count
    print(f"trace {trace_path}: {trace.n_requests:,} requests, {trace.n_unique:,} keys; calibrating {settings.model_name} ...",
          flush=True)
    costs = calibrate(settings)
    rec = recommend(trace, costs, slo_p99_ms=slo_p99_ms, qps=qps, key_count=key_count, model_name=settings.model_name)
    out.mkdir(parents=True, exist_ok=True)
    report = rec.as_dict() | {"trace": str(trace_path), "plots": _plots(trace, rec, out)}
    if verify_live:
        candidate = rec.best_hybrid()
        print(f"verifying {candidate.label} on a live server ({verify_requests:,} requests) ...", flush=True)
        report["verify"] = {"candidate": candidate.label, **verify(trace, candidate, settings, limit=verify_requests).as_dict()}
    (out / "tuning.json").write_text(json.dumps(report, indent=2, default=str))
    _print_summary(rec, report, out)
    return 0 if rec.slo_met else EXIT_SLO_UNREACHABLE


def _plots(trace: Trace, rec: Recommendation, out: Path) -> list[str]:
    return [str(plot_miss_ratio_curves(trace, out / "miss_ratio.png")), str(plot_costs(rec, out / "cost.png"))]


def _print_summary(rec: Recommendation, report: dict[str, object], out: Path) -> None:
    print(format_table(rec))
    tiers = ", ".join(f"{t} {c.p99_ms:.2f} ms p99 / {c.cpu_s * 1e3:.3f} ms CPU" for t, c in rec.costs.tiers.items())
    print(f"\ncalibrated: {tiers}; {rec.costs.bytes_per_entry:.0f} B per Redis entry")
    if rec.chosen is None:
        best = min(rec.candidates, key=lambda c: c.p99_ms)
        print(f"\nno configuration meets p99 <= {rec.slo_p99_ms:g} ms; the lowest estimate is {best.label} at {best.p99_ms:.2f} ms")
    else:
        c = rec.chosen
        print(f"\nrecommended: {c.label}: hit ratio {c.hit_ratio:.1%}, p99 ~{c.p99_ms:.2f} ms, "
              f"${c.monthly_usd:,.2f}/month at {rec.qps:g} QPS")
        for name, value in c.env(rec.model_name).items():
            print(f"{name}={value}")
    if "verify" in report:
        v = report["verify"]
        assert isinstance(v, dict)
        print(f"\nverify {v['candidate']}: measured hit ratio {v['measured_hit_ratio']:.2%}, simulated "
              f"{v['simulated_hit_ratio']:.2%} ({v['difference_pp']:.2f} pp, {'ok' if v['within_tolerance'] else 'OFF'})")
    print(f"\nwrote {out / 'tuning.json'}, {out / 'miss_ratio.png'}, {out / 'cost.png'}")
