"""The static table precomputed on Dask: the same job, split into key ranges that Dask workers
compute and write in parallel, locally or on a cluster, with the same atomic version switch.

Each partition is one task: a worker loads the model version once per process (cached), computes
its key range in ``precompute_batch_size`` batches and writes them through the prediction store,
exactly as :func:`serving.precompute.write_predictions` does in process. Only when every partition
has finished does the driver move the static pointer (:func:`serving.precompute.publish_table`);
a failed partition fails the job and the served table stays on the old version.

Chosen over Ray Data and Apache Beam by dependency weight and measured throughput
(``benchmarks/precompute_scale.md``): ``dask[distributed]`` installs in seconds and runs the same
code on a laptop (a LocalCluster of processes) and on a cluster (``--scheduler``). It is an
optional extra (``pip install 'hybridserve[scale]'``); nothing in the server imports it.

Locally::

    hybridserve precompute --engine dask --workers 4

On a cluster (every worker machine with the registry at the same path and the store reachable)::

    dask scheduler                                   # on one machine: tcp://HOST:8786
    dask worker tcp://HOST:8786 --nthreads 1         # on each worker machine, one per core
    hybridserve precompute --engine dask --scheduler tcp://HOST:8786 \\
        --redis-url redis+cluster://NODE1:6379,NODE2:6379 --registry /shared/registry
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.data import HOURS_PER_WEEK, key_of
from serving.model import LoadedModel
from serving.precompute import BATCH_TIMEOUT_S, PrecomputeReport, publish_table, write_predictions
from serving.settings import Settings
from serving.store import PredictionStore, build_store

# Keys per task: big enough that a task's fixed cost (scheduling, a Redis connection) is small
# against its work, small enough that several tasks per worker balance the load.
DEFAULT_PARTITION_KEYS = 250_000


@dataclass(frozen=True)
class Partition:
    """One task's key range ``[start, stop)`` of a model version's key space."""

    start: int
    stop: int


def partitions(key_count: int, size: int = DEFAULT_PARTITION_KEYS) -> list[Partition]:
    """The key space cut into ranges of at most ``size`` keys."""
    return [Partition(start, min(start + size, key_count)) for start in range(0, key_count, size)]


def _keys(part: Partition) -> list[str]:
    """The keys of a range, in key-index order (the demo's ``<segment>:<hour_of_week>`` grid)."""
    return [key_of(i // HOURS_PER_WEEK, i % HOURS_PER_WEEK) for i in range(part.start, part.stop)]


@functools.lru_cache(maxsize=2)
def _model(registry: str, name: str, version: str) -> LoadedModel:
    """A worker process loads each version once, whatever number of its partitions it runs."""
    return LoadedModel.from_registry(Path(registry), name, version)


def write_partition(fields: dict[str, Any], version: str, part: Partition) -> tuple[int, float]:
    """Run on a Dask worker: compute and store one range; returns (keys written, CPU seconds)."""
    settings = Settings(**fields)
    cpu = time.process_time()
    model = _model(str(settings.registry), settings.model_name, version)

    async def write() -> None:
        async with _store(settings) as store:
            await write_predictions(store, model, _keys(part), settings, progress=False)

    asyncio.run(write())
    return part.stop - part.start, time.process_time() - cpu


def precompute_on_dask(settings: Settings, scheduler: str | None = None, workers: int = 2,
                       partition_keys: int = DEFAULT_PARTITION_KEYS) -> PrecomputeReport:
    """Every key of the served version, written by Dask workers, then the pointer switched.

    ``scheduler``: address of a running Dask scheduler (``tcp://HOST:8786``); ``None`` starts a
    local cluster of ``workers`` single-threaded processes for the job.
    """
    from dask.distributed import Client, LocalCluster  # noqa: PLC0415  (optional extra, batch jobs only)

    if not settings.redis_url:
        raise ValueError("precompute needs a Redis: set HYBRIDSERVE_REDIS_URL or pass --redis-url")
    model = LoadedModel.from_registry(settings.registry, settings.model_name, settings.model_version)
    fields = settings.model_dump(mode="json", exclude_none=True)
    parts = partitions(model.features.key_count, partition_keys)
    before = asyncio.run(_used_memory(settings))
    cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=None, host="127.0.0.1")
    with Client(scheduler or cluster) as client:
        try:
            wall = time.perf_counter()
            done = client.gather(client.map(write_partition, [fields] * len(parts), [model.version] * len(parts), parts,
                                            pure=False))
            wall = time.perf_counter() - wall
        finally:
            if cluster is not None:
                cluster.close()
    keys, worker_cpu = sum(k for k, _ in done), sum(c for _, c in done)
    added = asyncio.run(_switch(settings, model, before))
    return PrecomputeReport(model.name, model.version, keys, wall, worker_cpu, keys / wall if wall else 0.0, added, True)


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[PredictionStore]:
    """The store with a batch job's timeout, closed afterwards."""
    store = build_store(settings, timeout_s=max(BATCH_TIMEOUT_S, settings.redis_timeout_s))
    try:
        yield store
    finally:
        await store.close()


async def _used_memory(settings: Settings) -> int:
    async with _store(settings) as store:
        return await store.used_memory()


async def _switch(settings: Settings, model: LoadedModel, before: int) -> int:
    """Move the pointer to the finished table; returns the store bytes the table added."""
    async with _store(settings) as store:
        added = await store.used_memory() - before
        await publish_table(store, settings, model, await store.get_pointer(model.name))
        return added
