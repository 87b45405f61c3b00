"""What each tier costs, derived from load-test runs: the one cost model of the comparison and the tuner.

Every figure comes from :func:`loadtests.runner.run_one` records (``results.json``), measured under
concurrent load at a fixed offered rate, the way the comparison measures modes:

- **redis** (a Redis hit): static runs, where every request is one;
- **model** (a model call, batched as the run's rate batches it): dynamic runs;
- **l1** (an L1 hit): hybrid runs, whose CPU is the sum over tiers of share x cost (a miss there
  also pays a Redis lookup and write: see :meth:`TierCosts.cpu_per_request`): with the Redis and
  model costs known at the rates those tiers served in the run, what is left over is L1's (hybrid
  runs where L1 answered at least :data:`MIN_L1_SHARE` of the requests).

Each tier is a curve over the rate it serves (requests a second that tier answers): CPU per
request falls and p99 grows with it (batching, queueing). :meth:`TierCosts.at` interpolates in
log rate between measured points and holds the end values outside them, saying so (``extrapolated``).
An L1 hit's p99 is not separable in a client-side measurement of a mixed run; it is bounded by the
Redis tier's (an L1 hit is the same request path without the Redis round trip).

Example::

    records = json.loads(Path("out/results.json").read_text())["runs"]
    costs = tier_costs(records, "traffic-heavy")
    costs.at("model", rate=120.0).cpu_s, costs.at("model", rate=120.0).p99_ms
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from models.registry import model_name as profile_model_name
from serving.cache import measure_l1_bytes_per_entry

TIERS: tuple[str, ...] = ("l1", "redis", "model")
# The mode whose runs measure a tier on its own (L1 has none: it is derived from hybrid runs).
MODE_OF_TIER: dict[str, str] = {"redis": "static", "model": "dynamic"}
# A hybrid run whose L1 answered fewer requests than this says too little about an L1 hit's cost.
MIN_L1_SHARE = 0.2
# An L1 hit never costs less than this share of a Redis hit: the HTTP request around it is most
# of either (a floor for the leftover of a noisy decomposition, not a measurement).
MIN_L1_COST_SHARE_OF_REDIS = 0.3

Record = dict[str, Any]


@dataclass(frozen=True)
class TierPoint:
    """One tier measured in one run: at ``rate`` requests/s served by that tier."""

    rate: float
    cpu_s: float
    """Server + Redis CPU seconds per request the tier served."""
    p50_ms: float
    p99_ms: float
    """Client-side p99 of the run, HTTP included: what an SLO is about."""
    requests: int
    """Requests the figures are over."""
    p99_low_ms: float | None = None
    """95% confidence interval of ``p99_ms`` from the run's histogram (``None``: not recorded)."""
    p99_high_ms: float | None = None
    run: str = ""
    """The run it comes from (profile/mode/distribution at the offered rate)."""
    saturated: bool = False
    """The run could not offer its rate: the point is still measured, at the rate achieved."""


@dataclass(frozen=True)
class TierEstimate:
    """A tier's cost at one rate, interpolated from its curve."""

    tier: str
    rate: float
    cpu_s: float
    p99_ms: float
    extrapolated: bool
    """The rate lies outside the measured points: the nearest end's figures are used."""


