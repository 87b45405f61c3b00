"""Verify a recommendation by a real load test: the configuration as recommended, the trace's keys, Locust.

The configuration (any mode: static, dynamic, hybrid with its L1 size and policy, admission, head,
Redis budget and eviction, TTL) runs through :func:`loadtests.runner.run_one`, the comparison's own
path: a fresh Redis (``maxmemory`` set to its baseline + the budget) and server, the runner's
warm-up, then Locust replaying the trace in order at a rate this machine can offer, concurrently.

How much of the trace: all of it when it fits in :data:`MAX_VERIFY_SECONDS` at the verify rate;
otherwise the shortest prefix, in steps of a tenth of the trace, whose simulated hit ratio (from
cold, as the load test runs it) is within :data:`STEADY_STATE_PP` of the whole trace's: there the
trace has reached its steady state. The predicted side is the simulation of exactly what the run
sends (the runner's warm-up, its head: the most requested keys of the replay's first
``HEAD_SAMPLE_REQUESTS``, then the replay), priced by the tier costs at the rate achieved.

Compared: hit ratio (within :data:`TOLERANCE_PP`), server + Redis CPU per request (within
:data:`CPU_TOLERANCE`), and the measured p99 against the SLO.

At one core speed, anchored, in rounds: this VM's cores run the same work at anything from 0.6 to
1.1 of their fastest, minute to minute (another tenant on the host), more than the tolerance, and
the calibration may be long past. Two corrections, both measured beside the run:

- Every run records how fast its cores ran (:mod:`loadtests.harness.core_speed`), and the
  candidate's measured CPU is read at the calibration's core speed
  (:func:`loadtests.tier_costs.at_speed`; the raw figure is recorded beside it,
  ``raw_cpu_us_per_request``). The probe is a pure-Python loop; a light server's CPU (system
  calls, memory traffic) moved 1.36 times as much as the probe's in log terms (heavy: 0.99; 14
  alternating rounds of a light L1-fronted table and a heavy dynamic model), so in a fast spell
  the probe alone leaves a light configuration reading 20-30% under its prediction.
- So each round first runs the calibration's runs of the tiers the candidate uses at the verify
  rate (:func:`anchor_specs`: a static run for a Redis hit, a dynamic one for a model call, a
  hot-set hybrid for an L1 hit; ``anchor_seconds`` each, :data:`ANCHOR_SECONDS` by default), read
  at the same core speed, and prices the round's prediction with the calibration re-levelled by
  them (:func:`loadtests.tier_costs.anchor_factors`): what the probe missed, tier by tier, from the
  same work minutes apart. The prediction from the calibration alone is always recorded
  (``calibration_cpu_us_per_request``). Before the probe, a single anchor run was as noisy as the
  drift it removed (raw, one light static spec read 301 and 433 us in one round); read at one core
  speed, the second of two identical runs about 45 s apart read 0.91-1.14 of the first (26 pairs,
  13 of each kind, in those 14 rounds).

With ``--results`` (tier costs from a comparison's runs, as in the demo) the comparison has no run
of L1 alone, only its L1 left over from a Zipf hybrid run; the L1 anchor, a hot-set run, then also
replaces that leftover's price by a direct one, besides levelling the drift.

Identical runs side by side still differ, so the candidate runs in :data:`VERIFY_ROUNDS` rounds and
the round kept is the one whose measured-over-predicted CPU is the median; every round is recorded.
``anchor_seconds=0`` skips the anchors (quicker; the probe alone levels).

Example::

    result = verify(fitted.trace, rec.to_verify(), costs, Settings(model_name="traffic-heavy"), slo_p99_ms=50)
    result.as_dict()["within_tolerance"]
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests import cost
from loadtests.runner import HEAD_SAMPLE_REQUESTS, WARMUP_REQUESTS, RunSpec, run_one
from loadtests.tier_costs import TierCosts, anchor_factors, cpu_us_at_speed, requests_per_prediction
from serving.settings import Settings
from tuning.calibrate import CALIBRATION_SECONDS, MAX_CALIBRATION_RATE, profile_of, tier_spec
from tuning.recommend import TIER_NAMES, Candidate, estimate_p99, in_flight
from tuning.simulate import ServerReplay
from tuning.traces import Trace

TOLERANCE_PP = 2.0
CPU_TOLERANCE = 0.25
STEADY_STATE_PP = 1.0
MAX_VERIFY_SECONDS = 240.0
VERIFY_RATE = MAX_CALIBRATION_RATE
STEPS = 10
# Locust's run length: the replay at the offered rate, plus this share and a few seconds to spare.
DURATION_SLACK = 1.25
# Rounds of the candidate's run (after its anchor runs, if any); the round with the median CPU error is kept.
VERIFY_ROUNDS = 3
# Each anchor run's length: the calibration's own, so an anchor measures what the calibration did.
ANCHOR_SECONDS = CALIBRATION_SECONDS
# The shortest anchor run: at the verify rate a shorter one serves too few requests to price a tier
# (and its warm-up would be most of it).
MIN_ANCHOR_SECONDS = 2.0


@dataclass(frozen=True)
class Window:
    """The part of the trace a verification replays, and why that much."""

    requests: int
    rule: str
    steady: bool


@dataclass(frozen=True)
class Shares:
    """Where requests were served from (fractions)."""

    l1: float
    redis: float
    model: float

    @property
    def hit_ratio(self) -> float:
        """Requests not computed by the model."""
        return self.l1 + self.redis


@dataclass
class VerifyResult:
    """Both sides of a verification, and whether they agree within the tolerances."""

    candidate: str
    window: Window
    measured: dict[str, Any]
    predicted: dict[str, Any]
    recommended_hit_ratio: float
    slo_p99_ms: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """Every round: the candidate's measured and predicted CPU, and the anchors' factors."""

    @property
    def hit_ratio_pp(self) -> float:
        """|measured - predicted| hit ratio, percentage points."""
        return abs(self.measured["hit_ratio"] - self.predicted["hit_ratio"]) * 100

    @property
    def cpu_error(self) -> float:
        """|measured - predicted| CPU per request, relative to the prediction."""
        return abs(self.measured["cpu_us_per_request"] - self.predicted["cpu_us_per_request"]) / self.predicted["cpu_us_per_request"]

    @property
    def within_tolerance(self) -> bool:
        """Hit ratio within 2 pp, CPU within 25%, measured p99 within the SLO."""
        return (self.hit_ratio_pp <= TOLERANCE_PP and self.cpu_error <= CPU_TOLERANCE
                and self.measured["p99_ms"] <= self.slo_p99_ms)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuning.json's ``verify``)."""
        return asdict(self) | {"hit_ratio_pp": self.hit_ratio_pp, "cpu_error": self.cpu_error,
                               "p99_within_slo": self.measured["p99_ms"] <= self.slo_p99_ms,
                               "within_tolerance": self.within_tolerance,
                               "tolerances": {"hit_ratio_pp": TOLERANCE_PP, "cpu": CPU_TOLERANCE}}


