"""Cost model: dollars per million predictions and per month, from what a load test measured.

Three parts, each priced from a measured quantity (the formulas, as the report prints them, come
from :func:`cost_formulas`):

- serving CPU: API server + Redis CPU seconds per prediction, priced per vCPU-hour;
- cache memory: bytes the mode holds, priced per GB-hour for as long as serving a million
  predictions takes at the scenario's rate;
- precompute: one batch rebuild's CPU seconds, priced per batch vCPU-hour and spread over the
  predictions served until the next rebuild.

Projection to another key space scales memory (for modes that hold per-key data) and
precompute by the key-space ratio; CPU per prediction and the hit ratio are taken as measured,
so measure with the traffic shape you want to project. Everything here is a pure function of
frozen dataclasses, and ``dataclasses.asdict`` of any result is JSON-serialisable.

Example::

    usage = RunUsage(mode="static", predictions=600_000, duration_s=60.0, server_cpu_s=42.0,
                     redis_cpu_s=9.0, cache_bytes=8e6, key_count=33_600, precompute_cpu_s=30.0)
    scenario = Scenario(qps=2_000, key_count=1_680_000)
    estimate(usage, scenario).monthly.total      # USD per month at 2,000 predictions/s
    print(cost_formulas())
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0
# An average month: 365 days * 24 hours / 12, the convention cloud price lists use.
HOURS_PER_MONTH = 730.0
# Decimal gigabytes, as managed caches bill them.
BYTES_PER_GB = 1e9
MILLION = 1e6
# Precomputed tables are rebuilt once a day unless a scenario says otherwise.
DEFAULT_REFRESH_PERIOD_S = 86_400.0

MODES = ("static", "dynamic", "hybrid")
# Modes whose cache memory grows with the key space: static holds every key, hybrid holds the
# head plus admitted keys (a fixed share of a same-shaped distribution). Dynamic holds none.
PER_KEY_MODES = frozenset({"static", "hybrid"})


@dataclass(frozen=True)
class Prices:
    """Unit prices in US dollars (on-demand list prices of a large cloud region, 2024, rounded)."""

    serving_vcpu_hour: float = 0.05
    """Serving vCPU-hour: a general-purpose on-demand VM (4 vCPU, 16 GB at about $0.20/hour)."""
    batch_vcpu_hour: float = 0.02
    """Batch precompute vCPU-hour: spot or batch capacity, typically 60% under on-demand."""
    cache_gb_hour: float = 0.02
    """Cache memory GB-hour: a memory-optimised managed Redis node (~13 GB at ~$0.22/hour, 75% fill)."""

    def __post_init__(self) -> None:
        _require_non_negative(**vars(self))


@dataclass(frozen=True)
class RunUsage:
    """What one load-test run of one serving mode used, over a measuring window of ``duration_s``."""

    mode: str
    """Serving mode: ``static``, ``dynamic`` or ``hybrid``."""
    predictions: int
    """Predictions served in the window (a batch request of B keys counts B)."""
    duration_s: float
    """Length of the window in seconds; ``predictions / duration_s`` is the measured rate."""
    server_cpu_s: float
    """CPU seconds (user + system) the API server processes used in the window."""
    redis_cpu_s: float
    """CPU seconds Redis used in the window (0 when the mode does not touch Redis)."""
    cache_bytes: float
    """Memory held for this mode's predictions at the end of the run (Redis table or L2, plus L1)."""
    key_count: int
    """Size of the key space the run served (segments x 168)."""
    precompute_cpu_s: float = 0.0
    """CPU seconds of one batch precompute of the predictions this mode stores (0: none)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        _require_positive(predictions=self.predictions, duration_s=self.duration_s, key_count=self.key_count)
        _require_non_negative(
            server_cpu_s=self.server_cpu_s,
            redis_cpu_s=self.redis_cpu_s,
            cache_bytes=self.cache_bytes,
            precompute_cpu_s=self.precompute_cpu_s,
        )

    @property
    def rate(self) -> float:
        """Measured predictions per second."""
        return self.predictions / self.duration_s


@dataclass(frozen=True)
class Scenario:
    """The traffic to price: a prediction rate, a key space and how often tables are rebuilt."""

    qps: float
    """Predictions per second (a batch request of B keys counts B)."""
    key_count: int
    """Size of the key space to serve."""
    refresh_period_s: float = DEFAULT_REFRESH_PERIOD_S
    """Seconds between batch rebuilds of precomputed predictions; precompute is spread over them."""

    def __post_init__(self) -> None:
        _require_positive(qps=self.qps, key_count=self.key_count, refresh_period_s=self.refresh_period_s)


@dataclass(frozen=True)
class CostBreakdown:
    """A cost in US dollars, by part; ``unit`` says per what."""

    serving_cpu: float
    cache_memory: float
    precompute: float
    total: float
    unit: str


@dataclass(frozen=True)
class CostEstimate:
    """One run priced at its own rate and key space, and at a target scenario."""

    mode: str
    prices: Prices
    measured: Scenario
    target: Scenario
    per_million_measured: CostBreakdown
    per_million_target: CostBreakdown
    monthly_target: CostBreakdown


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _require_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def measured_scenario(usage: RunUsage, refresh_period_s: float = DEFAULT_REFRESH_PERIOD_S) -> Scenario:
    """The run's own rate and key space, as a scenario."""
    return Scenario(qps=usage.rate, key_count=usage.key_count, refresh_period_s=refresh_period_s)


