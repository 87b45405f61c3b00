"""Tiers and the walk through them: the one decision core of serving, shared with the tuner's replay.

A *tier* answers some keys (:class:`Tier`): the in-process L1, the prediction store (Redis), the
model. A *mode* is an ordered list of tiers (:data:`serving.modes.MODE_TIERS`); :class:`TierWalk` asks them in
order, each for the keys the ones above it missed, and applies the two rules every mode shares:

- **refill**: a value found in a cache tier is put into the cache tiers above it (a Redis hit
  lands in L1); a value the model computed goes into the cache tiers above only if the admission
  rule admits the key.
- **fail open**: a tier that fails is skipped when a tier below it can still answer (hybrid serves
  from the model while Redis is down); the last tier's failure is the request's failure. A key no
  tier answers is unknown (static mode: not in the precomputed table).

The server walks real tiers (:mod:`serving.service`); the tuner walks the same :class:`TierWalk`
over counting tiers (:mod:`tuning.simulate`), so the order, refill and admission it simulates are
the server's by construction, not by copy.

Adding a tier is one class with ``get_many``/``put_many`` plus its factory in
:mod:`serving.service`; adding a mode is one line in :data:`serving.modes.MODE_TIERS`.

Example::

    walk = TierWalk([L1Tier(l1), StoreTier(store, "traffic-light", "a16b398c84f1"), model_tier],
                    admission=Admission(AdmissionRule.parse("after:2")), observer=counts,
                    validate=features.index)
    found = await walk.resolve(["17:42", "3:8"])    # {"17:42": (812.5, "l1"), "3:8": (95.0, "model")}
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from serving.cache import Admission, L1Cache
from serving.errors import NotStored, StoreError
from serving.model import Batcher, LoadedModel
from serving.store import PredictionStore

T = TypeVar("T")
Found = dict[str, tuple[float, str]]
Rows = Mapping[str, np.ndarray]
MAX_KEYS_IN_DETAIL = 5



class Tier(Protocol):
    """One place a prediction can come from.

    ``name`` is the ``source`` that answers from this tier carry. ``computes``: the tier produces
    values (the model) rather than remembering them, so what it returns passes the admission rule
    before it is cached. ``trusts_keys``: the tier only holds keys validated on their way in, so a
    hit needs no validation (L1: the hot path skips parsing).
    """

    name: str
    computes: bool
    trusts_keys: bool

    async def get_many(self, keys: Sequence[str], rows: Rows | None = None) -> list[float | None]:
        """Values of ``keys`` in order, ``None`` where this tier has none. ``rows``: feature rows of
        keys outside the key space (a raw-feature request's vectors), for a tier that computes."""
        ...

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Remember values (a no-op for tiers that compute)."""
        ...


class TierObserver(Protocol):
    """What the walk reports: the server's metrics and the replay's counts implement it."""

    def looked_up(self, tier: str, hits: int, misses: int) -> None:
        """A tier answered ``hits`` keys and missed ``misses``."""

    def fell_through(self, tier: str, error: StoreError) -> None:
        """A tier failed and the tiers below answered instead."""

    def admission_decided(self, admitted: int, refused: int) -> None:
        """Computed values the admission rule let into the caches, and those it kept out."""

    def write_failed(self, tier: str, error: StoreError) -> None:
        """A cache tier could not store values; they were still served."""


class TierWalk:
    """Resolve keys through ``tiers`` in order, with refill, admission and fail-open."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        *,
        admission: Admission,
        observer: TierObserver,
        validate: Callable[[str], object],
        describe_unknown: Callable[[list[str]], str] | None = None,
    ) -> None:
        if not tiers:
            raise ValueError("a mode needs at least one tier")
        self.tiers = tuple(tiers)
        self.admission = admission
        self._observer = observer
        self._validate = validate
        self._describe_unknown = describe_unknown or _unknown_keys

    async def resolve(self, keys: Sequence[str], rows: Rows | None = None) -> Found:
        """``{key: (value, source)}`` for the unique ``keys``; :class:`NotStored` if a key is left
        unanswered (validation raises :class:`MalformedKey` / :class:`UnknownKey` before).

        ``rows`` carries the feature rows of keys that are not in the key space: a raw-feature
        request names each vector by a hash of it, and these keys skip key validation (their rows
        were validated against the feature schema instead)."""
        found: Found = {}
        todo = list(dict.fromkeys(keys)) if len(keys) > 1 else list(keys)  # unique, in request order
        validated = False
        last = len(self.tiers) - 1
        # The hot path (an L1 hit) runs this loop once: it is kept flat on purpose.
        for depth, tier in enumerate(self.tiers):
            if not validated and not tier.trusts_keys:
                for key in todo:
                    if rows is None or key not in rows:
                        self._validate(key)  # raises MalformedKey / UnknownKey
                validated = True
            try:
                values = await (tier.get_many(todo) if rows is None else tier.get_many(todo, rows))
            except StoreError as error:
                if depth == last:
                    raise
                self._observer.fell_through(tier.name, error)
                continue
            name = tier.name
            missing: list[str] = []
            hits: list[tuple[str, float]] = []
            for key, value in zip(todo, values):
                if value is None:
                    missing.append(key)
                else:
                    found[key] = (value, name)
                    hits.append((key, value))
            self._observer.looked_up(name, len(hits), len(missing))
            if hits and depth:
                await self._refill(self.tiers[:depth], tier, hits)
            if not missing:
                return found
            todo = missing
        raise NotStored(self._describe_unknown(todo))

    async def _refill(self, above: Sequence[Tier], source: Tier, hits: list[tuple[str, float]]) -> None:
        if source.computes:
            admitted = [(key, value) for key, value in hits if self.admission.admit(key)]
            self._observer.admission_decided(len(admitted), len(hits) - len(admitted))
            hits = admitted
        if not hits:
            return
        for tier in above:  # nearest the client first: L1 holds the value before Redis is written
            try:
                await tier.put_many(hits)
            except StoreError as error:
                self._observer.write_failed(tier.name, error)