def replay_head(trace: Trace, head_size: int) -> list[str]:
    """The head the runner precomputes for a trace replay: the ``head_size`` most requested keys of
    its first ``HEAD_SAMPLE_REQUESTS`` requests, ties in first-seen order."""
    sample = Counter(trace.keys[i] for i in trace.ids[:HEAD_SAMPLE_REQUESTS].tolist())
    return [key for key, _ in sample.most_common(head_size)]


def simulate_run(trace: Trace, candidate: Candidate, checkpoints: int = 1, overlap: float = 0.0) -> list[Shares]:
    """What the load test of ``candidate`` on ``trace`` serves from each tier: the runner's warm-up
    (the replay's first requests), then the replay from cold caches, counted at ``checkpoints``
    evenly spaced prefixes (the last is the whole replay); ``overlap``: requests in flight at once
    (:func:`tuning.recommend.in_flight`; the warm-up is sequential)."""
    policy = candidate.policy()
    head = [] if candidate.mode == "dynamic" else replay_head(trace, candidate.head_size)
    replay = ServerReplay(policy, head, in_flight=overlap)
    keys = [trace.keys[i] for i in trace.ids.tolist()]
    replay.in_flight = 0  # the runner's warm-up is one request at a time
    for key in keys[:WARMUP_REQUESTS]:
        replay.serve(key)
    replay.in_flight = overlap
    if candidate.mode == "static":
        return [Shares(0.0, 1.0, 0.0)] * checkpoints  # the whole key space is precomputed
    counts = replay.counts
    start = (counts.l1_hits, counts.redis_hits)
    ends = {int(len(keys) * (step + 1) / checkpoints) for step in range(checkpoints)}
    out = []
    for number, key in enumerate(keys, 1):
        replay.serve(key)
        if number in ends:
            l1, redis = counts.l1_hits - start[0], counts.redis_hits - start[1]
            out.append(Shares(l1 / number, redis / number, 1 - (l1 + redis) / number))
    return out


