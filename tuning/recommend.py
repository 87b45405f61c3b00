"""Recommend a cache configuration: simulated hit ratios x measured tier costs x prices, under a p99 SLO.

Candidates are configurations the server runs as they are, each replayed on the trace by
:func:`tuning.simulate.simulate_server_policy` (the server's own decision core):

- **hybrid**, sized: the Redis memory budget (``maxmemory`` in bytes: a share of what the trace's
  distinct keys take, converted to entries by the measured bytes per entry, or unbounded) and its
  eviction (``allkeys-lru`` / ``allkeys-lfu``, sampled as Redis samples), L1 size and policy,
  admission, the precomputed head, and the Redis TTL (only on traces with timestamps; on the others
  the TTL is off, as simulated, and the candidate's settings say so);
- **static** on the model's whole key space (every key precomputed, never fewer than the trace's
  distinct keys in it), and **L1 in front of the full static table** (hybrid with the whole key
  space as its head, so nothing is ever computed);
- **dynamic** (the model for every request).

Each gets, with :class:`loadtests.tier_costs.TierCosts` (the load test's own measurements):

- CPU per request: ``sum over tiers of share x CPU of that tier at the rate it serves``
  (share x QPS: the model's batch sizes and queueing follow the rate it is called at), a hybrid
  miss also paying its Redis lookup and write (:meth:`loadtests.tier_costs.TierCosts.cpu_per_request`);
- cache memory: Redis (the budget, or the entries held when unbounded) plus L1 entries x bytes;
- precompute: head keys x precompute CPU per key, once per refresh period (a day);
- p99 latency, by the tail rule of :func:`estimate_p99`, each tier's p99 read at the load the
  whole mix puts on the server (queueing: :meth:`loadtests.tier_costs.TierCosts.at`).

They are priced with :mod:`loadtests.cost` at the user's QPS; the recommendation is the cheapest
candidate whose estimated p99 meets the SLO (``chosen=None`` when none does).

Example::

    rec = recommend(trace, costs, slo_p99_ms=20, qps=500, key_count=33_600)
    rec.chosen.env("traffic-heavy"), rec.chosen.hit_ratio, rec.chosen.monthly_usd
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadtests.cost import Prices, RunUsage, Scenario, monthly_cost
from loadtests.tier_costs import TierCosts
from serving.cache import L1_POLICIES, AdmissionRule
from serving.settings import env_vars
from tuning.simulate import ServerPolicy, cache_sizes, simulate_server_policy
from tuning.traces import Trace

# Sizes as fractions of the trace's distinct keys.
L1_FRACTIONS: tuple[float, ...] = (0.0, 0.01, 0.05)
HEAD_FRACTIONS: tuple[float, ...] = (0.0, 0.05)
# Redis budgets as fractions of the memory the trace's distinct keys take; None: no maxmemory.
REDIS_BUDGET_FRACTIONS: tuple[float | None, ...] = (0.01, 0.05, 0.2, None)
REDIS_EVICTIONS: tuple[str, ...] = ("allkeys-lru", "allkeys-lfu")
# No budget below this: Redis' client buffers (counted in used_memory) move by tens of kilobytes a
# connection, so a smaller budget is mostly noise, and would leave nothing to evict (OOM on write).
REDIS_MIN_BUDGET_BYTES = 1_000_000
ADMISSIONS: tuple[str, ...] = ("always", "after:2", "tinylfu")
# Redis TTLs tried on traces with timestamps (seconds; 0: no expiry).
REDIS_TTLS_S: tuple[int, ...] = (0, 3600)
# p99: the slowest tier that serves more than this share of requests sets the tail.
P99_TAIL_SHARE = 0.01
DEFAULT_SLO_P99_MS = 50.0
DEFAULT_QPS = 1000.0
# Enough requests to price a month at any rate: cost.py only uses the ratios.
_PRICING_PREDICTIONS = 1_000_000
TIER_NAMES = ("l1", "redis", "model")


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
    """Entries Redis holds: the budget's worth when bounded, else the head plus every admitted key."""
    l1_policy: str = "lru"
    redis_budget_bytes: int | None = None
    """``maxmemory`` for the predictions (None: unbounded)."""
    redis_eviction: str = "allkeys-lru"
    redis_ttl_s: int = 0
    full_table: bool = False
    """Hybrid whose head is the whole key space ("L1 in front of the static table")."""
    p99_ms: float = 0.0
    cpu_s_per_request: float = 0.0
    memory_bytes: float = 0.0
    monthly: dict[str, float] = field(default_factory=dict)
    meets_slo: bool = False
    extrapolated: list[str] = field(default_factory=list)
    """Tiers whose rate lies outside the measured points (their nearest measured figures are used)."""

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
        if self.full_table:
            return f"static table + L1 {self.l1_policy} {self.l1_size}"
        budget = "unbounded" if self.redis_budget_bytes is None else f"{self.redis_budget_bytes / 1e6:.2f}MB {self.redis_eviction}"
        ttl = f" ttl={self.redis_ttl_s}s" if self.redis_ttl_s else ""
        return f"hybrid redis={budget} l1={self.l1_policy}:{self.l1_size} head={self.head_size} {self.admission}{ttl}"

    def policy(self) -> ServerPolicy:
        """The simulated configuration (``l2_capacity`` in entries, from the budget)."""
        if self.mode == "static":
            return ServerPolicy.static(head_size=self.head_size)
        if self.mode == "dynamic":
            return ServerPolicy(mode="dynamic")
        capacity = None if self.redis_budget_bytes is None else self.redis_entries
        return ServerPolicy.hybrid(head_size=self.head_size, l1_capacity=self.l1_size, admission=self.admission,
                                   l1_policy=self.l1_policy, l2_capacity=capacity, l2_eviction=self.redis_eviction,
                                   l2_ttl_s=self.redis_ttl_s)

    def env(self, model_name: str) -> dict[str, str]:
        """The ``HYBRIDSERVE_*`` settings that run this configuration (named from the Settings
        fields themselves, so a renamed setting cannot leave a dead variable here)."""
        fields: dict[str, object] = {"mode": self.mode, "model_name": model_name}
        if self.mode == "hybrid":
            fields |= {"l1_size": self.l1_size, "l1_policy": self.l1_policy, "admission": self.admission,
                       "head_size": self.head_size, "redis_ttl_s": self.redis_ttl_s}
        return env_vars(fields)

    def redis_config(self) -> dict[str, str]:
        """The Redis settings it needs (``maxmemory`` for the predictions; add Redis' own baseline)."""
        if self.mode != "hybrid" or self.redis_budget_bytes is None:
            return {}
        return {"maxmemory": str(self.redis_budget_bytes), "maxmemory-policy": self.redis_eviction}

    def as_dict(self, model_name: str = "") -> dict[str, Any]:
        """JSON-ready form, with the derived fields and the settings that run it."""
        return asdict(self) | {"label": self.label, "hit_ratio": self.hit_ratio, "monthly_usd": self.monthly_usd,
                               "settings": self.env(model_name) if model_name else {}, "redis_config": self.redis_config()}


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

    def to_verify(self) -> Candidate:
        """The candidate to verify: the chosen one, else the one with the lowest p99."""
        if self.chosen is not None:
            return self.chosen
        return min(self.candidates, key=lambda c: (c.p99_ms, c.monthly_usd))

    def cost_memory_curve(self) -> list[dict[str, Any]]:
        """The cheapest candidate at each memory size, with whether it meets the SLO: where the SLO
        cuts the cost-vs-memory curve."""
        best: dict[float, Candidate] = {}
        for c in self.candidates:
            if c.memory_bytes not in best or c.monthly_usd < best[c.memory_bytes].monthly_usd:
                best[c.memory_bytes] = c
        return [{"memory_bytes": m, "monthly_usd": c.monthly_usd, "hit_ratio": c.hit_ratio, "p99_ms": c.p99_ms,
                 "meets_slo": c.meets_slo, "label": c.label} for m, c in sorted(best.items())]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuning.json's ``candidates``, ``chosen`` and ``tiers``)."""
        return {
            "slo_p99_ms": self.slo_p99_ms, "qps": self.qps, "key_count": self.key_count,
            "slo_met": self.slo_met, "p99_rule": estimate_p99.__doc__,
            "chosen": self.chosen.as_dict(self.model_name) if self.chosen else None,
            "env": self.chosen.env(self.model_name) if self.chosen else None,
            "tiers": self.costs.as_dict(),
            "cost_vs_memory": self.cost_memory_curve(),
            "candidates": [c.as_dict(self.model_name) for c in self.candidates],
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
    l1_policies: Sequence[str] = L1_POLICIES,
    min_budget_bytes: int = REDIS_MIN_BUDGET_BYTES,
) -> Recommendation:
    """Simulate, price and rank every candidate; choose the cheapest meeting ``slo_p99_ms``.

    ``trace`` holds only keys of the model's key space (:func:`tuning.key_fit.fit_trace`);
    ``key_count`` is the size of that key space.
    """
    candidates = simulate_candidates(trace, costs, key_count, l1_policies, min_budget_bytes, in_flight=in_flight(costs, qps))
    return rank(candidates, costs, slo_p99_ms=slo_p99_ms, qps=qps, key_count=max(key_count, trace.n_unique),
                model_name=model_name, prices=prices)