def _breakdown(serving_cpu: float, cache_memory: float, precompute: float, unit: str) -> CostBreakdown:
    return CostBreakdown(serving_cpu, cache_memory, precompute, serving_cpu + cache_memory + precompute, unit)


def projected_cache_bytes(usage: RunUsage, key_count: int) -> float:
    """Cache memory at ``key_count`` keys: scaled by the key-space ratio for per-key modes."""
    if usage.mode in PER_KEY_MODES:
        return usage.cache_bytes * key_count / usage.key_count
    return usage.cache_bytes


def cost_per_million(usage: RunUsage, scenario: Scenario, prices: Prices = Prices()) -> CostBreakdown:
    """US dollars per million predictions at the scenario's rate and key space (see module doc)."""
    cpu_s_per_prediction = (usage.server_cpu_s + usage.redis_cpu_s) / usage.predictions
    serving = cpu_s_per_prediction * MILLION / SECONDS_PER_HOUR * prices.serving_vcpu_hour
    hours_per_million = MILLION / scenario.qps / SECONDS_PER_HOUR
    cache_gb = projected_cache_bytes(usage, scenario.key_count) / BYTES_PER_GB
    memory = cache_gb * hours_per_million * prices.cache_gb_hour
    # A rebuild computes every stored key, so its work grows with the key space.
    rebuild_cpu_s = usage.precompute_cpu_s * scenario.key_count / usage.key_count
    predictions_per_rebuild = scenario.qps * scenario.refresh_period_s
    precompute = rebuild_cpu_s / SECONDS_PER_HOUR * prices.batch_vcpu_hour * MILLION / predictions_per_rebuild
    return _breakdown(serving, memory, precompute, "USD per million predictions")


def monthly_cost(usage: RunUsage, scenario: Scenario, prices: Prices = Prices()) -> CostBreakdown:
    """US dollars per month of serving ``scenario.qps`` predictions per second, around the clock."""
    millions_per_month = scenario.qps * HOURS_PER_MONTH * SECONDS_PER_HOUR / MILLION
    per_million = cost_per_million(usage, scenario, prices)
    return _breakdown(
        per_million.serving_cpu * millions_per_month,
        per_million.cache_memory * millions_per_month,
        per_million.precompute * millions_per_month,
        "USD per month",
    )


def estimate(usage: RunUsage, target: Scenario, prices: Prices = Prices()) -> CostEstimate:
    """Price a run at its measured rate and key space and at ``target``.

    The measured scenario uses ``target.refresh_period_s`` so the two differ only in rate and
    key space.

    Example::

        est = estimate(usage, Scenario(qps=500, key_count=336_000))
        dataclasses.asdict(est)     # JSON-ready, for results.json
    """
    measured = measured_scenario(usage, target.refresh_period_s)
    return CostEstimate(
        mode=usage.mode,
        prices=prices,
        measured=measured,
        target=target,
        per_million_measured=cost_per_million(usage, measured, prices),
        per_million_target=cost_per_million(usage, target, prices),
        monthly_target=monthly_cost(usage, target, prices),
    )


def cost_formulas(prices: Prices = Prices()) -> str:
    """The cost formulas as plain text, with the unit prices in use, for the report."""
    return f"""\
Cost per million predictions (USD), at rate Q predictions/s and a key space of K keys:
  serving CPU  = (server CPU s + Redis CPU s) / predictions x 1e6 / 3600 x ${prices.serving_vcpu_hour}/vCPU-hour
  cache memory = cache GB x (1e6 / Q / 3600 hours) x ${prices.cache_gb_hour}/GB-hour
                 where cache GB = measured bytes / 1e9, x K / K_run for modes that store per-key data
                 ({', '.join(sorted(PER_KEY_MODES))}); 1 GB = 1e9 bytes
  precompute   = rebuild CPU s x K / K_run / 3600 x ${prices.batch_vcpu_hour}/vCPU-hour
                 x 1e6 / (Q x refresh period s)   (one rebuild per refresh period, default {DEFAULT_REFRESH_PERIOD_S:g} s)
  total        = serving CPU + cache memory + precompute
Cost per month (USD) = cost per million x Q x {HOURS_PER_MONTH:g} hours x 3600 / 1e6
Assumptions: CPU per prediction and hit ratio as measured (no idle headroom: divide the vCPU price
by a target utilisation to include it); all cache memory, L1 included, priced as managed cache."""
