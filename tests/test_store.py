"""serving/store.py against a real Redis in the faults users fear: a full Redis, corrupt values, a
dropped connection, a refused handshake. Each test owns its Redis (some are filled or killed)."""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from loadtests.harness.redis_server import EmbeddedRedis
from serving.errors import CorruptPrediction
from serving.precompute import precompute
from serving.store import CircuitBreaker, KeyLayout, decode, encode
from tests.helpers import running

HEAD = ["1:1", "1:2", "1:3"]
KILL_WINDOW_S = 3.0


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def _admin(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def _metric(text: str, name: str) -> float:
    """Sum of a counter's samples (Prometheus exposes counters with a ``_total`` suffix)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "_total{"))


@pytest.mark.parametrize("raw", [b"garbage!", struct.pack("<f", math.nan), struct.pack("<f", math.inf), b""])
def test_decode_refuses_what_is_not_a_finite_float32(raw: bytes) -> None:
    with pytest.raises(CorruptPrediction):
        decode(raw)
    assert decode(None) is None and decode(encode(812.5)) == 812.5


def test_breaker_steps_on_its_own_clock() -> None:
    now = [100.0]
    breaker = CircuitBreaker(failures=2, reset_s=1.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] += 1.0
    assert breaker.allow() and not breaker.allow()  # one probe, alone
    now[0] += 1.0
    assert breaker.allow(), "a probe that never reported back does not hold the breaker open"
    breaker.success()
    assert breaker.state == "closed"


def test_full_redis_is_not_an_outage(make_settings) -> None:  # type: ignore[no-untyped-def]
    """OOM on writes: values are still served, reads that would succeed still do, the breaker stays
    closed, failed writes are counted apart, and readiness says the cache is full."""
    with EmbeddedRedis(maxmemory="3mb", maxmemory_policy="noeviction") as full:
        settings = make_settings(mode="hybrid", redis_url=full.url, l1_size=0, breaker_failures=2)
        precompute(settings, HEAD, progress=False)
        admin = _admin(full)
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):  # the OOM error reply
            for i in range(100_000):  # bounded: 3 MB fills long before
                admin.set(f"filler:{i}", b"x" * 1024)
        with running(settings) as (_, client):
            computed = [client.get(f"/v1/predict/5:{h}") for h in range(12)]
            assert all(r.status_code == 200 and r.json()["source"] == "model" for r in computed)
            assert client.get(f"/v1/predict/{HEAD[0]}").json()["source"] == "redis"  # reads still work
            stats = client.get("/v1/cache/stats").json()
            assert stats["redis"]["breaker"] == "closed" and stats["redis"]["errors"] == 0
            assert stats["counts"]["redis_write_errors"] == 12 and stats["counts"]["redis_fallbacks"] == 0
            assert _metric(client.get("/metrics").text, "hybridserve_redis_write_errors") == 12
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["redis"] == "full" and ready.json()["degraded"] is True


@pytest.mark.parametrize("raw", [b"garbage!", struct.pack("<f", math.nan)])
def test_corrupt_value_is_a_miss_in_hybrid_and_a_json_503_in_static(make_settings, own_redis: EmbeddedRedis, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    dynamic = make_settings(mode="dynamic")
    with running(dynamic) as (_, client):
        truth = client.get("/v1/predict/2:7").json()
    hybrid = make_settings(mode="hybrid", redis_url=own_redis.url, l1_size=0)
    admin = _admin(own_redis)
    admin.set(KeyLayout(hybrid.redis_namespace).prediction(hybrid.model_name, truth["model_version"], "2:7"), raw)
    with running(hybrid) as (_, client):
        answer = client.get("/v1/predict/2:7")
        assert answer.status_code == 200 and answer.json()["source"] == "model"
        assert answer.json()["prediction"] == truth["prediction"]
        assert _metric(client.get("/metrics").text, "hybridserve_corrupt_values") == 1
        again = client.get("/v1/predict/2:7").json()  # the model's value replaced the corrupt one
        assert again["source"] == "redis" and again["prediction"] == truth["prediction"]
    static = make_settings(mode="static", redis_url=own_redis.url)
    precompute(static, progress=False)
    admin.set(KeyLayout(static.redis_namespace).prediction(static.model_name, truth["model_version"], "2:7"), raw)
    with running(static) as (_, client):
        answer = client.get("/v1/predict/2:7")
        assert answer.status_code == 503 and answer.headers["content-type"] == "application/json"
        assert answer.json()["error"] == "corrupt_value"
        assert client.get("/v1/predict/2:8").status_code == 200


@pytest.mark.slow
def test_a_dropped_connection_is_retried_not_an_outage(make_settings, own_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    """CLIENT KILL every 50 ms while 4 clients keep static busy: reads in flight on a killed
    connection are retried once on a fresh one, so no request fails and the breaker stays closed."""
    settings = make_settings(mode="static", redis_url=own_redis.url, breaker_failures=1)
    precompute(settings, progress=False)
    admin = _admin(own_redis)
    statuses: list[int] = []
    stop = threading.Event()

    def load(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=10.0) as client:
            for i in range(5000):  # bounded; stopped after KILL_WINDOW_S
                if stop.is_set():
                    return
                statuses.append(client.get(f"/v1/predict/{(i + offset) % 20}:{i % 168}").status_code)

    with running(settings) as (server, _):
        base = server.url
        threads = [threading.Thread(target=load, args=(n * 7,)) for n in range(4)]
        for thread in threads:
            thread.start()
        kills, deadline = 0, time.monotonic() + KILL_WINDOW_S
        while time.monotonic() < deadline:
            kills += int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(10)
        with httpx.Client(base_url=base) as client:
            breaker = client.get("/v1/cache/stats").json()["redis"]["breaker"]
    assert kills > 10 and len(statuses) > 100
    assert statuses.count(200) == len(statuses), f"{len(statuses) - statuses.count(200)} of {len(statuses)} failed"
    assert breaker == "closed"


def test_a_refused_handshake_leaks_no_connections(make_settings) -> None:  # type: ignore[no-untyped-def]
    with EmbeddedRedis(password="right-password") as locked:
        wrong = f"redis://:wrong@127.0.0.1:{locked.port}/0"
        settings = make_settings(mode="hybrid", redis_url=wrong, breaker_reset_s=0.05, l1_size=0)
        admin = _admin(locked)
        with running(settings) as (_, client):
            deadline = time.monotonic() + 3.0  # ~60 breaker probes, each one failed handshake
            while time.monotonic() < deadline:
                assert client.get("/v1/predict/3:3").status_code == 200
            connected = int(admin.info("clients")["connected_clients"])
        assert connected <= 3, f"{connected} clients connected: failed handshakes leak connections"
