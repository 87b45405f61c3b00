"""Projection of a user's target (key space, request rate) from measured per-unit figures: API
cores, Redis memory and nodes, precompute time and cost per refresh, for each mode.

Inputs are what the comparison and the capacity ladder measured on this machine (one record per
mode: Redis bytes held and key count, Redis CPU per request, precompute seconds and CPU for the
keys it wrote; capacity per server core at the SLO). Every output is a formula of those, printed
with the figures by :func:`projection_formulas`; nothing is fitted or guessed beyond the stated
node size and utilisation ceilings.

Example::

    rows = project(records, curves, Target(qps=1e5, keys=1e8), cost.Prices())
    print(projection_formulas())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadtests import cost
from loadtests.capacity import CapacityCurve

# A Redis node: memory usable for data (a ~13 GB managed node filled to 75%, as cost.Prices
# assumes), and the share of its one command thread it may use before latency suffers.
REDIS_NODE_BYTES = 10e9
REDIS_NODE_CPU_CEILING = 0.7
# Replicas per master in the projected cluster (one: a failover without data loss of the node).
REDIS_REPLICAS = 1
# API cores when no capacity ladder ran: CPU per request at this utilisation ceiling.
API_UTILISATION_CEILING = 0.7


@dataclass(frozen=True)
class Target:
    """The user's scale: requests per second and keys in the key space."""

    qps: float = 1e5
    keys: int = 100_000_000


@dataclass(frozen=True)
class Projection:
    """What one mode needs at the target."""

    profile: str
    mode: str
    api_cores: int
    api_cores_from: str
    redis_bytes: float
    redis_masters: int
    redis_nodes: int
    precompute_keys: int
    precompute_hours_one_process: float
    precompute_cpu_hours: float
    precompute_cost_per_refresh: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _api_cores(record: dict[str, Any], curve: CapacityCurve | None, target: Target) -> tuple[int, str]:
    if curve is not None and curve.capacity_per_core > 0:
        return math.ceil(target.qps / curve.capacity_per_core), f"capacity {curve.capacity_per_core:.0f} req/s per core"
    busy = target.qps * record["server_cpu_us_per_request"] / 1e6
    return math.ceil(busy / API_UTILISATION_CEILING), f"CPU {record['server_cpu_us_per_request']:.0f} µs/req at 70%"


def _precomputed_keys(record: dict[str, Any], target: Target) -> int:
    """Keys a refresh writes at the target: all of them (static), the head scaled with the key
    space (hybrid), none (dynamic)."""
    if record["mode"] == "static":
        return target.keys
    if record["mode"] == "hybrid":
        return math.ceil(record["head_size"] * target.keys / record["key_count"])
    return 0


def project_one(record: dict[str, Any], curve: CapacityCurve | None, target: Target, prices: cost.Prices) -> Projection:
    """The projection of one mode from its comparison record (and capacity curve, if measured)."""
    api_cores, api_from = _api_cores(record, curve, target)
    scale = target.keys / record["key_count"]
    redis_bytes = record["redis_bytes"] * scale if record["mode"] in cost.PER_KEY_MODES else 0.0
    redis_cpu = target.qps * record["redis_cpu_us_per_request"] / 1e6
    masters = max(math.ceil(redis_bytes / REDIS_NODE_BYTES), math.ceil(redis_cpu / REDIS_NODE_CPU_CEILING)) if redis_bytes else 0
    keys = _precomputed_keys(record, target)
    written = _precomputed_keys(record, Target(target.qps, record["key_count"])) or 1
    per_key_s = record["precompute_s"] / written
    per_key_cpu = record["precompute_cpu_s"] / written
    cpu_hours = keys * per_key_cpu / cost.SECONDS_PER_HOUR
    return Projection(record["profile"], record["mode"], api_cores, api_from, redis_bytes, masters,
                      masters * (1 + REDIS_REPLICAS), keys, keys * per_key_s / cost.SECONDS_PER_HOUR, cpu_hours,
                      cpu_hours * prices.batch_vcpu_hour)


def project(records: Sequence[dict[str, Any]], curves: Sequence[CapacityCurve], target: Target, prices: cost.Prices) -> list[Projection]:
    """One projection per (profile, mode) measured on the base distribution (not the uniform runs)."""
    by_run = {(c.profile, c.mode): c for c in curves}
    base = [r for r in records if r["distribution"] == records[0]["distribution"]] if records else []
    return [project_one(r, by_run.get((r["profile"], r["mode"])), target, prices) for r in base]


def projection_formulas() -> str:
    """The formulas behind every projected figure."""
    return (f"api_cores      = ceil(target_qps / capacity_rps_per_core)    (no ladder: ceil(target_qps x cpu_us / 1e6 / {API_UTILISATION_CEILING}))\n"
            "redis_bytes    = measured_redis_bytes x target_keys / measured_keys    (static, hybrid; dynamic: 0)\n"
            f"redis_masters  = max(ceil(redis_bytes / {REDIS_NODE_BYTES:.0e} B), ceil(target_qps x redis_cpu_us / 1e6 / {REDIS_NODE_CPU_CEILING}))\n"
            f"redis_nodes    = redis_masters x (1 + {REDIS_REPLICAS} replica)\n"
            "precompute_keys = target_keys (static) | head_size x target_keys / measured_keys (hybrid) | 0 (dynamic)\n"
            "precompute_hours (one process) = precompute_keys x measured_precompute_s / measured_precomputed_keys / 3600\n"
            "precompute_cpu_hours = precompute_keys x measured_precompute_cpu_s / measured_precomputed_keys / 3600\n"
            "cost_per_refresh = precompute_cpu_hours x batch_vcpu_hour")