def choose_window(trace: Trace, candidate: Candidate, rate: float, max_seconds: float = MAX_VERIFY_SECONDS) -> Window:
    """How many requests of ``trace`` to replay (see the module doc)."""
    fits = int(rate * max_seconds)
    if len(trace) <= fits:
        return Window(len(trace), f"the whole trace ({len(trace):,} requests) fits in {max_seconds:g} s at {rate:g}/s", True)
    shares = simulate_run(trace, candidate, STEPS)
    whole = shares[-1].hit_ratio
    for step, share in enumerate(shares, 1):
        length = int(len(trace) * step / STEPS)
        if length <= fits and abs(share.hit_ratio - whole) * 100 <= STEADY_STATE_PP:
            return Window(length, f"the shortest tenth-step prefix whose simulated hit ratio ({share.hit_ratio:.2%}) is "
                                  f"within {STEADY_STATE_PP:g} pp of the whole trace's ({whole:.2%})", True)
    return Window(fits, f"no prefix within {max_seconds:g} s reaches the whole trace's hit ratio ({whole:.2%}) within "
                        f"{STEADY_STATE_PP:g} pp: the longest that fits, short of steady state", False)


def anchor_specs(candidate: Candidate, model: str, rate: float, duration_s: float = CALIBRATION_SECONDS) -> list[RunSpec]:
    """The calibration's runs of the tiers ``candidate`` uses, at ``rate``: a Redis hit unless it
    is dynamic (a static table, or a hybrid's L2), a model call unless every key is precomputed, an
    L1 hit when it has an L1 (see the module doc)."""
    uses = {"redis": candidate.mode != "dynamic",
            "model": candidate.mode == "dynamic" or (candidate.mode == "hybrid" and not candidate.full_table),
            "l1": candidate.mode == "hybrid" and candidate.l1_size > 0}
    return [tier_spec(model, tier, rate, duration_s) for tier, used in uses.items() if used]


def check_anchor_seconds(seconds: float, name: str = "anchor seconds") -> None:
    """Refuse an anchor length other than 0 (no anchor runs) or a finite number of seconds of at
    least :data:`MIN_ANCHOR_SECONDS`, naming the option as ``name``."""
    if not (seconds == 0 or MIN_ANCHOR_SECONDS <= seconds < math.inf):
        raise ValueError(f"{name} must be 0 (no anchor runs) or a finite number of seconds >= {MIN_ANCHOR_SECONDS:g} "
                         f"(a shorter anchor run serves too few requests to price a tier), got {seconds:g}")