@dataclass
class TierCosts:
    """Per-tier curves, memory per stored entry and precompute CPU per key, for one model."""

    model: str
    curves: dict[str, list[TierPoint]]
    bytes_per_entry: float
    """Redis bytes per stored prediction (``MEMORY USAGE`` of a static table / its keys)."""
    l1_bytes_per_entry: float
    """L1 bytes per entry (tracemalloc, :func:`serving.cache.measure_l1_bytes_per_entry`)."""
    precompute_cpu_s_per_key: float
    source: str = "load test"
    notes: list[str] = field(default_factory=list)

    def at(self, tier: str, rate: float) -> TierEstimate:
        """The tier's CPU per request and p99 when it serves ``rate`` requests/s."""
        points = self.curves[tier]
        if tier == "l1":
            # L1's p99 is bounded by Redis' at the same rate (see the module doc).
            redis = self.at("redis", rate)
            cpu = _interpolate([(p.rate, p.cpu_s) for p in points], rate)
            return TierEstimate(tier, rate, cpu, redis.p99_ms, redis.extrapolated or _outside(points, rate))
        cpu = _interpolate([(p.rate, p.cpu_s) for p in points], rate)
        p99 = _interpolate([(p.rate, p.p99_ms) for p in points], rate)
        return TierEstimate(tier, rate, cpu, p99, _outside(points, rate))

    def cpu_per_request(self, shares: dict[str, float], rate: float, *, misses_pass_store: bool) -> float:
        """CPU seconds per request of a mix of tiers (``shares``: tier -> fraction) at ``rate``
        requests/s, each tier priced at the rate it serves. With ``misses_pass_store`` (hybrid) a
        miss also pays the Redis lookup and write a dynamic run's model call never made: a Redis
        hit's cost less an L1 hit's (the HTTP request around both)."""
        at = {tier: self.at(tier, share * rate).cpu_s for tier, share in shares.items() if share > 0}
        total = sum(shares[tier] * cpu for tier, cpu in at.items())
        if misses_pass_store and shares.get("model", 0.0) > 0:
            redis, l1 = self.at("redis", shares["redis"] * rate).cpu_s, self.at("l1", shares["l1"] * rate).cpu_s
            total += shares["model"] * max(0.0, redis - l1)
        return total

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``tiers`` of tuning.json): every point with its request count."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TierCosts:
        """The inverse of :meth:`as_dict` (tier costs read back from a tuning.json)."""
        curves = {tier: [TierPoint(**point) for point in points] for tier, points in data["curves"].items()}
        return cls(**{**data, "curves": curves})


def tier_costs(records: Sequence[Record], model: str) -> TierCosts:
    """Tier curves of ``model`` from load-test records (``results.json``'s ``runs``).

    ``ValueError`` naming what is missing when the records hold no static or no dynamic run of the
    model, or no hybrid run where L1 answered at least :data:`MIN_L1_SHARE` of the requests.
    """
    mine = [r for r in records if _model_of(r) == model and not r.get("failures")]
    curves: dict[str, list[TierPoint]] = {}
    for tier, mode in MODE_OF_TIER.items():
        runs = [r for r in mine if r["mode"] == mode]
        if not runs:
            raise ValueError(f"no {mode} run of {model} among the load-test records: it measures the {tier} tier")
        curves[tier] = sorted((_point(r, 1.0) for r in runs), key=lambda p: p.rate)
    static = max((r for r in mine if r["mode"] == "static"), key=lambda r: r["requests"])
    costs = TierCosts(
        model=model, curves=curves,
        # Records from before redis_keys was kept: a static table holds the whole key space.
        bytes_per_entry=static["redis_bytes"] / max(1, static.get("redis_keys") or static["key_count"]),
        l1_bytes_per_entry=_l1_bytes_per_entry(mine),
        precompute_cpu_s_per_key=static["precompute_cpu_s"] / static["key_count"],
    )
    costs.curves["l1"] = _l1_points(costs, [r for r in mine if r["mode"] == "hybrid"])
    return costs


def _model_of(record: Record) -> str:
    # Records from before model_name was recorded: a demo profile, or a registered model's own name.
    profile = str(record["profile"])
    return str(record.get("model_name") or (profile_model_name(profile) if profile in ("light", "heavy") else profile))


def _served(record: Record) -> int:
    counts = record["tier_counts"]
    return max(1, counts["l1_hits"] + counts["redis_hits"] + counts["model_rows"])


