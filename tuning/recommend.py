"""Recommend a cache configuration: simulated hit ratios x measured tier costs x prices, under a p99 SLO.

Candidates are configurations the server runs as they are: hybrid with an L1 size, an admission
rule (``always``, ``after:2``) and a precomputed head size, each replayed on the trace by
:func:`tuning.simulate.simulate_server_policy`; plus static (the whole key space precomputed) and
dynamic (the model for every request) as reference points. Each gets:

- CPU per request: ``l1 share x l1 CPU + redis share x redis CPU + miss share x model CPU``
  (calibrated per tier, server and Redis processes together);
- cache memory: Redis entries (the head plus every key the admission rule would admit over the
  trace: keys requested at least N times for ``after:N``) x measured bytes per entry, plus L1
  entries x an estimated per-entry size;
- precompute: head keys (static: every key) x measured precompute CPU per key, once a day;
- p99 latency, by the tail rule of :func:`estimate_p99`.

They are priced with :mod:`loadtests.cost` at the user's QPS; the recommendation is the cheapest
candidate whose estimated p99 meets the SLO (``slo_met=False`` and ``chosen=None`` when none does).

Example::

    rec = recommend(trace, costs, slo_p99_ms=20, qps=500, key_count=33_600)
    rec.chosen.env_lines(), rec.chosen.hit_ratio, rec.chosen.monthly_usd
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from serving.cache import AdmissionRule
from serving.settings import env_vars
from loadtests.cost import Prices, RunUsage, Scenario, monthly_cost
from tuning.calibrate import TierCosts
from tuning.simulate import ServerPolicy, cache_sizes, simulate_server_policy
from tuning.traces import Trace

# Sizes as fractions of the trace's unique keys.
L1_FRACTIONS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2)
HEAD_FRACTIONS: tuple[float, ...] = (0.0, 0.01, 0.1)
ADMISSIONS: tuple[str, ...] = ("always", "after:2")
# p99: the slowest tier that serves more than this share of requests sets the tail.
P99_TAIL_SHARE = 0.01
DEFAULT_SLO_P99_MS = 50.0
DEFAULT_QPS = 1000.0
# Enough requests to price a month at any rate: cost.py only uses the ratios.
_PRICING_PREDICTIONS = 1_000_000


@dataclass
class Candidate:
    """One runnable configuration, its simulated tier shares and its estimated cost and p99."""

    mode: str
    head_size: int
    l1_size: int
    admission: str
    l1_hit_ratio: float
    l2_hit_ratio: float
    miss_ratio: float
    redis_entries: int
    p99_ms: float = 0.0
    cpu_s_per_request: float = 0.0
    monthly: dict[str, float] = field(default_factory=dict)
    meets_slo: bool = False

    @property
    def hit_ratio(self) -> float:
        """Requests answered without the model."""
        return self.l1_hit_ratio + self.l2_hit_ratio

    @property
    def monthly_usd(self) -> float:
        """Total monthly cost in US dollars."""
        return self.monthly.get("total", 0.0)

    @property
    def label(self) -> str:
        """Short name for tables and plots."""
        if self.mode != "hybrid":
            return self.mode
        return f"hybrid l1={self.l1_size} head={self.head_size} {self.admission}"

    def env(self, model_name: str) -> dict[str, str]:
        """The ``HYBRIDSERVE_*`` settings that run this configuration (named from the Settings
        fields themselves, so a renamed setting cannot leave a dead variable here)."""
        fields: dict[str, object] = {"mode": self.mode, "model_name": model_name}
        if self.mode == "hybrid":
            fields |= {"l1_size": self.l1_size, "admission": self.admission, "head_size": self.head_size}
        return env_vars(fields)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the derived fields."""
        return asdict(self) | {"label": self.label, "hit_ratio": self.hit_ratio}