def in_flight(costs: TierCosts, rate: float) -> float:
    """How many following requests a miss overlaps at ``rate`` requests/s, on average: rate x the
    model tier's median latency (Little's law). What it admits is not there for those (a key
    requested twice in a row misses twice while the first is still computing)."""
    return max(0.0, rate * costs.at("model", rate).p50_ms / 1000)


def simulate_candidates(trace: Trace, costs: TierCosts, key_count: int, l1_policies: Sequence[str] = L1_POLICIES,
                        min_budget_bytes: int = REDIS_MIN_BUDGET_BYTES, *, in_flight: float = 0.0) -> list[Candidate]:
    """Every candidate with its simulated tier shares (the slow part: one replay each), unpriced;
    ``in_flight``: requests in flight at once at the rate priced (:func:`in_flight`)."""
    key_count = max(key_count, trace.n_unique)
    return (hybrid_candidates(trace, costs, l1_policies, min_budget_bytes, in_flight=in_flight)
            + full_table_candidates(trace, key_count, l1_policies, in_flight=in_flight) + reference_candidates(key_count))


def rank(candidates: Sequence[Candidate], costs: TierCosts, *, slo_p99_ms: float, qps: float, key_count: int,
         model_name: str = "traffic-light", prices: Prices = Prices()) -> Recommendation:
    """Price copies of simulated ``candidates`` at ``qps`` and choose the cheapest meeting the SLO."""
    priced = [copy.deepcopy(c) for c in candidates]
    for candidate in priced:
        _estimate(candidate, costs, qps, key_count, prices, slo_p99_ms)
    priced.sort(key=lambda c: (c.monthly_usd, c.p99_ms))
    chosen = next((c for c in priced if c.meets_slo), None)
    return Recommendation(slo_p99_ms, qps, key_count, model_name, priced, chosen, costs)


