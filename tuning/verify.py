"""Check a recommendation on a live server: replay the trace, compare measured and simulated hit ratios.

The first ``limit`` requests of the trace are mapped to model keys (``loadtests.keys.map_trace``:
distinct trace keys -> distinct model keys, seeded) and replayed against a real hybrid server
(embedded Redis, uvicorn subprocess) configured like the candidate. The head is the one the
simulation chooses (the most requested keys of the first half), precomputed before the server
starts. The first half warms the caches, as in :func:`simulate_server_policy`; the hit ratio is
measured over the second half from ``/v1/cache/stats`` counter deltas.

Requests are sequential single-key GETs, in trace order. A POST batch would not count the same:
the server answers a batch's duplicate keys from one lookup, and looks up all of a batch's keys in
L1 before it fills L1 with any of them, so neither hits nor LRU order would match a replay of one
request at a time.

Example::

    result = verify(trace, rec.best_hybrid(), Settings(model_name="traffic-light"), limit=20_000)
    result.measured_hit_ratio, result.simulated_hit_ratio, result.within_tolerance
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from loadtests.keys import map_trace
from models.keyspace import KeySpace
from serving.model import LoadedModel
from serving.settings import Settings
from tuning.live import LiveServer
from tuning.recommend import Candidate
from tuning.simulate import DEFAULT_TRAIN_FRACTION, ServerPolicy, simulate_server_policy, top_keys
from tuning.traces import Trace

DEFAULT_VERIFY_REQUESTS = 20_000
TOLERANCE_PP = 2.0


@dataclass(frozen=True)
class VerifyResult:
    """Measured (live server) against simulated hit ratios over the same evaluated requests."""

    requests: int
    evaluated: int
    measured_hit_ratio: float
    simulated_hit_ratio: float
    measured_l1_hit_ratio: float
    simulated_l1_hit_ratio: float
    seconds: float

    @property
    def difference_pp(self) -> float:
        """|measured - simulated| total hit ratio, in percentage points."""
        return abs(self.measured_hit_ratio - self.simulated_hit_ratio) * 100

    @property
    def within_tolerance(self) -> bool:
        """Whether the simulation predicted the live hit ratio within :data:`TOLERANCE_PP`."""
        return self.difference_pp <= TOLERANCE_PP

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self) | {"difference_pp": self.difference_pp, "within_tolerance": self.within_tolerance}


def model_key_trace(trace: Trace, space: KeySpace, limit: int, seed: int = 0) -> Trace:
    """The first ``limit`` requests of ``trace`` as keys of the model's key space (mapped)."""
    sample = [trace.keys[i] for i in trace.ids[:limit].tolist()]
    return Trace.from_keys(space.key(i) for i in map_trace(sample, space.count, seed).tolist())


def verify(
    trace: Trace, candidate: Candidate, settings: Settings, *, limit: int = DEFAULT_VERIFY_REQUESTS, seed: int = 0
) -> VerifyResult:
    """Replay up to ``limit`` requests on a live server running ``candidate``; compare with simulation."""
    if candidate.mode != "hybrid":
        raise ValueError(f"verify replays hybrid configurations; got {candidate.mode}")
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    replay = model_key_trace(trace, model.key_space, limit, seed)
    policy = ServerPolicy.hybrid(head_size=candidate.head_size, l1_capacity=candidate.l1_size, admission=candidate.admission)
    simulated = simulate_server_policy(replay, policy, train_fraction=DEFAULT_TRAIN_FRACTION)
    train, test = replay.split(DEFAULT_TRAIN_FRACTION)
    head = [replay.keys[i] for i in top_keys(train, candidate.head_size).tolist()]
    started = time.perf_counter()
    with LiveServer(_live_settings(settings, candidate), head_keys=head) as live:
        _send(live, train)
        before = live.stats()["counts"]
        _send(live, test)
        after = live.stats()["counts"]
    l1, redis, model_rows = (after[k] - before[k] for k in ("l1_hits", "redis_hits", "model_rows"))
    served = l1 + redis + model_rows
    return VerifyResult(
        requests=len(replay), evaluated=served,
        measured_hit_ratio=(l1 + redis) / served, simulated_hit_ratio=1.0 - simulated.miss_ratio,
        measured_l1_hit_ratio=l1 / served, simulated_l1_hit_ratio=simulated.l1_hit_ratio,
        seconds=time.perf_counter() - started,
    )


def _live_settings(settings: Settings, candidate: Candidate) -> Settings:
    # No TTLs: the simulation replays without timestamps, so nothing may expire live either.
    return settings.model_copy(update={
        "mode": "hybrid", "l1_size": candidate.l1_size, "admission": candidate.admission,
        "head_size": candidate.head_size, "l1_ttl_s": 0.0, "redis_ttl_s": 0, "trace_path": None,
    })


def _send(live: LiveServer, part: Trace) -> None:
    for key_id in part.ids.tolist():
        live.predict(part.keys[key_id])
