"""The tuner's answer, verified: every trace in ../shared/traces and a synthetic Zipf trace x both profiles.

Per profile, tier costs by calibration (the load tests of :func:`tuning.calibrate.calibration_specs`),
and the comparison's own runs of the profile (``hybridserve compare``'s matrix at the verify rate)
read by the same code, to show that the tuner and the comparison report price a tier alike: both
sets in the same rounds, each spec's median of ``--repeats`` runs kept. Per trace:
fitted to the model's key space (the shared traces' integer ids are not grid keys, so they are
mapped: ``--map-keys``), every candidate simulated once, the miss-ratio curves and the policy gap;
per profile, the candidates ranked and the chosen one verified by a load test
(:func:`tuning.verify.verify`). Writes ``benchmarks/tuning.md`` (the tables) and
``benchmarks/tuning.json`` (everything).

Usage (a registry with both profiles, trained with enough segments for the largest trace)::

    .venv/bin/hybridserve train --profile light --segments 300 --registry /tmp/reg   # and heavy
    .venv/bin/python benchmarks/tuning.py --registry /tmp/reg --traces ../shared/traces
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

from loadtests.keys import key_stream  # noqa: E402
from loadtests.runner import compare, matrix  # noqa: E402
from loadtests.tier_costs import TIERS, cpu_us_at_speed, requests_per_prediction, tier_costs  # noqa: E402
from models.registry import model_name  # noqa: E402
from loadtests.tier_costs import TierCosts  # noqa: E402
from serving.model import LoadedModel  # noqa: E402
from serving.settings import Settings  # noqa: E402
from tuning.calibrate import calibration_costs, calibration_specs  # noqa: E402
from tuning.curves import policy_gap, trace_curves  # noqa: E402
from tuning.key_fit import fit_trace  # noqa: E402
from tuning.recommend import Recommendation, in_flight, rank, simulate_candidates  # noqa: E402
from tuning.traces import Trace, read_trace  # noqa: E402
from tuning.verify import verify  # noqa: E402

HERE = Path(__file__).resolve().parent
PROFILES = ("light", "heavy")
ZIPF_REQUESTS = 60_000


def main() -> int:
    args = _parser().parse_args()
    if args.markdown_only:
        saved = json.loads((HERE / "tuning.json").read_text())
        costs = {row["profile"]: TierCosts.from_dict(row["tiers"]) for row in saved["rows"]}
        (HERE / "tuning.md").write_text(_markdown(saved["context"], saved["rows"], costs, saved.get("agreement", [])))
        return 0
    registry = Path(args.registry)
    traces = _traces(Path(args.traces), registry)
    if args.hybrid_pass:
        return _hybrid_pass(args, registry, traces)
    rows: list[dict[str, Any]] = []
    costs = {}
    if args.resume:  # keep the rows written so far and their calibration; run the traces not done
        rows = json.loads((HERE / "tuning.json").read_text())["rows"]
        costs = {row["profile"]: TierCosts.from_dict(row["tiers"]) for row in rows}
    agreement: list[dict[str, Any]] = json.loads((HERE / "tuning.json").read_text()).get("agreement", []) if args.resume else []
    for profile in (p for p in PROFILES if p not in costs):
        # Calibration and comparison in the same rounds: this VM's speed drifts (the same heavy
        # static run took 355, 274 and 239 us of CPU over ten minutes), and runs made apart would
        # compare the machine's moods rather than the two ways of pricing a tier.
        calibration = calibration_specs(model_name(profile), args.qps, args.calibration_seconds)
        comparison = [s for s in matrix(args.calibration_seconds, args.verify_rate) if s.profile == profile]
        print(f"calibration ({args.qps:g}/s) and comparison ({args.verify_rate:g}/s) runs of {profile}, "
              f"{args.repeats} rounds ...", flush=True)
        records = compare(registry, calibration + comparison, repeats=args.repeats)
        costs[profile] = calibration_costs(records[:len(calibration)], model_name(profile), args.calibration_seconds,
                                           args.repeats)
        records = records[len(calibration):]
        comparison_costs = tier_costs(records, model_name(profile), reference=costs[profile].speed_reference)
        agreement += _agreement(profile, costs[profile], comparison_costs, records)
        agreement += _run_agreement(profile, costs[profile], records)
        _write(args, rows, costs, agreement)
    done = {row["trace"] for row in rows}
    for name, trace in ((n, t) for n, t in traces.items() if n not in done):
        model = LoadedModel.from_registry(registry, model_name("light"))
        fitted = fit_trace(trace, model.key_space, map_keys=not name.startswith("zipf"))
        started = time.perf_counter()
        curves = trace_curves(fitted.trace, fractions=[0.001, 0.01, 0.1, 0.5])
        gap = policy_gap(curves)
        print(f"{name}: {len(fitted.trace):,} requests; gap {[round(g['gap_pp'], 2) for g in gap]} pp", flush=True)
        for profile in PROFILES:
            simulated = simulate_candidates(fitted.trace, costs[profile], model.key_space.count,
                                            in_flight=in_flight(costs[profile], args.qps))
            rec = rank(simulated, costs[profile], slo_p99_ms=args.slo_p99_ms, qps=args.qps,
                       key_count=model.key_space.count, model_name=model_name(profile))
            candidate = rec.to_verify()
            print(f"  {profile}: chosen {candidate.label}; verifying ...", flush=True)
            result = verify(fitted.trace, candidate, costs[profile], Settings(registry=registry, model_name=model_name(profile)),
                            slo_p99_ms=args.slo_p99_ms, rate=args.verify_rate, max_seconds=args.verify_seconds,
                            rounds=args.verify_rounds, anchor_seconds=args.anchor_seconds)
            rows.append({"trace": name, "profile": profile, "key_space": fitted.as_dict(), "policy_gap": gap,
                         "chosen": rec.chosen.as_dict(rec.model_name) if rec.chosen else None,
                         "verified": candidate.label, "verify": result.as_dict(),
                         "cost_vs_memory": rec.cost_memory_curve(), "tiers": costs[profile].as_dict(),
                         "curves": curves, "seconds": time.perf_counter() - started})
            print(f"  {profile}: {_line(rows[-1]['verify'])}", flush=True)
            rows[-1]["hybrid"] = _verify_hybrid(args, registry, rec, fitted.trace, costs[profile], profile)
            _write(args, rows, costs, agreement)  # after every row: a run cut short still leaves its results
    print(f"wrote {HERE / 'tuning.md'}")
    return 0


def _verify_hybrid(args: argparse.Namespace, registry: Path, rec: Recommendation, trace: Trace, costs: TierCosts,
                   profile: str) -> dict[str, Any] | None:
    """Also verify the cheapest sized hybrid candidate (Redis budget, L1, admission, head) when the
    chosen one is not one: the cache sizing is then checked by a load test too."""
    sized = [c for c in rec.candidates if c.mode == "hybrid" and not c.full_table]
    if not sized or (rec.chosen is not None and rec.chosen.mode == "hybrid" and not rec.chosen.full_table):
        return None
    candidate = next((c for c in sized if c.meets_slo), min(sized, key=lambda c: (c.p99_ms, c.monthly_usd)))
    print(f"  {profile}: cheapest sized hybrid {candidate.label}; verifying ...", flush=True)
    result = verify(trace, candidate, costs, Settings(registry=registry, model_name=model_name(profile)),
                    slo_p99_ms=args.slo_p99_ms, rate=args.verify_rate, max_seconds=args.verify_seconds,
                    rounds=args.hybrid_rounds, anchor_seconds=args.anchor_seconds)
    print(f"  {profile}: {_line(result.as_dict())}", flush=True)
    return {"verified": candidate.label, "verify": result.as_dict(), "candidate": candidate.as_dict(rec.model_name)}


def _hybrid_pass(args: argparse.Namespace, registry: Path, traces: dict[str, Trace]) -> int:
    """Add the sized-hybrid verification to the rows of tuning.json that lack it (their own
    calibration, the same simulation and ranking)."""
    saved = json.loads((HERE / "tuning.json").read_text())
    rows, agreement = saved["rows"], saved.get("agreement", [])
    costs = {row["profile"]: TierCosts.from_dict(row["tiers"]) for row in rows}
    model = LoadedModel.from_registry(registry, model_name("light"))
    for row in (r for r in rows if "hybrid" not in r):
        fitted = fit_trace(traces[row["trace"]], model.key_space, map_keys=not row["trace"].startswith("zipf"))
        profile = row["profile"]
        simulated = simulate_candidates(fitted.trace, costs[profile], model.key_space.count, in_flight=in_flight(costs[profile], args.qps))
        rec = rank(simulated, costs[profile],
                   slo_p99_ms=args.slo_p99_ms, qps=args.qps, key_count=model.key_space.count, model_name=model_name(profile))
        print(f"{row['trace']}:", flush=True)
        row["hybrid"] = _verify_hybrid(args, registry, rec, fitted.trace, costs[profile], profile)
        _write(args, rows, costs, agreement)
    return 0


def _run_agreement(profile: str, tuner: TierCosts, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each comparison run's CPU per request, as measured (at the calibration's core speed) and as
    the tuner's cost model prices that run's mix (its measured tier shares at its rate): what the
    comparison report shows per mode."""
    out = []
    for record in records:
        counts = record["tier_counts"]
        served = max(1, counts["l1_hits"] + counts["redis_hits"] + counts["model_rows"])
        shares = {"l1": counts["l1_hits"] / served, "redis": counts["redis_hits"] / served, "model": counts["model_rows"] / served}
        per_served = requests_per_prediction(record)
        measured = cpu_us_at_speed(record, tuner.speed_reference) * per_served
        priced = tuner.cpu_per_request(shares, record["achieved_rps"], misses_pass_store=record["mode"] == "hybrid") * 1e6
        out.append({"profile": profile, "tier": "run", "run": f"{record['mode']}/{record['distribution']}",
                    "rate": record["achieved_rps"], "shares": shares, "tuner_cpu_us": priced, "comparison_cpu_us": measured,
                    "difference": abs(priced - measured) / measured,
                    "comparison_raw_cpu_us": (record["server_cpu_us_per_request"] + record["redis_cpu_us_per_request"])
                    * per_served,
                    "comparison_repeats": [cpu_us_at_speed(r, tuner.speed_reference) * requests_per_prediction(r)
                                           for r in record.get("repeats", [])]})
    return out


