"""The precompute job: batched inference over all keys (static) or the top-K keys (hybrid head),
written through the prediction store (:mod:`serving.store`; one MSET per batch on Redis).

A full table becomes the served one only when every key is written: the last step moves the
static pointer (``{ns}:{model}:static``) to the new version. An interrupted load leaves the pointer,
and so the served table, on the old version. After a switch, versions older than the previous one
are deleted.

Example::

    report = precompute(settings, keys=None)      # the whole key space, then switch the pointer
    print(report.keys_per_s)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.registry import versions
from models.keyspace import KeyRuleError, check_key
from serving.errors import ServingError
from serving.logs import log_event
from serving.model import LoadedModel
from serving.settings import Settings
from serving.store import PredictionStore, build_store

# Versions kept in Redis after a switch: the new one and the one servers may still be reading.
KEEP_VERSIONS = 2
# Rows per model call when ranking every key for the popularity prior.
PRIOR_CHUNK = 65_536
# Seconds each store call of the job may take (requests use Settings.redis_timeout_s).
BATCH_TIMEOUT_S = 5.0
# At most one progress log line this often (and one when the last batch is written): a full table of
# a large key space is hundreds of batches, and a line per batch would drown everything else.
PROGRESS_LOG_INTERVAL_S = 2.0


@dataclass(frozen=True)
class PrecomputeReport:
    """What one precompute run did and what it cost."""

    model_name: str
    model_version: str
    keys: int
    seconds: float
    cpu_seconds: float
    keys_per_s: float
    redis_bytes_added: int
    switched_pointer: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def top_keys_from_file(path: Path, top_k: int) -> list[str]:
    """The ``top_k`` most frequent keys of a file with one key per line (a trace or a ranked list;
    ties keep first-seen order, so a ranked list of distinct keys keeps its order)."""
    if not path.is_file():
        raise FileNotFoundError(f"keys file {path} does not exist")
    counts = Counter(line.strip() for line in path.read_text().splitlines() if line.strip())
    for key in counts:
        try:
            check_key(key)
        except KeyRuleError as exc:
            raise ValueError(f"keys file {path}: {exc}") from None
    return [k for k, _ in counts.most_common(top_k)]


def popularity_prior(model: LoadedModel, top_k: int) -> list[str]:
    """Without a trace: the ``top_k`` keys with the highest predictions (for the demo, the busiest
    road-hours, which are looked up most). A guess: a trace of real traffic (``--keys-file``) is
    better, and the only good source for a model whose output says nothing of popularity."""
    predicted = np.concatenate([model.predict_indices(np.arange(start, min(start + PRIOR_CHUNK, model.features.key_count)))
                                for start in range(0, model.features.key_count, PRIOR_CHUNK)])
    order = np.argsort(-predicted, kind="stable")[:top_k]
    return [model.key_space.key(int(i)) for i in order]


def _compute_batches(model: LoadedModel, keys: Sequence[str], step: int) -> Iterator[list[tuple[str, float]]]:
    """``(key, prediction)`` pairs for ``keys``, one model call per ``step`` keys."""
    for start in range(0, len(keys), step):
        chunk = keys[start : start + step]
        try:
            rows = [model.features.index(k) for k in chunk]
        except ServingError as exc:  # a head file naming keys the model does not have
            raise ValueError(f"cannot precompute {model.name}@{model.version}: {exc.detail}") from None
        values = model.predict_indices(rows)
        yield list(zip(chunk, values.tolist()))


async def write_predictions(
    store: PredictionStore,
    model: LoadedModel,
    keys: Sequence[str],
    settings: Settings,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Compute predictions for ``keys`` and write them through the store, one batch per call (no
    expiry: a precomputed table or head stays until replaced). The model calls block the loop,
    which serves nothing else in this job."""
    with tqdm(total=len(keys), unit="key", disable=not progress, desc=f"precompute {model.name}@{model.version}") as bar:
        logged, done = time.monotonic(), 0
        for index, batch in enumerate(_compute_batches(model, keys, settings.precompute_batch_size)):
            await store.put_predictions(model.name, model.version, batch, ttl_s=0)
            bar.update(len(batch))
            done += len(batch)
            if done == len(keys) or time.monotonic() - logged >= PROGRESS_LOG_INTERVAL_S:
                log_event("precompute_progress", model_name=model.name, model_version=model.version, keys_done=done,
                          keys_total=len(keys))
                logged = time.monotonic()
            if on_batch is not None:
                on_batch(index)


async def publish_table(store: PredictionStore, settings: Settings, model: LoadedModel, previous: str | None) -> None:
    """Make a completely written table the served one (the pointer moves in one SET), then drop
    versions older than ``previous``, which servers may still be reading."""
    await store.set_pointer(model.name, model.version)
    await _drop_old_versions(store, settings, model, previous)


async def _drop_old_versions(store: PredictionStore, settings: Settings, model: LoadedModel, previous: str | None) -> None:
    known = versions(settings.registry, model.name)
    keep = set(known[-KEEP_VERSIONS:]) | {model.version, previous}
    for version in known:
        if version not in keep:
            await store.delete_version(model.name, version)


def precompute(
    settings: Settings,
    keys: Sequence[str] | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> PrecomputeReport:
    """Precompute ``keys`` (None: every key, then switch the static pointer) into the store."""
    if not settings.redis_url:
        raise ValueError("precompute needs a Redis: set HYBRIDSERVE_REDIS_URL or pass --redis-url")
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    return asyncio.run(_precompute(settings, model, keys, progress, on_batch))


async def _precompute(
    settings: Settings,
    model: LoadedModel,
    keys: Sequence[str] | None,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> PrecomputeReport:
    full = keys is None
    targets = list(model.key_space.keys()) if keys is None else list(keys)
    # A batch job can wait longer per call than a request; a large MSET is still one round trip.
    store = build_store(settings, timeout_s=max(BATCH_TIMEOUT_S, settings.redis_timeout_s))
    try:
        before = await store.used_memory()
        previous = await store.get_pointer(model.name)
        log_event("precompute_start", model_name=model.name, model_version=model.version, keys=len(targets), full_table=full)
        wall, cpu = time.perf_counter(), time.process_time()
        await write_predictions(store, model, targets, settings, progress, on_batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        added = await store.used_memory() - before
        if full:
            await publish_table(store, settings, model, previous)
    finally:
        await store.close()
    report = PrecomputeReport(model.name, model.version, len(targets), wall, cpu, len(targets) / wall if wall else 0.0, added, full)
    log_event("precompute_done", **report.as_dict())
    return report
