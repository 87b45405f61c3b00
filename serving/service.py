"""PredictionService: the three serving modes behind one ``predict(keys)``.

Each mode is a list of tiers tried in order, so there is one code path, not three:

- static:  Redis (the complete precomputed table of the version the static pointer names)
- dynamic: model
- hybrid:  L1 -> Redis -> model, computed values admitted per the admission rule

A request's keys are validated first (malformed -> 422, outside the key space -> 404), duplicates are
looked up once, Redis is asked once per request (GET or MGET) and the model once per request (through
the dynamic batcher). The served model version, its feature table and its L1 travel together in one
:class:`ServedState`; a reload swaps that object in one assignment, so a request sees one version
from start to end and no response mixes versions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.cache import Admission, AdmissionRule, L1Cache
from models.registry import RegistryError
from serving.errors import NotReady, StoreUnavailable, UnknownKey, UnknownVersion
from serving.features import validate_key
from serving.metrics import Metrics
from serving.model import Batcher, LoadedModel
from serving.settings import Settings
from serving.store import RedisStore, decode, encode, prediction_key, static_pointer_key
from serving.trace_recorder import TraceRecorder

# The static server re-reads the table pointer this often, so a finished precompute of a new
# version is picked up without a restart (and without a round trip per request).
STATIC_POINTER_REFRESH_S = 1.0
MAX_KEYS_IN_DETAIL = 5
_SOURCE_RANK = {"l1": 0, "redis": 1, "model": 2}
# How long a batcher replaced by a reload keeps answering the requests that started on it; far
# longer than a request takes (they are bounded by max_wait_ms plus one batched model call).
RETIRED_BATCHER_GRACE_S = 10.0


def _recorder_for(settings: Settings) -> TraceRecorder | None:
    """The access-trace recorder ``settings`` asks for (``trace_path``), or ``None``."""
    if settings.trace_path is None:
        return None
    return TraceRecorder(settings.trace_path, sample_rate=settings.trace_sample_rate, max_bytes=settings.trace_max_bytes)


@dataclass(frozen=True)
class Prediction:
    """One answer: the key, the value, which tier produced it and the model version."""

    key: str
    prediction: float
    source: str
    model_version: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "prediction": self.prediction, "source": self.source, "model_version": self.model_version}


@dataclass(frozen=True)
class ServedState:
    """What one request is served from: a version, its model (None in static) and its L1."""

    version: str
    model: LoadedModel | None
    batcher: Batcher | None
    l1: L1Cache


class PredictionService:
    """The serving logic, free of HTTP. Build with :meth:`create`, then ``await predict(keys)``."""

    def __init__(self, settings: Settings, store: RedisStore | None) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.store = store
        self.metrics = Metrics(settings.mode, self.gauges)
        self.counts = self.metrics.counts
        self.admission = Admission(settings.admission_rule)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self._state: ServedState | None = None
        self._pointer_checked = 0.0
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._recorder = _recorder_for(settings)

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (dynamic, hybrid) or find the static table; called in the app lifespan."""
        if self.mode == "static":
            await self._refresh_static_pointer(force=True)
        else:
            await self.load_model(self.settings.model_version)

    async def close(self) -> None:
        """Release the batcher, Redis connections and the inference thread."""
        for task in list(self._retiring):
            task.cancel()  # _retire closes its batcher on the way out
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._state and self._state.batcher:
            await self._state.batcher.close()
        if self.store:
            await self.store.close()
        if self._recorder is not None:
            self._recorder.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def load_model(self, version: str) -> str:
        """Load a registry version and make it the served one; returns the version loaded."""
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            try:
                model = await loop.run_in_executor(
                    None, LoadedModel.from_registry, self.settings.registry, self.settings.model_name, version
                )
            except RegistryError as exc:
                raise UnknownVersion(str(exc)) from exc
            old = self._state
            l1_size = old.l1.capacity if old else self.settings.l1_size
            l1_ttl = old.l1.ttl_s if old else self.settings.l1_ttl_s
            self._state = ServedState(model.version, model, self._batcher_for(model), L1Cache(l1_size if self.mode == "hybrid" else 0, l1_ttl))
            self.admission.reset()
            if old and old.batcher:
                # Requests that took the old state before the swap are still waiting on its batcher:
                # closing it now would cancel them (a 500 mid-request), so it retires after a grace.
                task = asyncio.get_running_loop().create_task(self._retire(old.batcher))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return model.version

    async def _retire(self, batcher: Batcher) -> None:
        """Close a replaced batcher once the requests that were using it have had time to finish."""
        try:
            await asyncio.sleep(RETIRED_BATCHER_GRACE_S)
        finally:
            await batcher.close()

    def _batcher_for(self, model: LoadedModel) -> Batcher:
        # Batching pays for a model that runs in the worker thread: one call serves many waiting
        # requests. A model cheap enough to run inline is called directly: waiting for company
        # would add latency, and the future and wake-up per request cost more than they save.
        offload = model.single_row_us > self.settings.offload_above_us
        return Batcher(
            model.run,
            max_batch=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000,
            executor=self._executor if offload else None,
            enabled=self.settings.batching and offload,
            observe=self.metrics.observe_batch,
        )

    async def _refresh_static_pointer(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._pointer_checked < STATIC_POINTER_REFRESH_S:
            return
        assert self.store is not None
        self._pointer_checked = now
        try:
            version = await self.store.get_text(static_pointer_key(self.settings.redis_namespace, self.settings.model_name))
        except StoreUnavailable:
            if force:
                return  # not ready yet; requests answer 503 until Redis answers
            raise
        if version and (self._state is None or self._state.version != version):
            self._state = ServedState(version, None, None, L1Cache(0))

    # ----- prediction ------------------------------------------------------------------------

    @property
    def state(self) -> ServedState:
        """The served state; :class:`NotReady` before there is one."""
        if self._state is None:
            if self.mode == "static":
                raise NotReady(
                    f"no complete precomputed table for model {self.settings.model_name!r} in Redis; "
                    "run `hybridserve precompute` first"
                )
            raise NotReady("model not loaded")
        return self._state

    async def predict(self, keys: Sequence[str]) -> list[Prediction]:
        """Predictions for ``keys`` in request order (duplicates answered from one lookup)."""
        start = time.perf_counter()
        try:
            if self.mode == "static":
                await self._refresh_static_pointer()
            state = self.state
            found = await self._resolve(state, keys)
        except Exception:
            self.counts.errors += 1
            raise
        self.counts.keys += len(keys)
        if self._recorder is not None:
            # Every requested key, duplicates included: the trace is the traffic, not the lookups.
            for key in keys:
                self._recorder.record(key)
        source = max((found[k][1] for k in keys), key=_SOURCE_RANK.__getitem__)
        self.metrics.observe_request(source, time.perf_counter() - start)
        return [Prediction(k, found[k][0], found[k][1], state.version) for k in keys]

    def _validated(self, state: ServedState, keys: Sequence[str]) -> dict[str, int]:
        """Unique keys mapped to feature rows (-1 in static, which has no feature table)."""
        if state.model is None:
            return {validate_key(k): -1 for k in keys}
        table = state.model.features
        return {k: table.index(k) for k in keys}

    async def _resolve(self, state: ServedState, keys: Sequence[str]) -> dict[str, tuple[float, str]]:
        found: dict[str, tuple[float, str]] = {}
        todo = list(dict.fromkeys(keys))  # unique, in request order
        if self.mode == "hybrid":
            # L1 holds only keys validated on their way in, so its hits skip validation.
            todo = self._from_l1(state, todo, found)
            if not todo:
                return found
        wanted = self._validated(state, todo)
        if self.mode != "dynamic":
            todo = await self._from_redis(state, todo, found)
        if todo:
            await self._from_model(state, todo, wanted, found)
        return found

    def _from_l1(self, state: ServedState, keys: list[str], found: dict[str, tuple[float, str]]) -> list[str]:
        missing = []
        for key in keys:
            value = state.l1.get(key)
            if value is None:
                missing.append(key)
            else:
                found[key] = (value, "l1")
        self.counts.l1_hits += len(keys) - len(missing)
        self.counts.l1_misses += len(missing)
        return missing

    def _redis_keys(self, state: ServedState, keys: Sequence[str]) -> list[str]:
        ns, name = self.settings.redis_namespace, self.settings.model_name
        return [prediction_key(ns, name, state.version, k) for k in keys]

    async def _from_redis(self, state: ServedState, keys: list[str], found: dict[str, tuple[float, str]]) -> list[str]:
        assert self.store is not None
        try:
            raw = await self.store.get_many(self._redis_keys(state, keys))
        except StoreUnavailable:
            if self.mode == "static":
                raise
            self.counts.redis_fallbacks += 1  # hybrid fails open: the model answers
            return keys
        missing = []
        for key, value in zip(keys, raw):
            prediction = decode(value)
            if prediction is None:
                missing.append(key)
                continue
            found[key] = (prediction, "redis")
            state.l1.put(key, prediction)
        self.counts.redis_hits += len(keys) - len(missing)
        self.counts.redis_misses += len(missing)
        if missing and self.mode == "static":
            shown = ", ".join(repr(k) for k in missing[:MAX_KEYS_IN_DETAIL])
            raise UnknownKey(
                f"no precomputed prediction for {shown} in model {self.settings.model_name!r} "
                f"version {state.version} (static mode serves only precomputed keys)"
            )
        return missing

    async def _from_model(
        self, state: ServedState, keys: list[str], wanted: dict[str, int], found: dict[str, tuple[float, str]]
    ) -> None:
        assert state.model is not None and state.batcher is not None
        rows = state.model.features.rows([wanted[k] for k in keys])
        values = await state.batcher.infer(rows)
        self.counts.model_rows += len(keys)
        for key, value in zip(keys, values.tolist()):
            found[key] = (value, "model")
        if self.mode == "hybrid":
            await self._admit(state, keys, values)

    async def _admit(self, state: ServedState, keys: list[str], values: np.ndarray) -> None:
        admitted = [(k, float(v)) for k, v in zip(keys, values.tolist()) if self.admission.admit(k)]
        self.counts.admitted += len(admitted)
        self.counts.not_admitted += len(keys) - len(admitted)
        if not admitted:
            return
        for key, value in admitted:
            state.l1.put(key, value)
        assert self.store is not None
        try:
            items = list(zip(self._redis_keys(state, [k for k, _ in admitted]), (encode(v) for _, v in admitted)))
            await self.store.set_many(items, self.settings.redis_ttl_s)
        except StoreUnavailable:
            self.counts.redis_fallbacks += 1

    # ----- operations ------------------------------------------------------------------------

    async def flush(self, l1: bool = True, redis: bool = False) -> dict[str, int]:
        """Empty L1 and/or this model's predictions in Redis (all versions)."""
        removed = {"l1": 0, "redis": 0}
        if l1 and self._state is not None:
            removed["l1"] = len(self._state.l1)
            self._state.l1.clear()
            self.admission.reset()
        if redis and self.store is not None:
            prefix = f"{self.settings.redis_namespace}:{self.settings.model_name}:"
            removed["redis"] = await self.store.delete_prefix(prefix)
        return removed

    def configure(
        self,
        l1_size: int | None = None,
        l1_ttl_s: float | None = None,
        redis_ttl_s: int | None = None,
        admission: str | None = None,
        head_size: int | None = None,
    ) -> dict[str, Any]:
        """Change the cache policy at run time; returns the policy now in force."""
        updates: dict[str, Any] = {}
        if admission is not None:
            self.admission = Admission(AdmissionRule.parse(admission))
            updates["admission"] = str(self.admission.rule)
        if redis_ttl_s is not None:
            updates["redis_ttl_s"] = redis_ttl_s
        if head_size is not None:
            updates["head_size"] = head_size
        if l1_size is not None:
            updates["l1_size"] = l1_size
        if l1_ttl_s is not None:
            updates["l1_ttl_s"] = l1_ttl_s
        if self._state is not None and self.mode == "hybrid":
            self._state.l1.reconfigure(l1_size, l1_ttl_s)
        # model_copy re-validates nothing; every value above was validated by the caller's schema.
        self.settings = self.settings.model_copy(update=updates)
        return self.policy()

    def policy(self) -> dict[str, Any]:
        """The cache policy in force."""
        l1 = self._state.l1 if self._state else None
        return {
            "l1_size": l1.capacity if l1 else self.settings.l1_size,
            "l1_ttl_s": l1.ttl_s if l1 else self.settings.l1_ttl_s,
            "redis_ttl_s": self.settings.redis_ttl_s,
            "admission": str(self.admission.rule),
            "head_size": self.settings.head_size,
        }

    def stats(self) -> dict[str, Any]:
        """Counters, tier hit ratios and the state of L1 and Redis (``/v1/cache/stats``)."""
        c = self.counts
        served = c.l1_hits + c.redis_hits + c.model_rows
        state = self._state
        return {
            "mode": self.mode,
            "model_name": self.settings.model_name,
            "model_version": state.version if state else None,
            "counts": c.as_dict(),
            "hit_ratio": {
                "l1": c.l1_hits / served if served else 0.0,
                "redis": c.redis_hits / served if served else 0.0,
                "total": (c.l1_hits + c.redis_hits) / served if served else 0.0,
            },
            "l1": {"size": len(state.l1) if state else 0, "capacity": state.l1.capacity if state else 0,
                   "evictions": state.l1.evictions if state else 0},
            "redis": {"errors": self.store.errors if self.store else 0,
                      "breaker": self.store.breaker.state if self.store else "none"},
            "policy": self.policy(),
        }

    def gauges(self) -> dict[str, float]:
        """Point-in-time values for Prometheus."""
        state = self._state
        breaker_open = 1.0 if self.store and self.store.breaker.state != "closed" else 0.0
        return {
            "l1_entries": float(len(state.l1)) if state else 0.0,
            "redis_errors": float(self.store.errors) if self.store else 0.0,
            "redis_breaker_open": breaker_open,
        }

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this server can answer, and why; hybrid is ready (degraded) without Redis."""
        redis_ok = await self.store.ping() if self.store else None
        if self.mode == "static" and redis_ok:
            await self._refresh_static_pointer(force=True)
        model_ok = self._state is not None
        ready = model_ok and (redis_ok is not False or self.mode == "hybrid")
        detail = {
            "mode": self.mode,
            "model_version": self._state.version if self._state else None,
            "redis": {True: "ok", False: "unreachable", None: "unused"}[redis_ok],
            "degraded": self.mode == "hybrid" and redis_ok is False,
            "breaker": self.store.breaker.state if self.store else "none",
        }
        return ready, detail
