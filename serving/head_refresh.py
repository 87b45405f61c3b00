"""The head follows the hot set: refresh on a schedule or when the hot set moved, warm start on reload.

:func:`warm` is the one operation: for a version's state (its model, its L1) and a list of keys,
copy those Redis already holds for that version into its L1, compute the rest through its model
(batched, ``REFRESH_CHUNK`` rows per call, in the inference thread, never on the event loop) and
write them into Redis under that version and into its L1. Values only ever go under the version
whose model computed them; with ``is_current`` it stops before any write once the state is no
longer the one served (a reload in between), so a refresh never writes for a version nobody serves.

Two callers:

- **warm start** (``Settings.warm_start``): :meth:`serving.service.PredictionService.load_model`
  warms the new version's state with the current heavy hitters *before* it takes traffic, so the
  first requests for hot keys after a reload come from L1, not the model. The traffic-split hook
  calls the same :func:`warm` on a version before it gets a route.
- **head refresh** (:class:`HeadRefresher`): every ``CHECK_EVERY_S`` it compares the hot set's
  top-``head_size`` with the head it last wrote (Jaccard distance) and refreshes when
  ``head_refresh_s`` has passed or the distance is above ``head_refresh_threshold``; or at once on
  ``POST /v1/admin/refresh-head``. A refresh writes with ``redis_ttl_s`` (the admission TTL), so
  heads of hot sets long gone expire instead of growing Redis without end; a key still hot is
  found missing by a later refresh and written again.

Example::

    report = await warm(state, hot.top(1000), store, "traffic-light", executor=pool, ttl_s=3600)
    report.computed        # keys the model computed and Redis + L1 now hold
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from serving.cache import L1Cache
from serving.errors import ServingError, StoreError
from serving.hot_set import HotSet, jaccard_distance
from serving.logs import log_event
from serving.model import LoadedModel
from serving.store import PredictionStore

# Rows per model call of a refresh or warm start: it shares the inference thread with requests,
# and a request that arrives behind a chunk waits for it, so chunks stay small.
REFRESH_CHUNK = 256
# How often the refresher looks at the hot set (distance and schedule).
CHECK_EVERY_S = 1.0


class WarmTarget(Protocol):
    """What :func:`warm` needs of a served state (:class:`serving.service.ServedState` has it)."""

    version: str
    model: LoadedModel | None
    l1: L1Cache | None


@dataclass(frozen=True)
class WarmReport:
    """What one warm start or head refresh did."""

    version: str
    keys: int
    """Keys asked for."""
    in_l1: int
    """Already in the version's L1."""
    from_store: int
    """Found in Redis under the version (copied into its L1)."""
    computed: int
    """Computed by the version's model and written into Redis and L1."""
    skipped: int
    """Not in the version's key space (a key the previous version had)."""
    superseded: bool
    """Stopped before writing: the state stopped being the served one."""
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


async def warm(
    state: WarmTarget,
    keys: Sequence[str],
    store: PredictionStore,
    model_name: str,
    *,
    executor: Executor | None,
    ttl_s: int,
    is_current: Callable[[], bool] | None = None,
    chunk: int = REFRESH_CHUNK,
) -> WarmReport:
    """Make ``state``'s L1 and Redis hold ``keys`` for ``state.version`` (see the module doc)."""
    start = time.perf_counter()
    model, l1, version = state.model, state.l1, state.version
    if model is None:
        raise ValueError("warm needs a model: a mode without one serves a complete precomputed table")
    unique = list(dict.fromkeys(keys))
    todo = [key for key in unique if l1 is None or l1.peek(key) is None]
    counts = {"in_l1": len(unique) - len(todo), "from_store": 0, "computed": 0, "skipped": 0}
    superseded = False
    loop = asyncio.get_running_loop()
    for begin in range(0, len(todo), chunk):
        part = todo[begin:begin + chunk]
        try:
            stored = await store.get_predictions(model_name, version, part)
        except StoreError:
            stored = [None] * len(part)  # unreadable (corrupt or down): compute, the write repairs it
        missing: list[tuple[str, int]] = []
        for key, value in zip(part, stored):
            if value is not None:
                counts["from_store"] += 1
                if l1 is not None:
                    l1.put(key, value)
                continue
            try:
                missing.append((key, model.features.index(key)))
            except ServingError:
                counts["skipped"] += 1
        if not missing:
            continue
        values = await loop.run_in_executor(executor, model.predict_indices, [row for _, row in missing])
        if is_current is not None and not is_current():
            superseded = True  # a reload replaced the state: its values are no one's to serve
            break
        items = list(zip((key for key, _ in missing), values.tolist()))
        await store.put_predictions(model_name, version, items, ttl_s)
        if l1 is not None:
            for key, value in items:
                l1.put(key, value)
        counts["computed"] += len(items)
    return WarmReport(version, len(unique), superseded=superseded,
                      seconds=time.perf_counter() - start, **counts)


