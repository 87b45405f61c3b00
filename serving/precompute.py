"""The precompute job: batched inference over all keys (static) or the top-K keys (hybrid head),
written to Redis with one MSET per batch.

A full table becomes the served one only when every key is written: the last step moves the
static pointer (``{ns}:{model}:static``) to the new version. An interrupted load leaves the pointer,
and so the served table, on the old version. After a switch, versions older than the previous one
are deleted.

Example::

    report = precompute(settings, keys=None)      # the whole key space, then switch the pointer
    print(report.keys_per_s)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from tqdm import tqdm

from models.data import all_keys
from models.registry import versions
from serving.errors import MalformedKey
from serving.features import parse_key
from serving.logs import log_event
from serving.model import LoadedModel
from serving.settings import Settings
from serving.store import encode, prediction_key, static_pointer_key

# Versions kept in Redis after a switch: the new one and the one servers may still be reading.
KEEP_VERSIONS = 2
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
            parse_key(key)
        except MalformedKey as exc:
            raise ValueError(f"keys file {path}: {exc.detail}") from None
    return [k for k, _ in counts.most_common(top_k)]


def popularity_prior(model: LoadedModel, top_k: int) -> list[str]:
    """Without a trace: the ``top_k`` busiest road-hours by predicted volume (busy roads are looked
    up most)."""
    predicted = model.predict_indices(np.arange(model.features.key_count))
    order = np.argsort(-predicted, kind="stable")[:top_k]
    keys = all_keys(model.features.segments)
    return [keys[i] for i in order]


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def write_predictions(
    client: redis.Redis,
    model: LoadedModel,
    keys: Sequence[str],
    settings: Settings,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Compute and MSET predictions for ``keys`` under the model's version namespace."""
    ns, name, version = settings.redis_namespace, model.name, model.version
    step = settings.precompute_batch_size
    logged = time.monotonic()
    with tqdm(total=len(keys), unit="key", disable=not progress, desc=f"precompute {name}@{version}") as bar:
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            values = model.predict_indices([model.features.index(k) for k in chunk])
            client.mset({prediction_key(ns, name, version, k): encode(v) for k, v in zip(chunk, values.tolist())})
            bar.update(len(chunk))
            done = start + len(chunk)
            if done == len(keys) or time.monotonic() - logged >= PROGRESS_LOG_INTERVAL_S:
                log_event("precompute_progress", model_name=name, model_version=version, keys_done=done, keys_total=len(keys))
                logged = time.monotonic()
            if on_batch is not None:
                on_batch(start // step)


def _drop_old_versions(client: redis.Redis, settings: Settings, model: LoadedModel, previous: str | None) -> None:
    known = versions(settings.registry, model.name)
    keep = set(known[-KEEP_VERSIONS:]) | {model.version, previous}
    for version in known:
        if version in keep:
            continue
        prefix = f"{settings.redis_namespace}:{model.name}:{version}:"
        batch = [k for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(batch), 1000):
            client.unlink(*batch[i : i + 1000])


def precompute(
    settings: Settings,
    keys: Sequence[str] | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> PrecomputeReport:
    """Precompute ``keys`` (None: every key, then switch the static pointer) into Redis."""
    if not settings.redis_url:
        raise ValueError("precompute needs a Redis: set HYBRIDSERVE_REDIS_URL or pass --redis-url")
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    full = keys is None
    targets = list(all_keys(model.features.segments)) if keys is None else list(keys)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=max(5.0, settings.redis_timeout_s))
    try:
        before = _used_memory(client)
        pointer = static_pointer_key(settings.redis_namespace, model.name)
        previous = client.get(pointer)
        log_event("precompute_start", model_name=model.name, model_version=model.version, keys=len(targets), full_table=full)
        wall, cpu = time.perf_counter(), time.process_time()
        write_predictions(client, model, targets, settings, progress, on_batch)
        if full:
            client.set(pointer, model.version)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        added = _used_memory(client) - before
        if full:
            _drop_old_versions(client, settings, model, previous.decode() if previous else None)
    finally:
        client.close()
    report = PrecomputeReport(model.name, model.version, len(targets), wall, cpu, len(targets) / wall if wall else 0.0, added, full)
    log_event("precompute_done", **report.as_dict())
    return report
