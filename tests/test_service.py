"""serving/service.py over real HTTP and a real Redis: the static table lost and rebuilt, the run-time
policy through Settings' own rules, and bounded latency when Redis dies under concurrent load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtests.harness.redis_server import EmbeddedRedis
from loadtests.harness.server_process import ServerProcess
from serving.precompute import precompute
from tests.helpers import ADMIN, running

KEYS = [f"{s}:{h}" for s in range(4) for h in range(5)]


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def _until(check, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _all_unavailable(client: httpx.Client) -> bool:
    answers = [client.get(f"/v1/predict/{key}") for key in KEYS]
    assert all(a.status_code != 404 for a in answers), "a valid key must never be 404 in static"
    return all(a.status_code == 503 and a.json()["error"] == "table_unavailable" for a in answers)


def test_static_with_its_table_lost_is_not_ready_never_404(make_settings, own_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="static", redis_url=own_redis.url)
    precompute(settings, progress=False)
    with running(settings) as (_, client):
        assert all(client.get(f"/v1/predict/{key}").status_code == 200 for key in KEYS)
        # Redis restarts empty: the pointer is gone with the table.
        own_redis.kill()
        own_redis.start()
        assert _until(lambda: _all_unavailable(client))
        assert client.get("/readyz").status_code == 503
        # A re-precompute killed part-way must not be served as a partial table.
        def fail_part_way(batch: int) -> None:
            if batch == 0:
                raise KeyboardInterrupt("killed part-way")
        with pytest.raises(KeyboardInterrupt):
            precompute(settings.model_copy(update={"precompute_batch_size": 500}), progress=False, on_batch=fail_part_way)
        assert _all_unavailable(client) and client.get("/readyz").status_code == 503
        precompute(settings, progress=False)
        assert _until(lambda: all(client.get(f"/v1/predict/{key}").status_code == 200 for key in KEYS))
        assert client.get("/readyz").status_code == 200
        # An admin flush of Redis takes the table, and its pointer, with it.
        assert client.post("/v1/admin/flush", json={"l1": True, "redis": True}, headers=ADMIN).status_code == 200
        assert _all_unavailable(client) and client.get("/readyz").status_code == 503


def test_policy_changes_go_through_the_settings_rules(make_settings) -> None:  # type: ignore[no-untyped-def]
    with running(make_settings(mode="hybrid", l1_size=100)) as (_, client):
        for key in KEYS:
            client.get(f"/v1/predict/{key}")
        assert client.get("/v1/cache/stats").json()["l1"]["size"] == len(KEYS)
        changed = client.put("/v1/admin/policy", json={"l1_size": 5, "admission": "AFTER:2", "redis_ttl_s": 60}, headers=ADMIN)
        assert changed.status_code == 200
        assert changed.json()["policy"] == {"l1_size": 5, "l1_ttl_s": 0.0, "redis_ttl_s": 60, "admission": "after:2"}
        stats = client.get("/v1/cache/stats").json()
        assert stats["l1"] == {"size": 5, "capacity": 5, "evictions": len(KEYS) - 5}
        # The new size outlives a reload (one source of truth: the settings, not the old L1).
        assert client.post("/v1/admin/reload", json={"version": "latest"}, headers=ADMIN).status_code == 200
        assert client.get("/v1/cache/stats").json()["l1"]["capacity"] == 5
        for body, field in [({"l1_size": -1}, "l1_size"), ({"admission": "sometimes"}, "admission"),
                            ({"l1_ttl_s": 1e12}, "l1_ttl_s"), ({"head_size": 10}, "head_size")]:
            refused = client.put("/v1/admin/policy", json=body, headers=ADMIN)
            assert refused.status_code == 422 and refused.json()["error"] == "invalid_request", refused.text
            assert field in refused.json()["detail"]
        assert client.get("/v1/cache/stats").json()["policy"]["l1_size"] == 5  # a refused change changes nothing


CONCURRENT_CLIENTS = 50
TIMEOUT_S = 0.25
# A request may wait for one Redis timeout, then for the breaker's answer: about twice the timeout,
# on top of what 50 concurrent clients already wait for a turn on one server core. That queueing is
# measured in the same run before the fault (the worst latency then), so the bound holds on a loaded
# 2-core machine; before the fix, requests queued on reconnects one after another (2.4 s measured
# with this timeout).
REDIS_WAIT_BOUND_S = 2 * TIMEOUT_S
# The worst latency is compared between two windows of the same length, before and after the fault:
# a short window before (CI had 0.3 s) under-states the queueing of a loaded machine.
WINDOW_S = 2.0
MAX_HAMMER_S = 60.0
MAX_REQUESTS = 500_000


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET over a raw connection; its status. Raw HTTP, not httpx: a load generator
    in the pytest process must cost little, or its own queueing hides the server's."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _hammer(url: str, stop: asyncio.Event, done: list[tuple[float, float, int]]) -> None:
    """50 concurrent clients (one connection each) recording (start, latency, status) until ``stop``
    (or MAX_HAMMER_S or MAX_REQUESTS, whichever comes first)."""
    deadline = time.monotonic() + MAX_HAMMER_S
    address = httpx.URL(url)

    async def client_loop(offset: int) -> None:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            i = offset
            while not stop.is_set() and time.monotonic() < deadline and len(done) < MAX_REQUESTS:
                start = time.monotonic()
                status = await asyncio.wait_for(_get(reader, writer, f"/v1/predict/{KEYS[i % len(KEYS)]}"), 10.0)
                done.append((start, time.monotonic() - start, status))
                i += 1
        finally:
            writer.close()

    await asyncio.gather(*(client_loop(i) for i in range(CONCURRENT_CLIENTS)))


def test_no_request_waits_long_when_redis_dies_under_concurrent_load(make_settings, own_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="hybrid", redis_url=own_redis.url, l1_size=0, redis_timeout_s=TIMEOUT_S,
                             breaker_reset_s=0.5, admin_token=None)
    with ServerProcess(settings) as server:
        async def scenario() -> tuple[list[tuple[float, float, int]], float, float]:
            stop, results = asyncio.Event(), []
            load = asyncio.create_task(_hammer(server.url, stop, results))
            while len(results) < 200 and not load.done():  # every client is up and Redis is serving
                await asyncio.sleep(0.05)
            steady = time.monotonic()
            await asyncio.sleep(WINDOW_S)  # the window before the fault: as long as the one after
            killed = time.monotonic()
            own_redis.kill()
            await asyncio.sleep(WINDOW_S)
            stop.set()
            await load
            return results, steady, killed

        results, steady, killed = asyncio.run(scenario())
    before = [latency for start, latency, _ in results if start >= steady and start + latency < killed]
    after = [(latency, status) for start, latency, status in results if start >= killed - TIMEOUT_S]
    assert before and after, "load ran before and after the kill"
    assert all(status == 200 for _, status in after), "hybrid fails open: no failed request"
    worst, queueing = max(latency for latency, _ in after), max(before)
    print(f"\nRedis SIGKILL under {CONCURRENT_CLIENTS} clients: {len(after)} requests after, worst {worst * 1000:.0f} ms "
          f"(worst before the fault {queueing * 1000:.0f} ms)")
    # 2x the queueing: on a 2-core machine shared with other work, the worst of a few hundred
    # requests moves by as much again between two windows of two seconds.
    assert worst < 2 * queueing + REDIS_WAIT_BOUND_S, f"a request waited {worst:.2f}s; before the fault at most {queueing:.2f}s"


def test_static_key_missing_from_a_complete_table_is_503_not_404(make_settings, own_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    import redis

    from serving.store import KeyLayout

    settings = make_settings(mode="static", redis_url=own_redis.url)
    version = precompute(settings, progress=False).model_version
    redis.Redis.from_url(own_redis.url).delete(KeyLayout(settings.redis_namespace).prediction(settings.model_name, version, "2:2"))
    with running(settings) as (_, client):
        lost = client.get("/v1/predict/2:2")
        assert lost.status_code == 503 and lost.json()["error"] == "table_unavailable" and "incomplete" in lost.json()["detail"]
        assert client.get("/v1/predict/2:3").status_code == 200
