"""serving/precompute_dask.py on a real Dask cluster (a local scheduler and two worker processes,
reached by address as a remote cluster would be) and a real Redis: the same floats as the
in-process job, and the pointer moves only after every partition is written."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from loadtests.harness.redis_server import EmbeddedRedis
from serving.precompute import precompute
from serving.precompute_dask import partitions, precompute_on_dask
from serving.store import KeyLayout, build_store
from tests.helpers import TEST_SEGMENTS

KEY_COUNT = TEST_SEGMENTS * 168
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        yield cluster.scheduler_address


def test_partitions_cover_the_key_space_once() -> None:
    parts = partitions(1001, 250)
    assert [(p.start, p.stop) for p in parts] == [(0, 250), (250, 500), (500, 750), (750, 1000), (1000, 1001)]


def test_same_table_as_in_process_then_the_pointer(make_settings, scheduler: str, redis_server: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    on_dask, in_process = make_settings(mode="static"), make_settings(mode="static")
    report = precompute_on_dask(on_dask, scheduler=scheduler, partition_keys=1000)  # 4 tasks over 2 workers
    reference = precompute(in_process, progress=False)
    assert report.keys == reference.keys == KEY_COUNT and report.switched_pointer and report.model_version == reference.model_version
    admin = redis.Redis.from_url(redis_server.url)
    assert admin.get(KeyLayout(on_dask.redis_namespace).pointer("traffic-light")) == reference.model_version.encode()
    ours = [k for k in admin.scan_iter(f"{on_dask.redis_namespace}:traffic-light:{report.model_version}:*", count=5000)]
    assert len(ours) == KEY_COUNT
    theirs = [in_process.redis_namespace.encode() + k[len(on_dask.redis_namespace):] for k in ours]
    assert admin.mget(ours) == admin.mget(theirs), "the same float32 for every key"


def test_a_failed_partition_leaves_the_pointer(make_settings, scheduler: str) -> None:  # type: ignore[no-untyped-def]
    with EmbeddedRedis(maxmemory="2mb", maxmemory_policy="noeviction") as full:
        settings = make_settings(mode="static", redis_url=full.url)

        async def old_table() -> None:
            store = build_store(settings)
            await store.set_pointer("traffic-light", "v-old")
            await store.close()

        asyncio.run(old_table())
        admin = redis.Redis.from_url(full.url)
        with pytest.raises(redis.exceptions.ResponseError):
            for i in range(10_000):  # bounded: 2 MB fills long before
                admin.set(f"filler:{i}", b"x" * 1024)
        with pytest.raises(Exception, match="OOM|maxmemory"):
            precompute_on_dask(settings, scheduler=scheduler, partition_keys=1000)
        assert admin.get(KeyLayout(settings.redis_namespace).pointer("traffic-light")) == b"v-old"
