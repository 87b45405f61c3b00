"""What each cache tier costs on this machine: server CPU, latency and memory, measured live.

One hybrid server answers three phases of sequential GETs, each served entirely by one tier:

- L1 hits: one head key over and over (its first request fills L1 from Redis);
- Redis hits: a cycle over ``CYCLE_KEYS`` head keys through an L1 of ``CALIBRATION_L1_SIZE``
  entries, so LRU always has evicted the key again before it comes back;
- model misses: a cycle over keys outside the head, with admission ``after:N`` for an ``N`` no
  phase reaches, so nothing is ever cached.

Per phase: server-process CPU (per-thread schedstat, ns resolution) and Redis CPU per request, and the p50/p99 of the
client-measured request latency (HTTP included: that is what a user's SLO is about). Memory per
cached entry is the ``used_memory`` delta of precomputing the head, divided by its keys.

Example::

    costs = calibrate(Settings(model_name="traffic-heavy"), requests=300)
    costs.tiers["model"].p99_ms, costs.bytes_per_entry
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from serving.model import LoadedModel
from serving.settings import Settings
from tuning.live import LiveServer

TIERS: tuple[str, ...] = ("l1", "redis", "model")
CALIBRATION_REQUESTS = 400
CYCLE_KEYS = 64
CALIBRATION_L1_SIZE = 8
# Far beyond any phase's request count, so a missed key is never admitted during calibration.
NEVER_ADMIT = f"after:{10**9}"
# An L1 entry is a key string and a float in an OrderedDict: ~200 bytes in CPython (estimate, not
# measured live: the server's heap is not observable per entry from outside).
L1_BYTES_PER_ENTRY = 200.0


@dataclass(frozen=True)
class TierCost:
    """One tier's cost per request: server + Redis CPU seconds, latency percentiles in ms."""

    cpu_s: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class TierCosts:
    """Costs of the three tiers, memory per Redis entry and precompute CPU per key."""

    tiers: dict[str, TierCost]
    bytes_per_entry: float
    precompute_cpu_s_per_key: float
    l1_bytes_per_entry: float = L1_BYTES_PER_ENTRY
    source: str = "calibrated"


def calibrate(settings: Settings, requests: int = CALIBRATION_REQUESTS) -> TierCosts:
    """Measure per-tier costs against a live hybrid server of ``settings``' model."""
    keys = _calibration_keys(settings)
    head, tail = keys[:CYCLE_KEYS], keys[CYCLE_KEYS : 2 * CYCLE_KEYS]
    live_settings = settings.model_copy(update={
        "mode": "hybrid", "l1_size": CALIBRATION_L1_SIZE, "admission": NEVER_ADMIT, "trace_path": None,
    })
    with LiveServer(live_settings, head_keys=head) as live:
        live.predict(head[0])  # fills L1 for the L1 phase
        tiers = {
            "l1": _phase(live, itertools.repeat(head[0]), requests, "l1"),
            "redis": _phase(live, itertools.cycle(head[1:]), requests, "redis"),  # head[0] is in L1
            "model": _phase(live, itertools.cycle(tail), requests, "model"),
        }
        return TierCosts(tiers, live.bytes_per_entry, live.precompute_cpu_s_per_key)


def _calibration_keys(settings: Settings) -> list[str]:
    """``2 * CYCLE_KEYS`` distinct keys of the served model (features index order)."""
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    if model.features.key_count < 2 * CYCLE_KEYS:
        raise ValueError(f"calibration needs {2 * CYCLE_KEYS} keys; the model has {model.features.key_count}")
    return [model.key_space.key(i) for i in range(2 * CYCLE_KEYS)]


def _phase(live: LiveServer, keys: itertools.repeat[str] | itertools.cycle[str], requests: int, tier: str) -> TierCost:
    """Send ``requests`` sequential GETs, checking every answer came from ``tier``."""
    latencies = np.empty(requests)
    cpu0, redis0 = live.server_cpu_s(), live.redis_cpu_s()
    for i, key in zip(range(requests), keys):
        start = time.perf_counter()
        source = live.predict(key)["source"]
        latencies[i] = time.perf_counter() - start
        if source != tier:
            raise RuntimeError(f"calibration of tier {tier!r}: {key} was served from {source!r}")
    cpu = (live.server_cpu_s() - cpu0) + (live.redis_cpu_s() - redis0)
    p50, p99 = np.percentile(latencies * 1000, [50, 99])
    return TierCost(cpu_s=cpu / requests, p50_ms=float(p50), p99_ms=float(p99))