def hybrid_candidates(trace: Trace, costs: TierCosts, l1_policies: Sequence[str] = L1_POLICIES,
                      min_budget_bytes: int = REDIS_MIN_BUDGET_BYTES, *, in_flight: float = 0.0) -> list[Candidate]:
    """The sized hybrid grid, each replayed on ``trace``."""
    counts = np.bincount(trace.ids, minlength=len(trace.keys))
    out = []
    for template in _hybrid_grid(trace, costs, l1_policies, min_budget_bytes):
        result = simulate_server_policy(trace, template.policy(), in_flight=in_flight)
        template.l1_hit_ratio, template.l2_hit_ratio, template.miss_ratio = (
            result.l1_hit_ratio, result.l2_hit_ratio, result.miss_ratio)
        if template.redis_budget_bytes is None:
            template.redis_entries = _unbounded_entries(counts, template)
        out.append(template)
    return out


def _hybrid_grid(trace: Trace, costs: TierCosts, l1_policies: Sequence[str], min_budget_bytes: int) -> list[Candidate]:
    l1_sizes = sorted({0, *cache_sizes(trace.n_unique, [f for f in L1_FRACTIONS if f > 0])})
    heads = sorted({0, *cache_sizes(trace.n_unique, [f for f in HEAD_FRACTIONS if f > 0])})
    ttls = REDIS_TTLS_S if trace.times is not None else (0,)
    redis_options: list[tuple[int | None, int, str]] = [(None, 0, "allkeys-lru")]
    entries_of = {max(int(min_budget_bytes // costs.bytes_per_entry), int(fraction * trace.n_unique), 1)
                  for fraction in REDIS_BUDGET_FRACTIONS if fraction is not None}
    for entries in sorted(e for e in entries_of if e < trace.n_unique):  # a budget for every key is unbounded
        budget = int(entries * costs.bytes_per_entry)
        redis_options += [(budget, entries, eviction) for eviction in REDIS_EVICTIONS]
    grid = []
    for budget, entries, eviction in redis_options:
        for l1 in l1_sizes:
            for policy in (l1_policies if l1 else ("lru",)):
                for admission in ADMISSIONS:
                    for head in heads:
                        for ttl in ttls:
                            if budget is not None and head > entries:
                                continue  # the head alone would overflow the budget
                            grid.append(Candidate("hybrid", head, l1, admission, 0.0, 0.0, 0.0, entries,
                                                  l1_policy=policy, redis_budget_bytes=budget,
                                                  redis_eviction=eviction, redis_ttl_s=ttl))
    return grid


def _unbounded_entries(counts: np.ndarray, candidate: Candidate) -> int:
    """Keys an unbounded Redis ends up holding: every key requested often enough to be admitted
    (``after:N`` admits on the N-th miss), or the head if larger. No TTL expiry counted: an upper bound."""
    need = AdmissionRule.parse(candidate.admission).min_requests
    return max(int(np.count_nonzero(counts >= need)), candidate.head_size)


def full_table_candidates(trace: Trace, key_count: int, l1_policies: Sequence[str] = L1_POLICIES, *,
                          in_flight: float = 0.0) -> list[Candidate]:
    """L1 in front of the full static table: every L1 miss is a Redis hit. L1 holds the same keys as
    in a hybrid whose Redis answers everything (admission ``always``: a Redis hit refills L1 as a
    model answer would), so its hit ratio is that replay's."""
    out = []
    for l1 in cache_sizes(trace.n_unique, [f for f in L1_FRACTIONS if f > 0]):
        for policy in l1_policies:
            result = simulate_server_policy(trace, ServerPolicy.hybrid(l1_capacity=l1, l1_policy=policy), in_flight=in_flight)
            out.append(Candidate("hybrid", key_count, l1, "always", result.l1_hit_ratio, 1.0 - result.l1_hit_ratio, 0.0,
                                 key_count, l1_policy=policy, full_table=True))
    return out


def reference_candidates(key_count: int) -> list[Candidate]:
    """Static (the whole key space precomputed, every request a Redis hit) and dynamic (every request a miss)."""
    return [Candidate("static", key_count, 0, "always", 0.0, 1.0, 0.0, key_count),
            Candidate("dynamic", 0, 0, "always", 0.0, 0.0, 1.0, 0)]


def estimate_p99(shares: dict[str, float], p99_ms: dict[str, float]) -> float:
    """p99 rule: walk the tiers from slowest to fastest (by their p99 at the load of the whole mix)
    adding up their share of requests; the first tier where the running share exceeds 1% sets the
    p99, at that tier's own p99. So with a miss ratio above 1% the p99 is the model's p99; below
    it, the Redis tier's if Redis and model together serve over 1%; else L1's. Conservative: a
    tier serving just over 1% is charged its own p99, not a lower quantile of it."""
    tail = 0.0
    ordered = sorted((t for t in shares if shares[t] > 0), key=lambda tier: p99_ms[tier], reverse=True)
    for tier in ordered:
        tail += shares[tier]
        if tail > P99_TAIL_SHARE:
            return p99_ms[tier]
    return p99_ms[ordered[-1]] if ordered else 0.0


def _estimate(candidate: Candidate, costs: TierCosts, qps: float, key_count: int, prices: Prices, slo: float) -> None:
    shares = {"l1": candidate.l1_hit_ratio, "redis": candidate.l2_hit_ratio, "model": candidate.miss_ratio}
    candidate.cpu_s_per_request = costs.cpu_per_request(shares, qps, misses_pass_store=candidate.mode == "hybrid")
    # Each tier's p99 at the load of the whole mix: its requests queue behind every tier's.
    at = {tier: costs.at(tier, share * qps, load=qps * candidate.cpu_s_per_request) for tier, share in shares.items()}
    candidate.p99_ms = estimate_p99(shares, {t: e.p99_ms for t, e in at.items()})
    candidate.extrapolated = [t for t in TIER_NAMES if shares[t] > 0 and at[t].extrapolated]
    candidate.meets_slo = candidate.p99_ms <= slo
    redis_bytes = candidate.redis_entries * costs.bytes_per_entry
    if candidate.redis_budget_bytes is not None:
        redis_bytes = float(candidate.redis_budget_bytes)  # Redis fills its budget, then evicts
    candidate.memory_bytes = redis_bytes + candidate.l1_size * costs.l1_bytes_per_entry
    usage = RunUsage(
        mode=candidate.mode, predictions=_PRICING_PREDICTIONS, duration_s=_PRICING_PREDICTIONS / qps,
        server_cpu_s=candidate.cpu_s_per_request * _PRICING_PREDICTIONS, redis_cpu_s=0.0,  # included per tier
        cache_bytes=candidate.memory_bytes, key_count=key_count,
        precompute_cpu_s=candidate.head_size * costs.precompute_cpu_s_per_key,
    )
    monthly = monthly_cost(usage, Scenario(qps=qps, key_count=key_count), prices)
    candidate.monthly = {"serving_cpu": monthly.serving_cpu, "cache_memory": monthly.cache_memory,
                         "precompute": monthly.precompute, "total": monthly.total}


def format_table(rec: Recommendation, limit: int = 12) -> str:
    """The cheapest ``limit`` candidates as a text table, the chosen one marked with ``*``."""
    lines = [f"{'':1} {'configuration':62} {'hit':>6} {'p99 ms':>8} {'MB':>8} {'USD/month':>10} {'SLO':>4}"]
    shown: Sequence[Candidate] = rec.candidates[:limit]
    if rec.chosen is not None and rec.chosen not in shown:
        shown = [*shown, rec.chosen]
    for c in shown:
        mark = "*" if c is rec.chosen else ""
        lines.append(f"{mark:1} {c.label:62} {c.hit_ratio:6.1%} {c.p99_ms:8.2f} {c.memory_bytes / 1e6:8.2f} "
                     f"{c.monthly_usd:10.2f} {'ok' if c.meets_slo else 'no':>4}")
    return "\n".join(lines)