@dataclass
class RefreshStatus:
    """The refresher's state, in ``/v1/cache/stats`` (``head_refresh``) and /metrics."""

    refreshes: int = 0
    last_refresh_unix: float = 0.0
    """Wall-clock time the last refresh finished (0: none yet)."""
    last_reason: str = ""
    """Why the last refresh ran: ``schedule``, ``threshold``, ``admin``."""
    last_keys_written: int = 0
    keys_written: int = 0
    """Keys computed and written by all refreshes."""
    distance: float = 0.0
    """Jaccard distance of the hot set's top-``head_size`` from the head last written (at the last check)."""
    superseded: int = 0
    """Refreshes stopped by a reload before they wrote."""
    errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class HeadRefresher:
    """Keeps the head in Redis and L1 on the hot set's top keys (see the module doc).

    ``current`` returns the served state (or None), ``settings`` the settings in force (read at
    each check: ``head_size``, ``head_refresh_s``, ``head_refresh_threshold``, ``redis_ttl_s``).
    """

    def __init__(self, hot: HotSet, store: PredictionStore, model_name: str, current: Callable[[], WarmTarget | None],
                 settings: Callable[[], Any], executor: Executor | None) -> None:
        self.hot = hot
        self.status = RefreshStatus()
        self._store = store
        self._model_name = model_name
        self._current = current
        self._settings = settings
        self._executor = executor
        self._head: set[str] = set()
        self._head_version: str | None = None
        self._seen_at_refresh = 0
        self._last_refresh = time.monotonic()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def distance(self) -> float:
        """How far the hot set's top-``head_size`` is from the head last written for the served
        version (1.0 when nothing was written for it yet)."""
        state = self._current()
        top = self.hot.top(self._settings().head_size)
        if state is None or state.version != self._head_version:
            return 1.0 if top else 0.0
        return jaccard_distance(top, self._head)

    async def refresh(self, reason: str = "admin") -> WarmReport | None:
        """Write the hot set's top-``head_size`` for the served version now (one at a time)."""
        async with self._lock:
            state = self._current()
            if state is None or state.model is None:
                return None
            settings = self._settings()
            top = self.hot.top(settings.head_size)
            try:
                report = await warm(state, top, self._store, self._model_name, executor=self._executor,
                                    ttl_s=settings.redis_ttl_s, is_current=lambda: self._current() is state)
            except StoreError as exc:
                self.status.errors += 1
                self.status.last_error = exc.detail
                return None
            finally:
                self._last_refresh = time.monotonic()
            self._record(state.version, top, report, reason)
            return report

    def _record(self, version: str, top: list[str], report: WarmReport, reason: str) -> None:
        status = self.status
        if report.superseded:
            status.superseded += 1
            return
        self._head, self._head_version = set(top), version
        self._seen_at_refresh = self.hot.seen
        status.refreshes += 1
        status.last_refresh_unix = time.time()
        status.last_reason = reason
        status.last_keys_written = report.computed
        status.keys_written += report.computed
        status.distance = 0.0
        log_event("head_refresh", reason=reason, model_version=version, keys=report.keys, computed=report.computed,
                  from_store=report.from_store, seconds=round(report.seconds, 4))

    def forget_head(self) -> None:
        """The head last written is gone (Redis flushed): the next check measures against nothing."""
        self._head, self._head_version = set(), None
        self._seen_at_refresh = 0

    def due(self) -> str | None:
        """Why a refresh is due now (``schedule`` or ``threshold``), or None."""
        settings = self._settings()
        if settings.head_refresh_s and time.monotonic() - self._last_refresh >= settings.head_refresh_s:
            return "schedule"
        if settings.head_refresh_threshold:
            # A hot set that has seen fewer keys than the head since the last refresh is mostly
            # noise; its distance would trigger refreshes of keys requested once.
            if self.hot.seen - self._seen_at_refresh < settings.head_size:
                return None
            self.status.distance = self.distance()
            if self.status.distance > settings.head_refresh_threshold:
                return "threshold"
        return None

    def start(self) -> None:
        """Check every ``CHECK_EVERY_S`` until :meth:`stop` (schedule and threshold)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            try:
                reason = self.due()
                if reason is not None:
                    await self.refresh(reason)
            except (ServingError, ValueError) as exc:  # e.g. a model call that failed: try again at the next check
                self.status.errors += 1
                self.status.last_error = str(exc)

    async def stop(self) -> None:
        """Stop checking (a refresh under way is cancelled: what it wrote stays valid)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