def _cpu_per_request(record: Record) -> float:
    """Server + Redis CPU seconds per prediction served (a batch of B keys counts B)."""
    per_http_request = (record["server_cpu_us_per_request"] + record["redis_cpu_us_per_request"]) / 1e6
    return per_http_request * record["tier_counts"]["requests"] / _served(record)


def _label(record: Record) -> str:
    return f"{record['profile']}/{record['mode']}/{record['distribution']} at {record['offered_rps']:g}/s"


def _point(record: Record, share: float, cpu_s: float | None = None) -> TierPoint:
    latency = record["latency_ms"]
    return TierPoint(
        rate=record["achieved_rps"] * record.get("batch_size", 1) * share,
        cpu_s=_cpu_per_request(record) if cpu_s is None else cpu_s,
        p50_ms=latency["p50"], p99_ms=latency["p99"], requests=int(record["requests"]),
        p99_low_ms=latency.get("p99_low"), p99_high_ms=latency.get("p99_high"),
        run=_label(record), saturated=bool(record.get("load_generator_saturated")),
    )


def _l1_points(costs: TierCosts, hybrids: Iterable[Record]) -> list[TierPoint]:
    """An L1 hit's CPU ``c1``: what each hybrid run's CPU leaves over once its Redis hits and its
    misses are priced as :meth:`TierCosts.cpu_per_request` prices them (a miss: the model call plus
    a Redis hit's cost less ``c1``), so ``cpu = l1 c1 + r cr + m (cm + cr - c1)``, solved for ``c1``."""
    points = []
    for record in hybrids:
        shares = record["hit_ratio"]
        l1, redis = shares["l1"], shares["redis"]
        model = 1 - l1 - redis
        if l1 < MIN_L1_SHARE or l1 - model < MIN_L1_SHARE / 2:
            continue  # too few L1 hits against misses to tell an L1 hit's cost apart
        rate = record["achieved_rps"] * record.get("batch_size", 1)
        redis_cost = costs.at("redis", redis * rate).cpu_s
        rest = redis * redis_cost + model * (costs.at("model", model * rate).cpu_s + redis_cost)
        leftover = (_cpu_per_request(record) - rest) / (l1 - model)
        floor = MIN_L1_COST_SHARE_OF_REDIS * redis_cost
        if leftover < floor:
            costs.notes.append(f"{_label(record)}: L1 hit CPU {leftover * 1e6:.0f} us left over after Redis and "
                               f"model shares, raised to {floor * 1e6:.0f} us ({MIN_L1_COST_SHARE_OF_REDIS:.0%} of a Redis hit)")
        points.append(_point(record, l1, max(leftover, floor)))
    if not points:
        raise ValueError(f"no hybrid run of {costs.model} where L1 answered at least {MIN_L1_SHARE:.0%} of "
                         "the requests among the load-test records: it measures the l1 tier")
    return sorted(points, key=lambda p: p.rate)


def _l1_bytes_per_entry(records: Sequence[Record]) -> float:
    measured = [r["l1_bytes"] / r["l1_entries"] for r in records if r.get("l1_bytes") and r.get("l1_entries")]
    if measured:
        return sum(measured) / len(measured)
    # Records written before L1 memory was recorded: measure it here, on keys of the demo's shape.
    return measure_l1_bytes_per_entry([f"{segment}:{hour}" for segment in range(60) for hour in range(168)])


def _outside(points: Sequence[TierPoint], rate: float) -> bool:
    return not points[0].rate <= rate <= points[-1].rate


def _interpolate(curve: Sequence[tuple[float, float]], rate: float) -> float:
    """Linear in log rate between the two points around ``rate``; the end value outside them."""
    if rate <= curve[0][0] or len(curve) == 1:
        return curve[0][1]
    if rate >= curve[-1][0]:
        return curve[-1][1]
    for (r0, v0), (r1, v1) in zip(curve, curve[1:]):
        if r0 <= rate <= r1:
            if r1 == r0:
                return v1
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return v0 + t * (v1 - v0)
    return curve[-1][1]
