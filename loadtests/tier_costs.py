"""What each tier costs, derived from load-test runs: the one cost model of the comparison and the tuner.

Every figure comes from :func:`loadtests.runner.run_one` records (``results.json``), measured under
concurrent load at a fixed offered rate, the way the comparison measures modes:

- **redis** (a Redis hit): static runs, where every request is one;
- **model** (a model call, batched as the run's rate batches it): dynamic runs;
- **a hybrid miss's store round trips** (its Redis lookup and the write of the computed value, on top
  of the model call): hybrid runs where nearly every request is a miss (:data:`ALL_MISS_SHARE`);
- **l1** (an L1 hit): hybrid runs, whose CPU is the sum over tiers of share x cost: with the Redis
  and model costs known at the rates those tiers served in the run, what is left over is L1's
  (hybrid runs where L1 answered at least :data:`MIN_L1_SHARE` of the requests).

Tier costs are marginal: what the server and Redis burn with no traffic (timers, the control poll,
Redis' cron: a few milliseconds a second, recorded by each run) is a cost per second,
:attr:`TierCosts.idle_cpu_s_per_s`, taken out of each run's CPU per request and added back per
request at the rate priced (at 20 requests/s it is a third of a Redis hit's cost; at 300, a tenth).

An L1 hit is a curve over the **model's share** of the requests beside it, not over its rate (it
is never batched): model calls in the same process evict the fast path's code and data from the CPU
caches, and where a run has them, L1's cost is what its CPU leaves over after them, so it carries
their pricing error too. Calibration measures both ends: hot-set runs where L1 answers nearly
everything (model share ~0) and a Zipf run where a third of the requests go on to the model; a mix in
between is interpolated linearly in model share. L1 in front of a full static table (every L1 miss a
Redis hit, no model call) is priced by the hot-set runs, measured directly: the Zipf run's
leftover priced it 23% below them for light and 6% above for heavy (tuning benchmark, 2026-12-02),
and the light candidate verified 29% above the prediction. Where one model share was measured at
several rates (the hot-set runs), the server's total rate picks between them: under Poisson
arrivals a request pays more of the server's wake-ups when requests come seldom (light: 533 us an
L1 hit at 75/s, 257 at 300/s).

Every run's CPU is read at one **core speed** (:func:`at_speed`): this VM's cores run the same work
at anything from 0.6 to 1.1 of their fastest, minute to minute, and each run records how fast its
server and Redis cores ran (:mod:`loadtests.harness.core_speed`). :func:`tier_costs` levels every
run to the runs' median probe reading (or a reference given: the comparison is read at the
calibration's), and keeps it as :attr:`TierCosts.speed_reference`, so that a later run (a
verification) is compared at the same speed. Records from before the probe are read as measured.

Each tier is a curve over the rate it serves (requests a second that tier answers): CPU per
request falls with it (batching), and p99 grows with how busy the server is (queueing).
:meth:`TierCosts.at` prices CPU at the rate the tier serves, interpolated in log rate, and reads
p99 at the **load** of the whole mix (server + Redis CPU seconds per second, ``rate x CPU``): a
request of one tier waits behind the requests of every tier, so its p99 is the tier's measured p99
at the point of its curve where the tier alone kept the server as busy. Outside the measured points
the end values hold, said so (``extrapolated``). An L1 hit's p99 is measured by runs where L1
answers nearly everything (:data:`CLEAN_L1_SHARE`, calibration's hot-set runs); without one it is
bounded by the Redis tier's (an L1 hit is the same request path without the Redis round trip).

Example::

    records = json.loads(Path("out/results.json").read_text())["runs"]
    costs = tier_costs(records, "traffic-heavy")
    costs.at("model", rate=120.0).cpu_s, costs.at("model", rate=120.0).p99_ms
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
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
# A hybrid run whose L1 answered at least this share measures an L1 hit's p99 itself.
CLEAN_L1_SHARE = 0.9
# A hybrid run whose model answered at least this share measures a miss's store round trips (its
# few hits are priced and taken out).
ALL_MISS_SHARE = 0.75
# The cores a run's probe reads (loadtests.harness.core_speed): the server's, and Redis' (shared with
# the load generator).
CORES: tuple[str, ...] = ("server", "redis")

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
    p99_of_tier: bool = True
    """``p99_ms`` is this tier's own (False: a mixed run's, which says nothing of L1's alone)."""
    share: float = 1.0
    """The share of the run's requests this tier answered."""
    model_share: float = 0.0
    """The share of the run's requests the model answered (an L1 hit's cost follows it)."""

    @property
    def load(self) -> float:
        """Server + Redis CPU seconds per second the tier kept busy in its run (queueing grows with it)."""
        return self.rate * self.cpu_s