def verify(
    trace: Trace,
    candidate: Candidate,
    costs: TierCosts,
    settings: Settings,
    *,
    slo_p99_ms: float,
    rate: float = VERIFY_RATE,
    max_seconds: float = MAX_VERIFY_SECONDS,
    rounds: int = VERIFY_ROUNDS,
    anchor_seconds: float = ANCHOR_SECONDS,
) -> VerifyResult:
    """Load-test ``candidate`` on ``trace`` (keys of the model's key space) in ``rounds`` rounds, each
    after its anchor runs of ``anchor_seconds`` (0: none), and compare with the prediction (see the
    module doc)."""
    if rounds < 1:
        raise ValueError(f"verify rounds must be >= 1, got {rounds}")
    check_anchor_seconds(anchor_seconds)
    window = choose_window(trace, candidate, rate, max_seconds)
    replayed = trace.split(window.requests / len(trace))[0] if window.requests < len(trace) else trace
    anchors = anchor_specs(candidate, settings.model_name, rate, anchor_seconds) if anchor_seconds > 0 else []
    done = []
    with tempfile.TemporaryDirectory(prefix="hybridserve-verify-") as folder:
        path = Path(folder) / "replay.keys"
        path.write_text("\n".join(replayed.keys[i] for i in replayed.ids.tolist()) + "\n")
        spec = _spec(candidate, settings.model_name, path, rate, window.requests)
        for number in range(1, rounds + 1):
            records = [_run(anchor, settings, f"round {number}/{rounds}: anchor") for anchor in anchors]
            record = _run(spec, settings, f"round {number}/{rounds}: {candidate.label}")
            done.append(_round(replayed, candidate, costs, records, record))
    ranked = sorted(done, key=lambda r: r["measured"]["cpu_us_per_request"] / r["predicted"]["cpu_us_per_request"])
    kept = ranked[(len(ranked) - 1) // 2]
    summary = [{"measured_cpu_us": r["measured"]["cpu_us_per_request"], "raw_cpu_us": r["measured"]["raw_cpu_us_per_request"],
                "predicted_cpu_us": r["predicted"]["cpu_us_per_request"],
                "calibration_cpu_us": r["predicted"]["calibration_cpu_us_per_request"], "anchors": r["predicted"]["anchors"],
                "hit_ratio": r["measured"]["hit_ratio"], "p99_ms": r["measured"]["p99_ms"], "kept": r is kept} for r in done]
    return VerifyResult(candidate.label, window, kept["measured"], kept["predicted"], candidate.hit_ratio, slo_p99_ms, summary)


def _run(spec: RunSpec, settings: Settings, what: str) -> dict[str, Any]:
    print(f"  {what} {spec.label} ...", flush=True)
    return run_one(spec, settings.registry, cost.Prices()).as_record()


def _round(replayed: Trace, candidate: Candidate, costs: TierCosts, anchors: list[dict[str, Any]],
           record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One round's two sides: the candidate's run, and the simulation of what it sent priced by the
    calibration (re-levelled by the round's anchor runs, if it had any)."""
    factors = anchor_factors(costs, anchors)
    levelled = costs.scaled(factors) if factors else costs
    hybrid = candidate.mode == "hybrid"
    overlap = in_flight(levelled, record["achieved_rps"])
    shares = simulate_run(replayed, candidate, overlap=overlap)[-1]
    predicted = _predicted(shares, levelled, record["achieved_rps"], hybrid=hybrid) | {
        "in_flight": overlap, "anchors": factors,
        "calibration_cpu_us_per_request": _predicted(shares, costs, record["achieved_rps"], hybrid=hybrid)["cpu_us_per_request"]}
    return {"measured": _measured(record, costs.speed_reference), "predicted": predicted}


def _spec(candidate: Candidate, model: str, path: Path, rate: float, requests: int) -> RunSpec:
    extra: dict[str, Any] = {"l1_policy": candidate.l1_policy, "admission": candidate.admission,
                             "redis_ttl_s": candidate.redis_ttl_s, "l1_ttl_s": 0.0}
    return RunSpec(profile_of(model), candidate.mode, f"trace:{path}", rate=rate,
                   duration_s=requests / rate * DURATION_SLACK + 5, head_size=candidate.head_size,
                   l1_size=candidate.l1_size, settings=tuple(extra.items()),
                   redis_maxmemory=candidate.redis_budget_bytes, redis_eviction=candidate.redis_eviction)


def _measured(record: dict[str, Any], speed_reference: dict[str, float]) -> dict[str, Any]:
    """The run's side: CPU per prediction served at the calibration's core speed, and as measured."""
    counts = record["tier_counts"]
    per_served = requests_per_prediction(record)
    latency = record["latency_ms"]
    return {
        "hit_ratio": record["hit_ratio"]["total"], "l1_hit_ratio": record["hit_ratio"]["l1"],
        "cpu_us_per_request": cpu_us_at_speed(record, speed_reference) * per_served,
        "raw_cpu_us_per_request": (record["server_cpu_us_per_request"] + record["redis_cpu_us_per_request"]) * per_served,
        "core_speed": record.get("core_speed", {}),
        "p99_ms": latency["p99"], "p99_low_ms": latency.get("p99_low"), "p99_high_ms": latency.get("p99_high"),
        "requests": record["requests"], "failures": record["failures"], "achieved_rps": record["achieved_rps"],
        "saturated": record["load_generator_saturated"],
        "tier_counts": counts,  # redis_fallbacks: misses the model answered because Redis timed out
    }


def _predicted(shares: Shares, costs: TierCosts, rate: float, *, hybrid: bool) -> dict[str, Any]:
    by_tier = {"l1": shares.l1, "redis": shares.redis, "model": shares.model}
    cpu = costs.cpu_per_request(by_tier, rate, misses_pass_store=hybrid)
    at = {tier: costs.at(tier, by_tier[tier] * rate, load=rate * cpu) for tier in TIER_NAMES}
    return {"hit_ratio": shares.hit_ratio, "l1_hit_ratio": shares.l1, "cpu_us_per_request": cpu * 1e6,
            "p99_ms": estimate_p99(by_tier, {t: at[t].p99_ms for t in TIER_NAMES}), "rate": rate,
            "shares": by_tier}