@dataclass
class Recommendation:
    """Every candidate, cheapest first, and the one chosen under the SLO."""

    slo_p99_ms: float
    qps: float
    key_count: int
    model_name: str
    candidates: list[Candidate]
    chosen: Candidate | None
    costs: TierCosts

    @property
    def slo_met(self) -> bool:
        """Whether any candidate meets the SLO."""
        return self.chosen is not None

    def best_hybrid(self) -> Candidate:
        """The hybrid candidate to verify: the chosen one if hybrid, else the cheapest meeting the
        SLO, else the one with the lowest p99."""
        hybrids = [c for c in self.candidates if c.mode == "hybrid"]
        if self.chosen is not None and self.chosen.mode == "hybrid":
            return self.chosen
        meeting = [c for c in hybrids if c.meets_slo]
        return meeting[0] if meeting else min(hybrids, key=lambda c: (c.p99_ms, c.monthly_usd))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuning.json)."""
        return {
            "slo_p99_ms": self.slo_p99_ms, "qps": self.qps, "key_count": self.key_count,
            "slo_met": self.slo_met, "p99_rule": estimate_p99.__doc__,
            "chosen": self.chosen.as_dict() if self.chosen else None,
            "env": self.chosen.env(self.model_name) if self.chosen else None,
            "tier_costs": asdict(self.costs),
            "candidates": [c.as_dict() for c in self.candidates],
        }


def recommend(
    trace: Trace,
    costs: TierCosts,
    *,
    slo_p99_ms: float = DEFAULT_SLO_P99_MS,
    qps: float = DEFAULT_QPS,
    key_count: int,
    model_name: str = "traffic-light",
    prices: Prices = Prices(),
) -> Recommendation:
    """Simulate, price and rank every candidate; choose the cheapest meeting ``slo_p99_ms``."""
    candidates = hybrid_candidates(trace) + reference_candidates(key_count)
    for candidate in candidates:
        _estimate(candidate, costs, qps, key_count, prices, slo_p99_ms)
    candidates.sort(key=lambda c: (c.monthly_usd, c.p99_ms))
    chosen = next((c for c in candidates if c.meets_slo), None)
    return Recommendation(slo_p99_ms, qps, key_count, model_name, candidates, chosen, costs)


def candidate_policies(trace: Trace) -> list[ServerPolicy]:
    """The hybrid grid: L1 size x admission x head size, sizes as fractions of unique keys."""
    l1_sizes = sorted({0, *cache_sizes(trace.n_unique, [f for f in L1_FRACTIONS if f > 0])})
    heads = sorted({0, *cache_sizes(trace.n_unique, [f for f in HEAD_FRACTIONS if f > 0])})
    return [ServerPolicy.hybrid(head_size=h, l1_capacity=l1, admission=a)
            for l1 in l1_sizes for a in ADMISSIONS for h in heads]


def hybrid_candidates(trace: Trace) -> list[Candidate]:
    """Every hybrid policy of the grid, replayed on ``trace``."""
    counts = np.bincount(trace.ids, minlength=len(trace.keys))
    out = []
    for policy in candidate_policies(trace):
        result = simulate_server_policy(trace, policy)
        out.append(Candidate("hybrid", policy.head_size, policy.l1_capacity, policy.admission,
                             result.l1_hit_ratio, result.l2_hit_ratio, result.miss_ratio,
                             _redis_entries(counts, policy)))
    return out


def _redis_entries(counts: np.ndarray, policy: ServerPolicy) -> int:
    """Keys Redis ends up holding: every key requested often enough to be admitted (``after:N``
    admits on the N-th miss), or the head if larger (the head is the most requested keys, so it is
    mostly admitted keys too). No TTL or maxmemory eviction assumed: an upper bound."""
    need = AdmissionRule.parse(policy.admission).min_requests
    return max(int(np.count_nonzero(counts >= need)), policy.head_size)


def reference_candidates(key_count: int) -> list[Candidate]:
    """Static (every key precomputed, every request a Redis hit) and dynamic (every request a miss)."""
    return [Candidate("static", key_count, 0, "always", 0.0, 1.0, 0.0, key_count),
            Candidate("dynamic", 0, 0, "always", 0.0, 0.0, 1.0, 0)]


def estimate_p99(shares: dict[str, float], costs: TierCosts) -> float:
    """p99 rule: walk the tiers from slowest to fastest (by calibrated p99) adding up their share
    of requests; the first tier where the running share exceeds 1% sets the p99, at that tier's
    own calibrated p99. So with a miss ratio above 1% the p99 is the model's p99; below it, the
    Redis tier's if Redis and model together serve over 1%; else L1's. Conservative: a tier
    serving just over 1% is charged its own p99, not a lower quantile of it."""
    tail = 0.0
    ordered = sorted(shares, key=lambda tier: costs.tiers[tier].p99_ms, reverse=True)
    for tier in ordered:
        tail += shares[tier]
        if tail > P99_TAIL_SHARE:
            return costs.tiers[tier].p99_ms
    return costs.tiers[ordered[-1]].p99_ms


def _estimate(candidate: Candidate, costs: TierCosts, qps: float, key_count: int, prices: Prices, slo: float) -> None:
    shares = {"l1": candidate.l1_hit_ratio, "redis": candidate.l2_hit_ratio, "model": candidate.miss_ratio}
    candidate.cpu_s_per_request = sum(shares[t] * costs.tiers[t].cpu_s for t in shares)
    candidate.p99_ms = estimate_p99(shares, costs)
    candidate.meets_slo = candidate.p99_ms <= slo
    cache_bytes = candidate.redis_entries * costs.bytes_per_entry + candidate.l1_size * costs.l1_bytes_per_entry
    usage = RunUsage(
        mode=candidate.mode, predictions=_PRICING_PREDICTIONS, duration_s=_PRICING_PREDICTIONS / qps,
        server_cpu_s=candidate.cpu_s_per_request * _PRICING_PREDICTIONS, redis_cpu_s=0.0,  # included per tier
        cache_bytes=cache_bytes, key_count=key_count,
        precompute_cpu_s=candidate.head_size * costs.precompute_cpu_s_per_key,
    )
    monthly = monthly_cost(usage, Scenario(qps=qps, key_count=key_count), prices)
    candidate.monthly = {"serving_cpu": monthly.serving_cpu, "cache_memory": monthly.cache_memory,
                         "precompute": monthly.precompute, "total": monthly.total}


def format_table(rec: Recommendation, limit: int = 12) -> str:
    """The cheapest ``limit`` candidates as a text table, the chosen one marked with ``*``."""
    lines = [f"{'':1} {'configuration':38} {'hit':>6} {'p99 ms':>8} {'USD/month':>10} {'SLO':>4}"]
    shown: Sequence[Candidate] = rec.candidates[:limit]
    for c in shown:
        mark = "*" if c is rec.chosen else ""
        lines.append(f"{mark:1} {c.label:38} {c.hit_ratio:6.1%} {c.p99_ms:8.2f} {c.monthly_usd:10.2f} "
                     f"{'ok' if c.meets_slo else 'no':>4}")
    return "\n".join(lines)