def _agreement(profile: str, tuner: TierCosts, comparison: TierCosts, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tier's CPU per request as the tuner's calibration and the comparison's runs price it,
    at the rate (L1: the share) the comparison measured it."""
    out = []
    for tier in TIERS:
        for point in comparison.curves[tier]:
            mine = tuner.at(tier, point.rate, share=point.share, model_share=point.model_share)
            out.append({"profile": profile, "tier": tier, "rate": point.rate, "share": point.share,
                        "tuner_cpu_us": mine.cpu_s * 1e6, "comparison_cpu_us": point.cpu_s * 1e6,
                        "difference": abs(mine.cpu_s - point.cpu_s) / point.cpu_s, "comparison_run": point.run,
                        "tuner_p99_ms": mine.p99_ms, "comparison_p99_ms": point.p99_ms})
    out.append({"profile": profile, "tier": "miss store", "rate": 0.0, "share": 0.0,
                "tuner_cpu_us": tuner.miss_store_cpu_s * 1e6, "comparison_cpu_us": comparison.miss_store_cpu_s * 1e6,
                "difference": abs(tuner.miss_store_cpu_s - comparison.miss_store_cpu_s) / max(comparison.miss_store_cpu_s, 1e-9),
                "comparison_run": ("estimated as a Redis hit (no all-miss run)" if any("no hybrid run of only misses" in n for n in comparison.notes)
                                   else "measured by its hybrid run of uniform keys"),
                "tuner_p99_ms": 0.0, "comparison_p99_ms": 0.0})
    return out


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], costs: dict[str, Any], agreement: list[dict[str, Any]]) -> None:
    context = {"machine": f"{platform.node()}, Python {platform.python_version()}",
               "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "qps": args.qps,
               "slo_p99_ms": args.slo_p99_ms, "verify_rate": args.verify_rate, "load_average": os.getloadavg()[:2],
               "repeats": args.repeats, "verify_rounds": args.verify_rounds, "hybrid_rounds": args.hybrid_rounds,
               "anchor_seconds": args.anchor_seconds}
    (HERE / "tuning.json").write_text(json.dumps({"context": context, "rows": rows, "agreement": agreement}, indent=1, default=str))
    (HERE / "tuning.md").write_text(_markdown(context, rows, costs, agreement))


def _traces(folder: Path, registry: Path) -> dict[str, Trace]:
    traces = {path.name.split(".")[0]: read_trace(path) for path in sorted(folder.glob("*.keys.txt"))}
    segments = int(LoadedModel.from_registry(registry, model_name("light")).card["segments"])
    traces["zipf-1.1"] = Trace.from_keys(key_stream("zipf:1.1", segments, seed=11).take(ZIPF_REQUESTS))
    return traces


def _line(v: dict[str, Any]) -> str:
    m, p = v["measured"], v["predicted"]
    return (f"hit {m['hit_ratio']:.3f} vs {p['hit_ratio']:.3f} ({v['hit_ratio_pp']:.2f} pp), CPU {m['cpu_us_per_request']:.0f} "
            f"vs {p['cpu_us_per_request']:.0f} us ({v['cpu_error']:.0%}), p99 {m['p99_ms']:.1f} ms "
            f"(predicted {p['p99_ms']:.1f}), {'ok' if v['within_tolerance'] else 'OFF'}")


def _markdown(context: dict[str, Any], rows: list[dict[str, Any]], costs: dict[str, Any], agreement: list[dict[str, Any]]) -> str:
    load = context.get("load_average")
    lines = ["# The tuner's answer, verified by load tests", "",
             f"`benchmarks/tuning.py`, {context['when']}, {context['machine']}: a 2-core machine"
             + (f" (load average {load[0]:.1f} / {load[1]:.1f} over 1 / 5 min when this file was written)" if load else "")
             + f"; calibration and comparison figures are each the median run of {context.get('repeats', 1)}, "
             f"verification runs one each. Pricing at {context['qps']:g} predictions/s, p99 SLO "
             f"{context['slo_p99_ms']:g} ms; verification runs at {context['verify_rate']:g} requests/s offered.", "",
             "## Tier costs (calibrated by load tests)", "",
             "Server + Redis CPU per prediction; p99 client-side with its 95% confidence interval; the load is the "
             "CPU seconds per second the run kept busy (a tier's p99 is read at the load of the whole mix).", "",
             "Every CPU figure in this file, unless marked raw, is at the calibration's core speed: each run's server "
             "and Redis CPU times the calibration's median probe unit time over the unit time its core's probe read "
             "during the run (`loadtests/harness/core_speed.py`, `loadtests/tier_costs.at_speed`).", "",
             _speed_line(costs), "",
             "L1 is priced over the model's share of the requests beside it (hot-set runs: about 0).", "",
             "| profile | tier | run | rate /s | L1 share | model share | CPU us/request | load | p99 ms (95% CI) | requests |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for profile, profile_costs in costs.items():
        for tier, points in profile_costs.curves.items():
            for p in points:
                ci = f"{p.p99_low_ms:.1f}-{p.p99_high_ms:.1f}" if p.p99_low_ms is not None else "n/a"
                p99 = f"{p.p99_ms:.1f} ({ci})" if p.p99_of_tier else "(mixed run: not L1's own)"
                model_share = f"{p.model_share:.2f}" if tier == "l1" else ""
                lines.append(f"| {profile} | {tier} | {p.run} | {p.rate:.0f} | {p.share:.2f} | {model_share} | {p.cpu_s * 1e6:.0f} | "
                             f"{p.load:.3f} | {p99} | {p.requests:,} |")
        lines.append(f"| {profile} | miss store round trips | | | | | {profile_costs.miss_store_cpu_s * 1e6:.0f} | | | |")
    by_run = [a for a in agreement if a["tier"] == "run"]
    by_tier = [a for a in agreement if a["tier"] != "run"]
    if by_run:
        lines += ["", "## Tuner vs comparison: the comparison's runs priced by the tuner's cost model", "",
                  "The comparison matrix of `hybridserve compare` (static, dynamic, hybrid on Zipf and on uniform keys), "
                  "run at the verify rate in the same rounds as the calibration (runs of the same spec, separate processes and Redis), each run's CPU per request as measured (what the comparison report "
                  "shows per mode) and as the tuner's calibration prices that run's mix (its measured tier shares at its rate).", "",
                  "| profile | run | rate /s | shares L1 / Redis / model | tuner CPU us | comparison CPU us (its repeats) | difference |",
                  "|---|---|---|---|---|---|---|"]
        for a in by_run:
            sh = a["shares"]
            repeats = ", ".join(f"{x:.0f}" for x in a.get("comparison_repeats", []))
            lines.append(f"| {a['profile']} | {a['run']} | {a['rate']:.0f} | {sh['l1']:.2f} / {sh['redis']:.2f} / {sh['model']:.2f} | "
                         f"{a['tuner_cpu_us']:.0f} | {a['comparison_cpu_us']:.0f}" + (f" ({repeats})" if repeats else "")
                         + f" | {a['difference']:.0%} |")
    if by_tier:
        lines += ["", "## Tuner vs comparison, tier by tier", "",
                  "The same comparison runs read by the same code (`loadtests/tier_costs.py`) into tiers; the tuner's "
                  "calibration priced at the comparison's rate (L1: beside the model's share). Redis and model are measured by runs "
                  "of their own (static, dynamic). L1 in a mix and a miss's store round trips are not: they are what is "
                  "left of a hybrid run's CPU once the other tiers' costs are taken out. The comparison has each of those "
                  "at one rate (the verify rate), while in a hybrid run Redis and the model serve a fifth of it or less, "
                  "where a request costs more (see the 75/s points above), so its own decomposition leaves too much on "
                  "L1 and the store. The last column decomposes the comparison's hybrid runs with the calibration's "
                  "Redis and model curves instead: the same runs, the one cost model, the difference from the tuner "
                  "then only the runs' own (that run's per-run difference above, divided by the tier's share of the run's CPU; "
                  "relative to the tuner's figure here, to the measured one above). "
                  "A derived tier carries only part of its run's CPU (the share column: L1's hits are the "
                  "cheapest requests; a miss's store rides on a model call), so the run's repeat-to-repeat noise "
                  "grows by the inverse of that share in it: each repeat of the run decomposed the same way shows "
                  "how far the comparison's own figure moves between identical runs, and whether the tuner's "
                  "falls inside.", "",
                  "| profile | tier | rate /s | L1 share | tuner CPU us | comparison CPU us (its own curves) | difference "
                  "| comparison CPU us, the calibration's curves (each repeat) | difference | the tier's share of "
                  "the run's CPU | tuner within the repeats |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for a in by_tier:
            lines.append(f"| {a['profile']} | {a['tier']} | {a['rate']:.0f} | {a['share']:.2f} | {a['tuner_cpu_us']:.0f} | "
                         f"{a['comparison_cpu_us']:.0f} | {a['difference']:.0%} | {_derived_cells(a, by_run)} |")
    lines += _budget_curve(rows)
    lines += ["", "## Policy gap: best server-runnable vs best libCacheSim (Belady excluded), whole trace from cold", "",
              "| trace | size | server best | miss | libCacheSim best | miss | gap pp |", "|---|---|---|---|---|---|---|"]
    for row in rows[::len(PROFILES)] if len(rows) > 1 else rows:
        for g in row["policy_gap"]:
            lines.append(f"| {row['trace']} | {g['fraction']:.0%} | {g['server_policy']} | {g['server_miss_ratio']:.3f} | "
                         f"{g['library_policy']} | {g['library_miss_ratio']:.3f} | {g['gap_pp']:+.2f} |")
    anchored = context.get("anchor_seconds", 12.0) > 0  # files from before the option were anchored
    how = ("a round runs the calibration's runs of the tiers the configuration uses (anchors: static for a Redis hit, "
           "dynamic for a model call, a hot-set hybrid for an L1 hit) at the verify rate, then the configuration; its "
           "prediction prices the simulated mix with the calibration's curves re-levelled by the anchors (tier factors "
           "shown: the anchor's CPU over the calibration's at the same rate). Where the runs recorded their core speed, "
           "the anchors and the configuration are all read at the calibration's core speed, so a factor is what the "
           "probe missed (shown after the factors: the kept round's raw CPU, and its probe unit times, server / Redis "
           "core)" if anchored else
           "a round runs the configuration; its prediction prices the simulated mix of what it sent with the "
           "calibration's curves, and its measured CPU is read at the calibration's core speed (the raw figure and "
           "the run's probe unit times, server / Redis core, are shown beside it)")
    lines += ["", "## Recommendation and verification", "",
              f"Each recommendation is verified in {context.get('verify_rounds', 1)} round(s), each sized hybrid in "
              f"{context.get('hybrid_rounds', 1)}: {how}. "
              "The round with the median measured/predicted CPU is kept; every round is listed. The calibration-alone "
              "column is the prediction from the calibration without anchors, made before the traces.", "",
              "| trace | profile | verified configuration | replay | hit measured / predicted | CPU us measured / predicted "
              "(kept round) | every round, measured/predicted | " + ("anchor factors; raw CPU us; probe unit us server / Redis "
              "(kept round)" if anchored else
              "raw CPU us; probe unit us server / Redis (kept round)") + " | calibration alone (error) "
              "| p99 ms measured (95% CI) / predicted | hit | CPU | p99 <= SLO |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(_verify_line(row["trace"], row["profile"], row["verified"], row["verify"], context))
        if row.get("hybrid"):
            hybrid = row["hybrid"]
            lines.append(_verify_line(row["trace"], row["profile"], f"cheapest sized hybrid: {hybrid['verified']}",
                                      hybrid["verify"], context))
    lines += ["", "Tolerances: hit ratio 2 pp, CPU per request 25%, measured p99 within the SLO. Replay lengths: "
              "the whole trace when it fits the verification time, else the shortest tenth-step prefix whose simulated "
              "hit ratio is within 1 pp of the whole trace's (tuning/verify.py).", ""]
    return "\n".join(lines)


# The derived tiers, the comparison run each is left over from, and the share it is divided by.
DERIVED_FROM = {"l1": ("hybrid/zipf:1.1", "l1"), "miss store": ("hybrid/uniform", "model")}


def _with_calibration_curves(tier_row: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[float, list[float], float] | None:
    """A derived tier (L1 in a mix, a miss's store round trips) from the comparison's hybrid run,
    decomposed with the calibration's Redis and model curves: the tuner's figure plus what that run
    measured beyond the tuner's pricing of it, per request of the tier. Returned for the run kept
    (the median), for each of its repeats one by one, and the tier's share of the run's CPU as the
    tuner prices it (None: not a derived tier, or no such run)."""
    if tier_row["tier"] not in DERIVED_FROM:
        return None
    name, share = DERIVED_FROM[tier_row["tier"]]
    run = next((r for r in runs if r["profile"] == tier_row["profile"] and r["run"] == name), None)
    if run is None or run["shares"][share] <= 0:
        return None

    def decomposed(measured: float) -> float:
        return max(0.0, tier_row["tuner_cpu_us"] + (measured - run["tuner_cpu_us"]) / run["shares"][share])

    repeats = [decomposed(x) for x in run.get("comparison_repeats", [])]
    return decomposed(run["comparison_cpu_us"]), repeats, run["shares"][share] * tier_row["tuner_cpu_us"] / run["tuner_cpu_us"]


def _budget_curve(rows: list[dict[str, Any]]) -> list[str]:
    """The cost-vs-memory curve of every trace and profile (tuning.json's ``cost_vs_memory``: the
    cheapest candidate at each memory size the tuner priced), the chosen configuration marked."""
    if not any(row.get("cost_vs_memory") for row in rows):
        return []
    lines = ["", "## Cost against memory: the budget curve", "",
             "Per trace and profile, the cheapest candidate the tuner priced at each memory size (Redis `maxmemory` "
             "budget or the table it needs, plus L1), as `hybridserve tune` draws it in cost.png: hit ratio and "
             "monthly cost move with the budget. Monthly cost at the pricing rate; the chosen configuration in bold.", "",
             "| trace | profile | memory MB | hit ratio | $/month | p99 ms | meets SLO | candidate |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        chosen = (row.get("chosen") or {}).get("label", row.get("verified"))
        for point in row.get("cost_vs_memory") or []:
            label = f"**{point['label']}**" if point["label"] == chosen else point["label"]
            lines.append(f"| {row['trace']} | {row['profile']} | {point['memory_bytes'] / 1e6:.2f} | {point['hit_ratio']:.3f} | "
                         f"{point['monthly_usd']:.2f} | {point['p99_ms']:.1f} | {'yes' if point['meets_slo'] else 'no'} | {label} |")
    return lines


def _derived_cells(tier_row: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The tier-by-tier table's last four cells: the derived tier by the calibration's curves (with
    each repeat's), its difference from the tuner, its share of the run, the tuner inside the repeats."""
    derived = _with_calibration_curves(tier_row, runs)
    if derived is None:
        return " | | | "
    median, repeats, share = derived
    tuner = tier_row["tuner_cpu_us"]
    spread = f" ({', '.join(f'{x:.0f}' for x in repeats)})" if repeats else ""
    inside = ("yes" if min(repeats) <= tuner <= max(repeats) else
              f"no: {min(abs(tuner - x) for x in repeats) / max(tuner, 1e-9):.0%} from the nearest") if repeats else ""
    return f"{median:.0f}{spread} | {abs(median - tuner) / max(tuner, 1e-9):.0%} | {share:.0%} | {inside}"


def _speed_line(costs: dict[str, Any]) -> str:
    """The calibration's core speed per profile (its median probe unit times)."""
    shown = [f"{profile}: server {c.speed_reference['server']:.0f} us, Redis {c.speed_reference['redis']:.0f} us"
             for profile, c in costs.items() if {"server", "redis"} <= set(c.speed_reference)]
    return ("Calibration core speed (median probe unit time): " + "; ".join(shown) + ".") if shown else \
        "The calibration recorded no core speed: CPU figures are as measured."


def _verify_line(trace: str, profile: str, label: str, v: dict[str, Any], context: dict[str, Any]) -> str:
    """One row of the verification table: the kept round's measurement and its prediction (tier
    costs re-levelled by that round's anchor runs, if any), the calibration's own prediction beside it."""
    m, p = v["measured"], v["predicted"]
    ci = f" ({m['p99_low_ms']:.1f}-{m['p99_high_ms']:.1f})" if m.get("p99_low_ms") is not None else ""
    anchors = ", ".join(f"{tier} {factor:.2f}" for tier, factor in sorted(p.get("anchors", {}).items()))
    if "raw_cpu_us_per_request" in m:  # files from before the core speed probe lack it
        speed = m.get("core_speed", {})
        units = " / ".join(f"{speed[c]['unit_us']:.0f}" if speed.get(c) else "n/a" for c in ("server", "redis"))
        anchors = "; ".join(part for part in (anchors, f"{m['raw_cpu_us_per_request']:.0f}", units) if part)
    rounds = ", ".join(f"{r['measured_cpu_us']:.0f}/{r['predicted_cpu_us']:.0f}" for r in v.get("rounds", []))
    alone = p.get("calibration_cpu_us_per_request")
    alone_error = f"{alone:.0f} ({abs(m['cpu_us_per_request'] - alone) / alone:.0%})" if alone else "n/a"
    return (f"| {trace} | {profile} | {label} | {v['window']['requests']:,} | {m['hit_ratio']:.3f} / {p['hit_ratio']:.3f} | "
            f"{m['cpu_us_per_request']:.0f} / {p['cpu_us_per_request']:.0f} ({v['cpu_error']:.0%}) | {rounds} | {anchors} | "
            f"{alone_error} | {m['p99_ms']:.1f}{ci} / {p['p99_ms']:.1f} | "
            f"{'ok' if v['hit_ratio_pp'] <= 2 else 'OFF'} | {'ok' if v['cpu_error'] <= 0.25 else 'OFF'} | "
            f"{'ok' if m['p99_ms'] <= context['slo_p99_ms'] else 'OFF'} |")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite tuning.md from tuning.json")
    parser.add_argument("--resume", action="store_true", help="keep tuning.json's rows and calibration, run the rest")
    parser.add_argument("--hybrid-pass", action="store_true",
                        help="verify the cheapest sized hybrid of each row of tuning.json that lacks it")
    parser.add_argument("--traces", default=str(HERE.parents[1] / "shared" / "traces"))
    parser.add_argument("--qps", type=float, default=300.0)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--verify-rate", type=float, default=300.0)
    parser.add_argument("--verify-seconds", type=float, default=90.0)
    parser.add_argument("--calibration-seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per calibration and comparison spec (median kept)")
    parser.add_argument("--verify-rounds", type=int, default=3, help="rounds (anchors if any, then the run) per recommendation's verification")
    parser.add_argument("--anchor-seconds", type=float, default=12.0,
                        help="anchor runs of this length before each verification round, read at the calibration's core "
                             "speed like the round (0: none, the core speed alone levels: it under-corrects light work)")
    parser.add_argument("--hybrid-rounds", type=int, default=1, help="rounds per sized hybrid's verification (its runs are long)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