def _unknown_keys(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:MAX_KEYS_IN_DETAIL])
    return f"no prediction for {shown}"


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a walk over tiers without I/O) to its result, without
    an event loop: the replay drives :class:`TierWalk` this way, a request at a time."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("run_now: the coroutine suspended; a tier did real I/O")


# --------------------------------------------------------------------------- the server's tiers


class L1Tier:
    """The in-process LRU (:class:`serving.cache.L1Cache`) as a tier."""

    name = "l1"
    computes = False
    trusts_keys = True

    def __init__(self, l1: L1Cache) -> None:
        self.l1 = l1

    async def get_many(self, keys: Sequence[str], rows: Rows | None = None) -> list[float | None]:
        """Values from L1 (each hit becomes most recently used)."""
        get = self.l1.get
        return [get(key) for key in keys]

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Insert, evicting the least recently used past capacity."""
        for key, value in items:
            self.l1.put(key, value)


class StoreTier:
    """One model version's predictions in the prediction store (Redis) as a tier."""

    name = "redis"
    computes = False
    trusts_keys = False

    def __init__(self, store: PredictionStore, model: str, version: str, ttl_s: Callable[[], int]) -> None:
        self.store = store
        self.model = model
        self.version = version
        self._ttl_s = ttl_s  # read at each write: a policy change applies at once

    async def get_many(self, keys: Sequence[str], rows: Rows | None = None) -> list[float | None]:
        """One GET or MGET."""
        return await self.store.get_predictions(self.model, self.version, keys)

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """One pipelined write, with the TTL in force."""
        await self.store.put_predictions(self.model, self.version, items, self._ttl_s())


class ModelTier:
    """One loaded model version, called through the dynamic batcher, as a tier that never misses."""

    name = "model"
    computes = True
    trusts_keys = False

    def __init__(self, model: LoadedModel, batcher: Batcher) -> None:
        self.model = model
        self.batcher = batcher

    async def get_many(self, keys: Sequence[str], rows: Rows | None = None) -> list[float | None]:
        """Feature rows of ``keys`` through the model (keys were validated by the walk): from the
        feature table, or from ``rows`` for the vectors of a raw-feature request."""
        if rows is None:
            index = self.model.features.index
            block = self.model.features.rows([index(key) for key in keys])
        else:
            block = np.vstack([rows[key] if key in rows else self.model.features.rows([self.model.features.index(key)])
                               for key in keys])
        return (await self.batcher.infer(block)).tolist()  # type: ignore[no-any-return]

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Nothing to remember: the model computes."""
