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

With a traffic split (:mod:`serving.routes`), a request reads one immutable :class:`Routing`
snapshot (the routes, their router and every version's :class:`ServedState`) once, groups its keys
by the version each routes to, resolves each group through that version's own state and answers in
request order, each prediction naming its version. A change of routes builds every new version's
state (model loaded, :meth:`PredictionService.before_traffic` run) before it swaps the snapshot in
one assignment, so a request never mixes the old routing with the new. A shadow version answers a
copy of the traffic in the background (:mod:`serving.shadow`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.registry import RegistryError, resolve, versions
from serving.cache import Admission, L1Cache, make_l1
from serving.drift import DriftMonitor, monitoring_report
from serving.errors import HotSetOff, InvalidInstance, InvalidRoutes, NotReady, NotStored, StoreError, TableUnavailable, UnknownVersion
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
from serving.routes import Router, Routes
from serving.shadow import ShadowRunner
from serving.tiers import L1Tier, ModelTier, StoreTier, Tier, TierObserver, TierWalk
from serving.trace_recorder import TraceRecorder
from serving.version_metrics import PRIMARY, SHADOW, BothObservers, VersionMetrics, VersionStats

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
    stats: VersionStats  # this version's own counters (serving.version_metrics)
    drift: DriftMonitor  # this version's drift window (off, saying why, without a model or reference)


@dataclass(frozen=True)
class Routing:
    """One traffic split as a request sees it, immutable: the routes (versions concrete), the
    router, the state of every version of the split and the shadow's state (or ``None``)."""

    routes: Routes
    router: Router
    states: Mapping[str, ServedState]
    shadow: ServedState | None

    def state_for(self, key: str) -> ServedState:
        """The state of the version ``key`` routes to."""
        return self.states[self.router.version_for(key)]


Group = tuple[ServedState, Sequence[str]]  # a version's state and the keys of a request it answers


class PredictionService:
    """The serving logic, free of HTTP: ``await start()``, then ``await predict(keys)``."""

    def __init__(self, settings: Settings, store: PredictionStore | None) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.tier_names = MODE_TIERS[settings.mode]
        if "store" in self.tier_names and store is None:
            raise ValueError(f"mode {settings.mode!r} needs a prediction store (a Redis URL)")
        self.store = store
        self.metrics = Metrics(settings.mode, self.gauges, self._drift_snapshot)
        self.counts = self.metrics.counts
        self.version_metrics = VersionMetrics()
        self.metrics.attach("versions", self.version_metrics)
        self._shadow = ShadowRunner(self.version_metrics)
        self._routing: Routing | None = None
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
        if self.computes and self.settings.routes:
            await self.set_routes(Routes.parse(self.settings.routes))
        elif self.computes:
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
        await self._shadow.close()
        for state in self._serving_states().values():
            if state.batcher:
                await state.batcher.close()
        if self.store:
            await self.store.close()
        if self._recorder is not None:
            self._recorder.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._warm_executor is not None:
            self._warm_executor.shutdown(wait=False, cancel_futures=True)

    async def load_model(self, version: str) -> str:
        """Load a registry version and make it the served one, alone (a traffic split ends: a
        version of the split keeps its state and its L1); returns the version loaded."""
        async with self._reload_lock:
            routing = self._routing
            if routing is not None and version in routing.states:
                self._swap(routing.states[version], None)
                return version
            model = await self._load(version)
            state = self._served_state(model.version, model)
            await self.before_traffic(state)
            self.admission.reset()
            self._swap(state, None)
            return model.version

    async def _load(self, version: str) -> LoadedModel:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, LoadedModel.from_registry, self.settings.registry, self.settings.model_name, version)
        except RegistryError as exc:
            raise UnknownVersion(str(exc)) from exc

    async def before_traffic(self, state: ServedState) -> None:
        """Runs on a new version's state, fully built (model loaded), before any request can reach
        it: by a reload and by a change of routes, on every worker. With ``warm_start`` (and a
        version served before it) the current heavy hitters are computed into its cache first
        (:meth:`_warm_start`), so its first requests find the hot keys."""
        if self._state is not None and self.settings.warm_start:
            await self._warm_start(state)

    def _swap(self, state: ServedState, routing: Routing | None) -> None:
        """Serve ``state`` (with ``routing``, the split it is the first version of) from now on, in
        one step (no await: no request sees half of it); retire the states no longer served."""
        old = self._serving_states()
        self._state, self._routing = state, routing
        kept = {id(s) for s in self._serving_states().values()}
        for gone in old.values():
            if gone.batcher and id(gone) not in kept:
                # Requests that took the old state before the swap are still waiting on its batcher:
                # closing it now would cancel them (a 500 mid-request), so it retires after a grace.
                task = asyncio.get_running_loop().create_task(self._retire(gone.batcher))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _serving_states(self) -> dict[tuple[str, str], ServedState]:
        """Every state serving now, by (version, role)."""
        routing = self._routing
        if routing is None:
            return {(self._state.version, PRIMARY): self._state} if self._state is not None else {}
        found = {(v, PRIMARY): s for v, s in routing.states.items()}
        if routing.shadow is not None:
            found[(routing.shadow.version, SHADOW)] = routing.shadow
        return found

    # ----- traffic split ---------------------------------------------------------------------

    @property
    def routes(self) -> Routes:
        """The split in force (versions concrete); empty when one version is served alone."""
        return self._routing.routes if self._routing is not None else Routes()

    async def set_routes(self, routes: Routes) -> Routes:
        """Serve ``routes`` from now on, on this process; returns them with versions concrete.

        Every version of the split (and the shadow) gets its own state: a version already served
        keeps its state (and its warm L1), a new one is loaded and prepared
        (:meth:`before_traffic`) before the one-assignment swap. Empty routes end the split: its
        first version is served alone. :class:`InvalidRoutes` for an unknown version, for versions
        that take different features, or in a mode without a model."""
        if not self.computes:
            raise InvalidRoutes(f"routes need a mode that runs the model (dynamic or hybrid): {self.mode} serves one "
                                "precomputed table; precompute each version and switch with a reload instead")
        async with self._reload_lock:
            if not routes:
                if self._routing is not None:
                    self._swap(self._routing.states[self._routing.routes.versions[0]], None)
                return Routes()
            resolved = routes.resolved(self._concrete, lambda: versions(self.settings.registry, self.settings.model_name))
            current = self._serving_states()
            built: dict[tuple[str, str], ServedState] = {}
            for version in (*resolved.versions, *([resolved.shadow] if resolved.shadow else [])):
                role = SHADOW if version == resolved.shadow else PRIMARY
                state = current.get((version, role))
                if state is None:
                    state = self._served_state(version, await self._load(version), role, Admission(self.settings.admission_rule))
                    await self.before_traffic(state)
                built[(version, role)] = state
            try:
                _same_features(built)
            except InvalidRoutes:
                for key, state in built.items():
                    if key not in current and state.batcher:
                        await state.batcher.close()
                raise
            states = {v: built[(v, PRIMARY)] for v in resolved.versions}
            shadow = built[(resolved.shadow, SHADOW)] if resolved.shadow else None
            self._swap(states[resolved.versions[0]], Routing(resolved, Router(resolved), states, shadow))
            return resolved

    def _concrete(self, version: str) -> str | None:
        """The registry version ``version`` names (``latest``: the pointer's), or ``None``."""
        try:
            return resolve(self.settings.registry, self.settings.model_name, version).version
        except RegistryError:
            return None

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

    def _served_state(self, version: str, model: LoadedModel | None, role: str = PRIMARY,
                      admission: Admission | None = None) -> ServedState:
        """Build the configured mode's tiers for one version (the only place tiers are made). A
        version of a split has its own ``admission`` (miss counts are per version); a shadow's
        lookups count only in its own stats, never in the server's (they answer nobody)."""
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
        stats = self.version_metrics.of(version, role)
        observer: TierObserver = stats.counts if role == SHADOW else BothObservers(self.counts, stats.counts)
        walk = TierWalk([factories[name]() for name in self.tier_names], admission=admission or self.admission, observer=observer,
                        validate=validate, describe_unknown=lambda keys: self._describe_unknown(version, keys))
        schema = FeatureSchema.from_card(model.card) if model is not None else None
        drift = DriftMonitor.for_version(model.card if model is not None else None, version,
                                         _rows_of_keys(model) if model is not None else None, self.settings)
        return ServedState(version, model, batcher, l1, walk, knows_keys=validate is not _KEY_RULE_ONLY, schema=schema,
                           stats=stats, drift=drift)

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

    async def predict(self, keys: Sequence[str], version: str | None = None) -> list[Prediction]:
        """Predictions for ``keys`` in request order (duplicates answered from one lookup), each by
        the version its key routes to; ``version``: all by that version (one of those served, else
        :class:`UnknownVersion`)."""
        start = time.perf_counter()
        routing = self._routing  # read once: the whole request is answered from this snapshot
        try:
            if not self.computes:
                # With no table yet, every request asks the store (bounded by its timeout and the
                # breaker), so the answer says why: store down, or no table.
                await self._refresh_pointer(force=self._state is None)
            groups = self._groups(routing, keys, version)
            found = await self._resolve_groups(groups)
        except Exception:
            self.counts.errors += 1
            raise
        if self._recorder is not None:
            # Every requested key, duplicates included: the trace is the traffic, not the lookups.
            for key in keys:
                self._recorder.record(key)
        for state, group in groups:
            if state.drift.sampled():
                state.drift.observe_keys(group, [found[k][0] for k in group])
        if self.hot is not None:
            self.hot.update(keys)
        answered = self._answered(groups, keys, found, start)
        if routing is not None and routing.shadow is not None and version is None:
            self._shadow.submit(routing.shadow.walk, routing.shadow.version, answered)
        return answered

    async def predict_instances(self, instances: Sequence[object], version: str | None = None) -> list[Prediction]:
        """Predictions for raw feature vectors, in order: validated against the card's schema,
        computed by the model (through the batcher), cached in hybrid under their hash; routed by
        that hash as keys are (``version``: as in :meth:`predict`)."""
        start = time.perf_counter()
        routing = self._routing
        try:
            first = self._groups(routing, [], version)[0][0] if version is not None or routing is None else \
                routing.states[routing.routes.versions[0]]
            if first.schema is None:
                raise InvalidInstance(
                    f"{self.mode} mode serves only precomputed keys: a feature vector it has never seen has no "
                    "precomputed prediction (static serving's cold start); send keys, or serve dynamic or hybrid")
            # The versions of a split take the same features (checked when it is set): one parse.
            rows, outside = first.schema.rows(instances)
            self.metrics.observe_out_of_range(outside)
            keys = [instance_key(row) for row in rows]
            by_key = dict(zip(keys, rows))
            groups = self._groups(routing, keys, version)
            found = await self._resolve_groups(groups, by_key)
        except Exception:
            self.counts.errors += 1
            raise
        for state, group in groups:
            if state.drift.sampled():
                state.drift.observe(rows if len(groups) == 1 else np.stack([by_key[k] for k in group]),
                                    [found[k][0] for k in group])
        answered = self._answered(groups, keys, found, start)
        if routing is not None and routing.shadow is not None and version is None:
            self._shadow.submit(routing.shadow.walk, routing.shadow.version, answered, by_key)
        return answered

    def _groups(self, routing: Routing | None, keys: Sequence[str], version: str | None) -> list[Group]:
        """Which state answers which keys: the one served state, or each version's keys of a split."""
        if version is not None:
            states = routing.states if routing is not None else {self.state.version: self.state}
            if version not in states:
                raise UnknownVersion(f"version {version!r} of model {self.settings.model_name!r} is not served here; "
                                     f"served: {', '.join(states)}")
            return [(states[version], keys)]
        if routing is None:
            return [(self.state, keys)]
        return [(routing.states[v], group) for v, group in routing.router.group(keys).items()]

    async def _resolve_groups(self, groups: list[Group], rows: Mapping[str, Any] | None = None) -> dict[str, tuple[float, str]]:
        if len(groups) == 1:
            state, keys = groups[0]
            return await (self._resolve(state, keys) if rows is None else state.walk.resolve(keys, rows))
        # The versions answer concurrently (each has its own batcher); results merge by key.
        results = await asyncio.gather(*(self._resolve(state, keys) if rows is None else state.walk.resolve(keys, rows)
                                         for state, keys in groups))
        return {key: value for found in results for key, value in found.items()}

    def _answered(self, groups: list[Group], keys: Sequence[str], found: dict[str, tuple[float, str]], start: float) -> list[Prediction]:
        self.counts.keys += len(keys)
        source = max((found[k][1] for k in keys), key=_SOURCE_RANK.__getitem__)
        seconds = time.perf_counter() - start
        self.metrics.observe_request(source, seconds)
        if len(groups) == 1:
            state = groups[0][0]
            state.stats.observe_request(source, seconds, len(keys))
            return [Prediction(k, found[k][0], found[k][1], state.version) for k in keys]
        owner: dict[str, ServedState] = {}
        for state, group in groups:
            owner.update(dict.fromkeys(group, state))
            state.stats.observe_request(max((found[k][1] for k in group), key=_SOURCE_RANK.__getitem__), seconds,
                                        sum(1 for k in keys if owner.get(k) is state))
        return [Prediction(k, found[k][0], found[k][1], owner[k].version) for k in keys]

    def predict_cached(self, key: str) -> Prediction | None:
        """The prediction for one key if L1 holds it, else ``None`` (nothing counted: the caller
        then takes :meth:`predict`, which counts the miss). A hit counts as :meth:`predict` counts
        it (L1 lookup, keys, request latency, trace); :mod:`serving.fast_path` answers with it."""
        start = time.perf_counter()
        routing = self._routing
        state = self._state if routing is None else routing.state_for(key)  # the L1 of the version the key routes to
        if state is None or state.l1 is None or self.tier_names[0] != "l1":
            return None
        value = state.l1.get(key)  # L1 holds only validated keys of this version
        if value is None:
            return None
        self.counts.looked_up("l1", 1, 0)
        state.stats.counts.looked_up("l1", 1, 0)
        self.counts.keys += 1
        if self._recorder is not None:
            self._recorder.record(key)
        if state.drift.sampled():
            state.drift.observe_keys((key,), (value,))
        if self.hot is not None:
            self.hot.add(key)
        seconds = time.perf_counter() - start
        self.metrics.observe_request("l1", seconds)
        state.stats.observe_request("l1", seconds, 1)
        answer = Prediction(key, value, "l1", state.version)
        if routing is not None and routing.shadow is not None:
            self._shadow.submit(routing.shadow.walk, routing.shadow.version, [answer])
        return answer

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
        for state in self._serving_states().values():  # every version of a split, and its shadow
            if l1 and state.l1 is not None:
                removed["l1"] += len(state.l1)
                state.l1.clear()
                state.walk.admission.reset()
        if l1:
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
        states = self._serving_states().values()
        if "admission" in fields:
            for admission in {id(a): a for a in (self.admission, *(s.walk.admission for s in states))}.values():
                admission.rule = self.settings.admission_rule
                admission.reset()
        for state in states:
            if state.l1 is not None:
                state.l1.reconfigure(self.settings.l1_size, self.settings.l1_ttl_s)
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
            "routes": self._routing.routes.as_json() if self._routing is not None else None,
            **self.version_metrics.as_dict(),
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

    def _drift_snapshot(self) -> dict[str, Any] | None:
        """This worker's drift window of the served version (None before there is one)."""
        return self._state.drift.snapshot() if self._state is not None else None

    def monitoring(self, others: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Drift statistics and alerts (``GET /v1/monitoring``), merged with ``others`` (the other
        workers' metrics snapshots) of the same version."""
        return monitoring_report([self._drift_snapshot(), *(o.get("drift") for o in others)], self.settings.model_name)

    def gauges(self) -> dict[str, float]:
        """Point-in-time values for Prometheus."""
        breaker_open = 1.0 if self.store and self.store.breaker.state != "closed" else 0.0
        return {
            # Every served version's L1 (one with no split): what the process holds.
            "l1_entries": float(sum(len(s.l1) for s in self._serving_states().values() if s.l1 is not None)),
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


def _rows_of_keys(model: LoadedModel) -> Callable[[Sequence[str]], Any]:
    """The feature rows of (validated) keys, from the model's feature table: what drift observes."""
    features = model.features
    return lambda keys: features.rows([features.index(key) for key in keys])


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


def _same_features(states: Mapping[tuple[str, str], ServedState]) -> None:
    """:class:`InvalidRoutes` unless every version of a split takes the same features (a request's
    raw-feature instances are checked once, and any version may answer them)."""
    named = {version: s.schema.names for (version, _), s in states.items() if s.schema is not None}
    if len(set(named.values())) > 1:
        shown = "; ".join(f"{v}: {', '.join(names)}" for v, names in named.items())
        raise InvalidRoutes(f"routes: the versions take different features ({shown}); a split needs versions of one feature schema")
