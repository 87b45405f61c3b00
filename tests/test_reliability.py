"""Redis outages under load: hybrid fails open with zero failed requests, static answers 503.

Each test owns a dedicated :class:`EmbeddedRedis` (never the shared one: it is killed here) and a
real server over real HTTP. Load comes from a few threads, bounded in request count and time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from serving.precompute import precompute
from loadtests.harness.redis_server import EmbeddedRedis
from serving.store import CircuitBreaker
from tests.helpers import running
from tests.load import LoadThreads

LOAD_THREADS = 4
OUTAGE_S = 2.0
RECOVERY_BOUND_S = 15.0  # generous: breaker reset (0.5 s here) + reconnect, on a loaded 2-core box
KEYS = [f"{s}:{h}" for s in range(3) for h in range(10)]


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis this test may kill and restart on the same port."""
    with EmbeddedRedis() as server:
        yield server


@pytest.mark.slow
def test_hybrid_fails_open_through_redis_kill_and_recovers(make_settings, own_redis: EmbeddedRedis) -> None:  # type: ignore[no-untyped-def]
    # L1 off: every request reaches Redis, so the outage is felt by every request, not hidden by L1.
    settings = make_settings(mode="hybrid", redis_url=own_redis.url, l1_size=0, redis_timeout_s=0.2, breaker_reset_s=0.5)
    with running(settings) as (_, client), LoadThreads(str(client.base_url).rstrip("/"), KEYS, threads=LOAD_THREADS) as load:
        _wait_for(lambda: load.first_source_after("redis", 0.0) is not None, "Redis serves before the fault")
        own_redis.kill()
        killed = time.monotonic()
        time.sleep(OUTAGE_S)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] is True and ready.json()["redis"] == "unreachable"
        metrics = client.get("/metrics").text
        fallbacks = _metric(metrics, "hybridserve_redis_fallbacks")
        assert fallbacks > 0
        # Responses recorded well after the kill came from the model (a request stalled across the
        # kill on a slow machine may still carry a Redis value it read just before).
        during = Counter(a.source for a in load.answers if a.status == 200 and a.t > killed + 1.0)
        assert "redis" not in during and "l1" not in during, during
        assert load.first_source_after("model", killed) is not None, "load went on through the outage"
        own_redis.start()  # same port, empty (no persistence)
        restarted = time.monotonic()
        while time.monotonic() - restarted < RECOVERY_BOUND_S and load.first_source_after("redis", restarted) is None:
            time.sleep(0.05)
        resumed = load.first_source_after("redis", restarted)
    assert load.failures() == [], load.failures()[:5]
    assert resumed is not None, f"no Redis hit within {RECOVERY_BOUND_S}s of the restart"
    recovery_s = resumed - restarted
    served = len(load.answers)
    print(f"\nredis kill: {served} requests, 0 failed, {fallbacks:.0f} fallbacks; redis hits resumed {recovery_s:.2f}s after restart")
    assert served > 0


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.05)


def _metric(text: str, name: str) -> float:
    """Sum of one Prometheus metric's samples (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_static_answers_503_json_within_timeout_when_redis_dies(make_settings, own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(mode="static", redis_url=own_redis.url, redis_timeout_s=0.2)
    precompute(settings, progress=False)
    with caplog.at_level(logging.WARNING, logger="serving.app"), running(settings) as (_, client):
        assert client.get("/v1/predict/1:1").status_code == 200
        own_redis.kill()
        for key in ("1:1", "2:2", "3:3", "4:4", "5:5"):
            start = time.monotonic()
            response = client.get(f"/v1/predict/{key}")
            assert time.monotonic() - start < 5, "bounded by the Redis timeout, never a hang"
            assert response.status_code == 503, response.text
            # Where Redis lives (and its password) is for the log, not for clients.
            assert response.json() == {"error": "redis_unavailable", "detail": "cache unavailable"}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["redis"] == "unreachable"
        assert client.get("/v1/cache/stats").json()["redis"]["breaker"] in {"open", "half_open"}
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "serving.app")
    assert "cache unavailable" in logged and str(own_redis.port) in logged and own_redis.password not in logged


# Steps that are exact binary fractions, so a sum of them lands exactly on reset_s.
RESET_S = 1.0
TICK_S = 2.0**-5
JUST_BEFORE_RESET_S = RESET_S - TICK_S


class SteppedClock:
    """A monotonic clock that moves only when the test steps it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


def test_breaker_lost_probe_does_not_stick_open() -> None:
    clock = SteppedClock()
    breaker = CircuitBreaker(failures=1, reset_s=RESET_S, clock=clock)
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.step(JUST_BEFORE_RESET_S)
    assert not breaker.allow(), "still open just before reset_s"
    clock.step(TICK_S)
    assert breaker.allow()  # the probe goes ...
    assert breaker.state == "half_open"
    assert not breaker.allow()  # ... alone
    clock.step(JUST_BEFORE_RESET_S)
    assert not breaker.allow(), "a probe in flight for less than reset_s still counts"
    clock.step(TICK_S)  # ... and never reports back (cancelled request)
    assert breaker.allow(), "a lost probe must not keep the breaker open forever"
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_breaker_failed_probe_reopens_for_a_full_reset() -> None:
    clock = SteppedClock()
    breaker = CircuitBreaker(failures=2, reset_s=RESET_S, clock=clock)
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow(), "one failure of two does not open it"
    breaker.failure()
    assert not breaker.allow()
    clock.step(RESET_S)
    assert breaker.allow()
    breaker.failure()  # the probe failed: open again, counted from now
    assert breaker.state == "open" and not breaker.allow()
    clock.step(JUST_BEFORE_RESET_S)
    assert not breaker.allow()
    clock.step(TICK_S)
    assert breaker.allow()
