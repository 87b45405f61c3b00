"""PredictionService: the serving modes behind one ``predict(keys)``.

A mode is an ordered list of tiers (:data:`serving.modes.MODE_TIERS`), walked by the one decision
core, :class:`serving.tiers.TierWalk`:

- static:  store (the complete precomputed table of the version the static pointer names)
- dynamic: model
- hybrid:  L1 -> store -> model, computed values admitted per the admission rule

This module is the composition root of a request: it builds the tiers of the configured mode once
per served version from :class:`Settings`, and nothing below it asks which mode it is in. What the
mode needs follows from its tiers: a model tier needs a registry version; a mode without one serves
the version the store's pointer names.

A request's keys are validated before the first tier that does not hold only validated keys (L1
does, so its hits skip parsing; malformed -> 422, outside the key space -> 404). Duplicates are
looked up once, each tier is asked once per request. The served version and its tiers travel
together in one :class:`ServedState`; a reload swaps that object in one assignment, so a request
sees one version from start to end and no response mixes versions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from models.registry import RegistryError, resolve
from serving.cache import Admission, L1Cache, make_l1
from serving.errors import HotSetOff, InvalidInstance, NotReady, NotStored, StoreError, TableUnavailable, UnknownVersion
from serving.head_refresh import HeadRefresher, WarmReport, warm
from serving.hot_set import HotSet
from serving.logs import log_event
from models.keyspace import KeySpace, check_key, key_space_for
from serving.features import served_lookup
from serving.instances import FeatureSchema, instance_key
from serving.metrics import Metrics
from serving.model import Batcher, LoadedModel
from serving.settings import Settings
from serving.store import PredictionStore
from serving.modes import MODE_TIERS
from serving.tiers import L1Tier, ModelTier, StoreTier, Tier, TierWalk
from serving.trace_recorder import TraceRecorder

# A server without a model tier re-reads the table pointer this often, so a finished precompute of
# a new version is picked up without a restart (and without a round trip per request).
STATIC_POINTER_REFRESH_S = 1.0
_SOURCE_RANK = {"l1": 0, "redis": 1, "model": 2}
_KEY_RULE_ONLY = served_lookup(check_key)  # type: ignore[arg-type]
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
    """What one request is served from: a version, its model (None without a model tier), its L1
    (None without an L1 tier) and the walk over its tiers."""

    version: str
    model: LoadedModel | None
    batcher: Batcher | None
    l1: L1Cache | None
    walk: TierWalk
    knows_keys: bool  # keys are checked against the version's key space (not the key rule alone)
    schema: FeatureSchema | None  # what a raw-feature instance must hold (None without a model)


class PredictionService:
    """The serving logic, free of HTTP: ``await start()``, then ``await predict(keys)``."""

    def __init__(self, settings: Settings, store: PredictionStore | None) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.tier_names = MODE_TIERS[settings.mode]
        if "store" in self.tier_names and store is None:
            raise ValueError(f"mode {settings.mode!r} needs a prediction store (a Redis URL)")
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
        self.hot = _hot_set_for(settings, self.tier_names)
        # Head refreshes and warm starts compute in a thread of their own: in the inference thread,
        # a request's model call would queue behind a whole chunk of them (p99 up during a warm start).
        self._warm_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm") if self.hot is not None else None
        self.refresher = (HeadRefresher(self.hot, store, settings.model_name, lambda: self._state, lambda: self.settings,
                                        self._warm_executor) if self.hot is not None and store is not None else None)

    @property
    def computes(self) -> bool:
        """Whether this mode runs the model (else it serves the table the store's pointer names)."""
        return "model" in self.tier_names

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model, or find the precomputed table; called in the app lifespan."""
        if self.computes:
            await self.load_model(self.settings.model_version)
            if self.refresher is not None and (self.settings.head_refresh_s or self.settings.head_refresh_threshold):
                self.refresher.start()
        else:
            await self._refresh_pointer(force=True, quiet=True)

    async def close(self) -> None:
        """Release the batcher, store connections and the inference thread."""
        if self.refresher is not None:
            await self.refresher.stop()
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
        if self._warm_executor is not None:
            self._warm_executor.shutdown(wait=False, cancel_futures=True)

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
            state = self._served_state(model.version, model)
            if old is not None and self.settings.warm_start:
                await self._warm_start(state)  # before the swap: the first requests find the hot keys
            self._state = state
            self.admission.reset()
            if old and old.batcher:
                # Requests that took the old state before the swap are still waiting on its batcher:
                # closing it now would cancel them (a 500 mid-request), so it retires after a grace.
                task = asyncio.get_running_loop().create_task(self._retire(old.batcher))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return model.version

    async def _warm_start(self, state: ServedState) -> WarmReport | None:
        """Compute the hot set's top ``warm_start_keys`` for a version about to be served (the
        traffic split's hook calls :func:`serving.head_refresh.warm` the same way). A store that
        fails leaves the version cold rather than failing the reload."""
        if self.hot is None or self.store is None:
            return None
        try:
            report = await warm(state, self.hot.top(self.settings.warm_start_keys), self.store, self.settings.model_name,
                                executor=self._warm_executor, ttl_s=self.settings.redis_ttl_s)
        except StoreError as exc:
            log_event("warm_start_failed", model_version=state.version, detail=exc.detail)
            return None
        log_event("warm_start", **report.as_dict())
        return report

    async def refresh_head(self) -> dict[str, object]:
        """Rewrite the head from the hot set now (``POST /v1/admin/refresh-head``): what was written
        and the refresher's status."""
        if self.refresher is None:
            raise HotSetOff("head refresh needs the hot set, tracked in hybrid mode with HYBRIDSERVE_HOT_SET=true "
                            "(or a head refresh or warm start setting)")
        report = await self.refresher.refresh("admin")
        return {"refresh": report.as_dict() if report else None, "status": self.refresher.status.as_dict()}

    async def reload(self, version: str) -> str:
        """Serve ``version`` (``latest``: the registry pointer); without a model tier, re-read the
        store's pointer to the complete table. Returns the version now served."""
        if self.computes:
            return await self.load_model(version)
        await self._refresh_pointer(force=True)
        return self.state.version

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

    def _served_state(self, version: str, model: LoadedModel | None) -> ServedState:
        """Build the configured mode's tiers for one version (the only place tiers are made)."""
        batcher = self._batcher_for(model) if model is not None else None
        l1 = make_l1(self.settings.l1_size, self.settings.l1_ttl_s, self.settings.l1_policy) if "l1" in self.tier_names else None
        # One factory per tier name of serving.modes; a mode only calls those it lists, so each
        # factory finds what its tier needs (the L1, the store, the model) in place.
        factories: dict[str, Callable[[], Tier]] = {
            "l1": lambda: L1Tier(l1),  # type: ignore[arg-type]
            "store": lambda: StoreTier(self.store, self.settings.model_name, version, lambda: self.settings.redis_ttl_s),  # type: ignore[arg-type]
            "model": lambda: ModelTier(model, batcher),  # type: ignore[arg-type]
        }
        validate = model.features.index if model is not None else self._key_check(version)
        walk = TierWalk([factories[name]() for name in self.tier_names], admission=self.admission, observer=self.counts,
                        validate=validate, describe_unknown=lambda keys: self._describe_unknown(version, keys))
        schema = FeatureSchema.from_card(model.card) if model is not None else None
        return ServedState(version, model, batcher, l1, walk, knows_keys=validate is not _KEY_RULE_ONLY, schema=schema)

    def _key_check(self, version: str) -> Callable[[str], object]:
        """How a mode without a model checks keys before the store: against the version's key
        space when the registry has its card (keys outside it are 404 without a Redis call), else
        by the key rule alone (a static server deployed without the registry)."""
        try:
            artifact = resolve(self.settings.registry, self.settings.model_name, version)
            space: KeySpace = key_space_for(artifact.card(), artifact.path)
        except (RegistryError, OSError, ValueError):
            return _KEY_RULE_ONLY
        return served_lookup(space.index)

    def _describe_unknown(self, version: str, keys: list[str]) -> str:
        shown = ", ".join(repr(k) for k in keys[:5])
        return (f"no precomputed prediction for {shown} in model {self.settings.model_name!r} "
                f"version {version} ({self.mode} mode serves only precomputed keys)")

    async def _refresh_pointer(self, force: bool = False, quiet: bool = False) -> None:
        """Follow the store's pointer to the complete table. A pointer that is gone (Redis restarted
        empty, or flushed) makes the server not ready: no table, so never a 404 for a valid key.
        ``quiet``: a store that cannot answer leaves things as they are instead of raising."""
        now = time.monotonic()
        if not force and now - self._pointer_checked < STATIC_POINTER_REFRESH_S:
            return
        assert self.store is not None
        self._pointer_checked = now
        try:
            version = await self.store.get_pointer(self.settings.model_name)
        except StoreError:
            if quiet:
                return  # not known now; requests answer 503 until the store answers
            raise
        if version is None:
            self._state = None
        elif self._state is None or self._state.version != version:
            self._state = self._served_state(version, None)

    # ----- prediction ------------------------------------------------------------------------

    @property
    def state(self) -> ServedState:
        """The served state; :class:`NotReady` before there is one."""
        if self._state is None:
            if not self.computes:
                raise TableUnavailable(
                    f"no complete precomputed table for model {self.settings.model_name!r} in Redis; "
                    "run `hybridserve precompute` first"
                )
            raise NotReady("model not loaded")
        return self._state

    async def predict(self, keys: Sequence[str]) -> list[Prediction]:
        """Predictions for ``keys`` in request order (duplicates answered from one lookup)."""
        start = time.perf_counter()
        try:
            if not self.computes:
                # With no table yet, every request asks the store (bounded by its timeout and the
                # breaker), so the answer says why: store down, or no table.
                await self._refresh_pointer(force=self._state is None)
            state = self.state
            found = await self._resolve(state, keys)
        except Exception:
            self.counts.errors += 1
            raise
        if self._recorder is not None:
            # Every requested key, duplicates included: the trace is the traffic, not the lookups.
            for key in keys:
                self._recorder.record(key)
        if self.hot is not None:
            self.hot.update(keys)
        return self._answered(state, keys, found, start)

    async def predict_instances(self, instances: Sequence[object]) -> list[Prediction]:
        """Predictions for raw feature vectors, in order: validated against the card's schema,
        computed by the model (through the batcher), cached in hybrid under their hash."""
        start = time.perf_counter()
        try:
            state = self.state
            if state.schema is None:
                raise InvalidInstance(
                    f"{self.mode} mode serves only precomputed keys: a feature vector it has never seen has no "
                    "precomputed prediction (static serving's cold start); send keys, or serve dynamic or hybrid")
            rows, outside = state.schema.rows(instances)
            self.metrics.observe_out_of_range(outside)
            keys = [instance_key(row) for row in rows]
            found = await state.walk.resolve(keys, dict(zip(keys, rows)))
        except Exception:
            self.counts.errors += 1
            raise
        return self._answered(state, keys, found, start)

    def _answered(self, state: ServedState, keys: Sequence[str], found: dict[str, tuple[float, str]], start: float) -> list[Prediction]:
        self.counts.keys += len(keys)
        source = max((found[k][1] for k in keys), key=_SOURCE_RANK.__getitem__)
        self.metrics.observe_request(source, time.perf_counter() - start)
        return [Prediction(k, found[k][0], found[k][1], state.version) for k in keys]

    def predict_cached(self, key: str) -> Prediction | None:
        """The prediction for one key if L1 holds it, else ``None`` (nothing counted: the caller
        then takes :meth:`predict`, which counts the miss). A hit counts as :meth:`predict` counts
        it (L1 lookup, keys, request latency, trace); :mod:`serving.fast_path` answers with it."""
        start = time.perf_counter()
        state = self._state
        if state is None or state.l1 is None or self.tier_names[0] != "l1":
            return None
        value = state.l1.get(key)  # L1 holds only validated keys of this version
        if value is None:
            return None
        self.counts.looked_up("l1", 1, 0)
        self.counts.keys += 1
        if self._recorder is not None:
            self._recorder.record(key)
        if self.hot is not None:
            self.hot.add(key)
        self.metrics.observe_request("l1", time.perf_counter() - start)
        return Prediction(key, value, "l1", state.version)

    async def _resolve(self, state: ServedState, keys: Sequence[str]) -> dict[str, tuple[float, str]]:
        try:
            return await state.walk.resolve(keys)
        except NotStored as missing:
            # Without a model a miss means "not in the table": make sure the table is still there
            # (a miss is rare in static, so the extra read costs little), or it would be a 404 for
            # a valid key whose table was lost.
            await self._refresh_pointer(force=True)
            if self._state is not state:
                raise self._table_gone() from None
            if state.knows_keys:  # the key is in the key space, so a complete table must hold it
                raise TableUnavailable(f"{missing.detail}, though the key is in the model's key space: the table is "
                                       "incomplete (evicted or deleted in Redis); re-run `hybridserve precompute`") from None
            raise

    def _table_gone(self) -> TableUnavailable:
        return TableUnavailable(f"the precomputed table of model {self.settings.model_name!r} changed or is gone; "
                                "retry, or run `hybridserve precompute`")

    # ----- operations ------------------------------------------------------------------------

    async def flush(self, l1: bool = True, redis: bool = False) -> dict[str, int]:
        """Empty L1 and/or this model's predictions in the store (all versions).

        Without a model tier the pointer goes with the table, and the server is not ready (503)
        until the next precompute, rather than answering 404 for valid keys.
        """
        removed = {"l1": 0, "redis": 0}
        state = self._state
        if l1 and state is not None and state.l1 is not None:
            removed["l1"] = len(state.l1)
            state.l1.clear()
            self.admission.reset()
        if redis and self.store is not None:
            removed["redis"] = await self.store.delete_model(self.settings.model_name)
            if self.refresher is not None:
                self.refresher.forget_head()  # else the threshold would not see the head is gone
            if not self.computes:
                self._state = None
        return removed

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change the cache policy at run time (``l1_size``, ``l1_ttl_s``, ``redis_ttl_s``,
        ``admission``), validated by the same rules as :class:`Settings` (``ValidationError``
        otherwise); returns the policy now in force. Settings stay the one source of truth."""
        unknown = set(fields) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"not a run-time policy field: {', '.join(sorted(unknown))}")
        self.settings = self.settings.updated(**fields)
        if "admission" in fields:
            self.admission.rule = self.settings.admission_rule
            self.admission.reset()
        if self._state is not None and self._state.l1 is not None:
            self._state.l1.reconfigure(self.settings.l1_size, self.settings.l1_ttl_s)
        return self.policy()

    def policy(self) -> dict[str, Any]:
        """The cache policy in force."""
        return {name: getattr(self.settings, name) for name in POLICY_FIELDS}

    def stats(self) -> dict[str, Any]:
        """Counters, tier hit ratios and the state of L1 and Redis (``/v1/cache/stats``)."""
        c = self.counts
        served = c.l1_hits + c.redis_hits + c.model_rows
        state = self._state
        l1 = state.l1 if state else None
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
            # `is not None`: an empty L1 is falsy (it has a length), yet has a capacity.
            "l1": {"size": len(l1) if l1 is not None else 0, "capacity": l1.capacity if l1 is not None else 0,
                   "evictions": l1.evictions if l1 is not None else 0},
            "redis": {"errors": self.store.errors if self.store else 0,
                      "rejected": self.store.rejected if self.store else 0,
                      "breaker": self.store.breaker.state if self.store else "none"},
            "policy": self.policy(),
            "head_refresh": self.refresher.status.as_dict() if self.refresher is not None else None,
        }

    def gauges(self) -> dict[str, float]:
        """Point-in-time values for Prometheus."""
        state = self._state
        breaker_open = 1.0 if self.store and self.store.breaker.state != "closed" else 0.0
        return {
            "l1_entries": float(len(state.l1)) if state and state.l1 is not None else 0.0,
            "redis_errors": float(self.store.errors) if self.store else 0.0,
            "redis_rejected": float(self.store.rejected) if self.store else 0.0,
            "redis_breaker_open": breaker_open,
            **(_refresh_gauges(self.refresher) if self.refresher is not None else {}),
        }

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this server can answer, and why. A mode whose store is not its last tier is
        ready without the store (degraded: the tiers below answer); a store refusing writes for
        lack of memory is ``"redis": "full"``, degraded (reads still work, nothing new is cached)."""
        redis_ok = await self.store.ping() if self.store else None
        if not self.computes and redis_ok:
            await self._refresh_pointer(force=True, quiet=True)
        store_optional = self.tier_names[-1] != "store"
        ready = self._state is not None and (redis_ok is not False or store_optional)
        full = bool(self.store and self.store.full)
        detail = {
            "mode": self.mode,
            "model_version": self._state.version if self._state else None,
            "redis": "full" if redis_ok and full else {True: "ok", False: "unreachable", None: "unused"}[redis_ok],
            # Degraded: answering, but not as configured (Redis down, or too full to admit more).
            "degraded": (store_optional and redis_ok is False) or full,
            "breaker": self.store.breaker.state if self.store else "none",
        }
        if self._state is None and not self.computes and redis_ok:
            detail["reason"] = "no complete precomputed table (run `hybridserve precompute`)"
        return ready, detail


def _hot_set_for(settings: Settings, tiers: tuple[str, ...]) -> HotSet | None:
    """The hot set, where the settings ask for it and the mode has a head to refresh (a model
    computing into a store)."""
    wanted = settings.hot_set or settings.head_refresh_s or settings.head_refresh_threshold or settings.warm_start
    if not wanted or "model" not in tiers or "store" not in tiers:
        return None
    return HotSet(settings.hot_set_capacity, settings.hot_set_half_life_s)


def _refresh_gauges(refresher: HeadRefresher) -> dict[str, float]:
    status = refresher.status
    return {"hot_set_distance": status.distance, "hot_set_counters": float(len(refresher.hot)),
            "head_refresh_total": float(status.refreshes), "head_refresh_keys_written": float(status.keys_written),
            "head_refresh_last_unix": status.last_refresh_unix}


# The settings a run-time policy change may touch (PUT /v1/admin/policy). The head is chosen at
# precompute time (``hybridserve precompute --head --top-k N``), so it is not among them.
POLICY_FIELDS: tuple[str, ...] = ("l1_size", "l1_ttl_s", "redis_ttl_s", "admission")