@dataclass(frozen=True)
class TierEstimate:
    """A tier's cost at one rate, interpolated from its curve."""

    tier: str
    rate: float
    cpu_s: float
    p99_ms: float
    extrapolated: bool
    """The rate lies outside the measured points: the nearest end's figures are used."""
    p50_ms: float = 0.0
    """The tier's median latency at the same load (how long a request is in flight)."""


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
    miss_store_cpu_s: float = 0.0
    """What a hybrid miss pays on top of the model call: its Redis lookup and the write of the value."""
    idle_cpu_s_per_s: float = 0.0
    """Server + Redis CPU seconds a second with no traffic (the runs' median)."""
    source: str = "load test"
    notes: list[str] = field(default_factory=list)
    speed_reference: dict[str, float] = field(default_factory=dict)
    """The core speed every CPU figure is at: the median probe unit time (µs) of the runs, per
    core (``server``, ``redis``); empty where the runs recorded none (see :func:`at_speed`)."""

    def at(self, tier: str, rate: float, load: float | None = None, share: float = 1.0,
           model_share: float = 0.0) -> TierEstimate:
        """The tier's CPU per request when it serves ``rate`` requests/s (L1: when it answers
        ``share`` of the requests and the model ``model_share``), and its p99 when the server's load
        (CPU seconds per second, every tier together) is ``load`` (default: the tier alone at ``rate``)."""
        points = self.curves[tier]
        if tier == "l1":
            cpu = _interpolate(_by_model_share(points, rate / share if share > 0 else rate), model_share, log=False)
        else:
            cpu = _interpolate([(p.rate, p.cpu_s) for p in points], rate)
        load = rate * cpu if load is None else load
        p99, p50, outside = self._latency(tier, load)
        measured, value = ([p.model_share for p in points], model_share) if tier == "l1" else ([p.rate for p in points], rate)
        return TierEstimate(tier, rate, cpu, p99, outside or _outside(sorted(measured), value), p50)

    def _latency(self, tier: str, load: float) -> tuple[float, float, bool]:
        """The tier's p99 and p50 at server ``load``, and whether that lies outside its measured loads."""
        own = sorted((p for p in self.curves[tier] if p.p99_of_tier), key=lambda p: p.load)
        if not own:  # L1 from mixed runs only: bounded by Redis' (see the module doc)
            return self._latency("redis", load)
        return (_interpolate([(p.load, p.p99_ms) for p in own], load), _interpolate([(p.load, p.p50_ms) for p in own], load),
                _outside([p.load for p in own], load))

    def cpu_per_request(self, shares: dict[str, float], rate: float, *, misses_pass_store: bool) -> float:
        """CPU seconds per request of a mix of tiers (``shares``: tier -> fraction) at ``rate``
        requests/s, each tier priced at the rate it serves (L1 beside the model's share). With
        ``misses_pass_store`` (hybrid) a miss also pays the Redis lookup and write a dynamic run's
        model call never made (:attr:`miss_store_cpu_s`). The idle CPU is spread over the requests."""
        total = self.idle_cpu_s_per_s / rate if rate > 0 else 0.0
        model = shares.get("model", 0.0)
        total += sum(share * self.at(tier, share * rate, share=share, model_share=model).cpu_s
                     for tier, share in shares.items() if share > 0)
        if misses_pass_store:
            total += model * self.miss_store_cpu_s
        return total

    def scaled(self, factors: dict[str, float]) -> TierCosts:
        """These costs with each tier's CPU curve multiplied by its factor (tier -> factor, 1 where
        absent; a miss's store round trips, two Redis round trips, by Redis'): the calibration
        re-levelled to what :func:`anchor_factors` measured, the curves' shapes (batching, share) kept."""
        curves = {tier: [replace(p, cpu_s=p.cpu_s * factors.get(tier, 1.0)) for p in points] for tier, points in self.curves.items()}
        shown = ", ".join(f"{tier} x{factor:.2f}" for tier, factor in sorted(factors.items()))
        return replace(self, curves=curves, miss_store_cpu_s=self.miss_store_cpu_s * factors.get("redis", 1.0),
                       notes=[*self.notes, f"re-levelled by anchor runs: {shown}"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``tiers`` of tuning.json): every point with its request count."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TierCosts:
        """The inverse of :meth:`as_dict` (tier costs read back from a tuning.json)."""
        curves = {tier: [TierPoint(**point) for point in points] for tier, points in data["curves"].items()}
        return cls(**{**data, "curves": curves})


def speed_reference(records: Sequence[Record]) -> dict[str, float]:
    """The median probe unit time (µs) per core over ``records`` that recorded one; empty if none did."""
    reference = {}
    for core in CORES:
        units = sorted(r["core_speed"][core]["unit_us"] for r in records if r.get("core_speed", {}).get(core))
        if units:
            reference[core] = units[len(units) // 2]
    return reference


def at_speed(record: Record, reference: dict[str, float]) -> Record:
    """``record`` with its CPU figures at the ``reference`` core speed: the server's CPU (and its
    idle CPU) times the reference unit time over the unit time its core's probe read during the
    run, Redis' likewise (:mod:`loadtests.harness.core_speed`: this VM's cores run the same work in
    anything from 0.6 to 1.1 of their fastest time, minute to minute). A record or a reference
    without a reading for a core keeps that core's figures as measured."""
    speed = record.get("core_speed") or {}
    factor = {core: reference[core] / speed[core]["unit_us"] for core in CORES
              if core in reference and speed.get(core, {}).get("unit_us")}
    if not factor:
        return record
    idle = record.get("idle_cpu_ms_per_s") or {}
    return {**record,
            "server_cpu_us_per_request": record["server_cpu_us_per_request"] * factor.get("server", 1.0),
            "redis_cpu_us_per_request": record["redis_cpu_us_per_request"] * factor.get("redis", 1.0),
            "idle_cpu_ms_per_s": {core: ms * factor.get(core, 1.0) for core, ms in idle.items()}}


def cpu_us_at_speed(record: Record, reference: dict[str, float]) -> float:
    """Server + Redis CPU µs per HTTP request of ``record`` at the ``reference`` core speed."""
    levelled = at_speed(record, reference)
    return float(levelled["server_cpu_us_per_request"] + levelled["redis_cpu_us_per_request"])


def tier_costs(records: Sequence[Record], model: str, reference: dict[str, float] | None = None) -> TierCosts:
    """Tier curves of ``model`` from load-test records (``results.json``'s ``runs``), every run's
    CPU at one core speed: ``reference`` (:attr:`TierCosts.speed_reference`), by default the
    median of the runs' own probe readings (:func:`speed_reference`).

    ``ValueError`` naming what is missing when the records hold no static or no dynamic run of the
    model, or no hybrid run where L1 answered at least :data:`MIN_L1_SHARE` of the requests.
    """
    mine = [r for r in records if _model_of(r) == model and not r.get("failures")]
    reference = speed_reference(mine) if reference is None else reference
    mine = [at_speed(r, reference) for r in mine]
    idle = sorted(_idle_s_per_s(r) for r in mine if r.get("idle_cpu_ms_per_s"))
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
        speed_reference=dict(reference),
    )
    costs.idle_cpu_s_per_s = idle[len(idle) // 2] if idle else 0.0
    hybrids = [r for r in mine if r["mode"] == "hybrid"]
    costs.miss_store_cpu_s = _miss_store_cpu_s(costs, hybrids)
    costs.curves["l1"] = _l1_points(costs, hybrids)
    return costs


def anchor_factors(costs: TierCosts, records: Sequence[Record]) -> dict[str, float]:
    """How much each tier costs now against ``costs``' curves: for each run that measures one tier
    (static: a Redis hit; dynamic: a model call; a hybrid run where L1 answered at least
    :data:`CLEAN_L1_SHARE`: an L1 hit), the run's CPU per request over the curve's at the run's rate
    (L1: at its share and its model share). This VM's speed drifts by a fifth or more over minutes, so a prediction is
    priced by a calibration re-levelled (:meth:`TierCosts.scaled`) by runs made beside the run it
    predicts. Runs of other models or with failures are skipped; a tier without a run is absent."""
    mine = [at_speed(r, costs.speed_reference) for r in records if _model_of(r) == costs.model and not r.get("failures")]
    factors: dict[str, float] = {}
    for tier, mode in MODE_OF_TIER.items():
        for record in (r for r in mine if r["mode"] == mode):
            point = _point(record, 1.0)
            factors[tier] = point.cpu_s / costs.at(tier, point.rate).cpu_s
    levelled = costs.scaled(factors)  # an L1 run's few Redis hits and misses at today's prices
    for record in (r for r in mine if r["mode"] == "hybrid"):
        l1, redis, model, rate = _shares(record)
        if l1 >= CLEAN_L1_SHARE:
            rest = (redis * levelled.at("redis", redis * rate).cpu_s
                    + model * (levelled.at("model", model * rate).cpu_s + levelled.miss_store_cpu_s))
            factors["l1"] = (_cpu_per_request(record) - rest) / l1 / costs.at("l1", l1 * rate, share=l1, model_share=model).cpu_s
    return factors


def _model_of(record: Record) -> str:
    # Records from before model_name was recorded: a demo profile, or a registered model's own name.
    profile = str(record["profile"])
    return str(record.get("model_name") or (profile_model_name(profile) if profile in ("light", "heavy") else profile))


def _served(record: Record) -> int:
    counts = record["tier_counts"]
    return max(1, counts["l1_hits"] + counts["redis_hits"] + counts["model_rows"])


def requests_per_prediction(record: Record) -> float:
    """The run's HTTP requests per prediction served (a batch of B keys serves B): a figure per
    request times this is the figure per prediction."""
    return record["tier_counts"]["requests"] / _served(record)


def _idle_s_per_s(record: Record) -> float:
    """The run's server + Redis CPU seconds a second with no traffic (0 in records from before it was kept)."""
    idle = record.get("idle_cpu_ms_per_s") or {}
    return (idle.get("server", 0.0) + idle.get("redis", 0.0)) / 1e3


def _cpu_per_request(record: Record) -> float:
    """Server + Redis CPU seconds per prediction served (a batch of B keys counts B), less the idle
    CPU the run's rate spreads over each (marginal: see the module doc)."""
    per_http_request = (record["server_cpu_us_per_request"] + record["redis_cpu_us_per_request"]) / 1e6
    idle = _idle_s_per_s(record) / (record["achieved_rps"] * record.get("batch_size", 1))
    return per_http_request * requests_per_prediction(record) - idle


def _label(record: Record) -> str:
    return f"{record['profile']}/{record['mode']}/{record['distribution']} at {record['offered_rps']:g}/s"


def _point(record: Record, share: float, cpu_s: float | None = None) -> TierPoint:
    latency = record["latency_ms"]
    return TierPoint(
        rate=record["achieved_rps"] * record.get("batch_size", 1) * share,
        cpu_s=_cpu_per_request(record) if cpu_s is None else cpu_s,
        p50_ms=latency["p50"], p99_ms=latency["p99"], requests=int(record["requests"]),
        p99_low_ms=latency.get("p99_low"), p99_high_ms=latency.get("p99_high"),
        run=_label(record), saturated=bool(record.get("load_generator_saturated")), share=share,
    )


def _shares(record: Record) -> tuple[float, float, float, float]:
    """A hybrid run's L1, Redis and model shares, and its predictions a second."""
    l1, redis = record["hit_ratio"]["l1"], record["hit_ratio"]["redis"]
    return l1, redis, max(0.0, 1 - l1 - redis), record["achieved_rps"] * record.get("batch_size", 1)


def _miss_store_cpu_s(costs: TierCosts, hybrids: Iterable[Record]) -> float:
    """A miss's store round trips: what hybrid runs of (nearly) only misses cost per miss beyond
    the model call at the same rate (and their few hits). Without such a run, a Redis hit's cost
    stands in (a lookup and a write are two Redis round trips, a Redis hit one plus the HTTP
    request around it), and the notes say so."""
    extras = []
    for record in hybrids:
        l1, redis, model, rate = _shares(record)
        if model >= ALL_MISS_SHARE:
            hits = l1 * costs.at("redis", l1 * rate).cpu_s + redis * costs.at("redis", redis * rate).cpu_s
            extras.append((_cpu_per_request(record) - hits) / model - costs.at("model", model * rate).cpu_s)
    if extras:
        return max(0.0, sum(extras) / len(extras))
    static = costs.curves["redis"][-1]
    costs.notes.append(f"no hybrid run of only misses: a miss's Redis lookup and write priced as a Redis hit "
                       f"({static.cpu_s * 1e6:.0f} us), not measured")
    return static.cpu_s


def _l1_points(costs: TierCosts, hybrids: Iterable[Record]) -> list[TierPoint]:
    """An L1 hit's CPU ``c1``: what each hybrid run's CPU leaves over once its Redis hits and its
    misses are priced as :meth:`TierCosts.cpu_per_request` prices them (a miss: the model call plus
    its store round trips ``cs``), so ``cpu = l1 c1 + r cr + m (cm + cs)``, solved for ``c1``."""
    points = []
    for record in hybrids:
        l1, redis, model, rate = _shares(record)
        if l1 < MIN_L1_SHARE:
            continue  # too few L1 hits to tell an L1 hit's cost apart
        redis_cost = costs.at("redis", redis * rate).cpu_s
        rest = redis * redis_cost + model * (costs.at("model", model * rate).cpu_s + costs.miss_store_cpu_s)
        leftover = (_cpu_per_request(record) - rest) / l1
        floor = MIN_L1_COST_SHARE_OF_REDIS * redis_cost
        if leftover < floor:
            costs.notes.append(f"{_label(record)}: L1 hit CPU {leftover * 1e6:.0f} us left over after Redis and "
                               f"model shares, raised to {floor * 1e6:.0f} us ({MIN_L1_COST_SHARE_OF_REDIS:.0%} of a Redis hit)")
        point = _point(record, l1, max(leftover, floor))
        points.append(replace(point, p99_of_tier=l1 >= CLEAN_L1_SHARE, model_share=model))
    if not points:
        raise ValueError(f"no hybrid run of {costs.model} where L1 answered at least {MIN_L1_SHARE:.0%} of "
                         "the requests among the load-test records: it measures the l1 tier")
    return sorted(points, key=lambda p: (p.model_share, p.share))


def _l1_bytes_per_entry(records: Sequence[Record]) -> float:
    measured = [r["l1_bytes"] / r["l1_entries"] for r in records if r.get("l1_bytes") and r.get("l1_entries")]
    if measured:
        return sum(measured) / len(measured)
    # Records written before L1 memory was recorded: measure it here, on keys of the demo's shape.
    return measure_l1_bytes_per_entry([f"{segment}:{hour}" for segment in range(60) for hour in range(168)])


def _outside(measured: Sequence[float], value: float) -> bool:
    """Whether ``value`` lies outside the measured values (sorted)."""
    return not measured[0] <= value <= measured[-1]


def _by_model_share(points: Sequence[TierPoint], total_rate: float) -> list[tuple[float, float]]:
    """L1's CPU curve over the model's share beside it, for a server taking ``total_rate``
    requests/s: runs at the same model share (to 0.01) at several rates are interpolated in log total
    rate. An L1 hit is never batched, but under Poisson arrivals a request's share of the server's
    wake-ups follows how often requests come: the light hot-set run cost 533 us an L1 hit at 75/s
    and 257 at 300/s."""
    groups: dict[float, list[TierPoint]] = {}
    for point in points:
        groups.setdefault(round(point.model_share, 2), []).append(point)
    return [(model_share, _interpolate(sorted((p.rate / max(p.share, 1e-9), p.cpu_s) for p in group), total_rate))
            for model_share, group in sorted(groups.items())]


def _interpolate(curve: Sequence[tuple[float, float]], x: float, log: bool = True) -> float:
    """Linear in log ``x`` (a rate or a load; ``log=False``: in ``x``, a share) between the two
    points around ``x``; the end value outside them."""
    if x <= curve[0][0] or len(curve) == 1:
        return curve[0][1]
    if x >= curve[-1][0]:
        return curve[-1][1]
    scale = math.log if log else float
    for (x0, v0), (x1, v1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return v1
            return v0 + (scale(x) - scale(x0)) / (scale(x1) - scale(x0)) * (v1 - v0)
    return curve[-1][1]
